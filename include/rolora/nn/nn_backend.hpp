// The nn_backend contract (the transformer's primitives a backend provides through
// nn_primitives<B>) is declared with every other contract in core/concepts.hpp; the Eigen
// implementation is backend/eigen/nn_primitives.hpp. This header brings both.
#pragma once
#include <rolora/backend/eigen/nn_primitives.hpp>
#include <rolora/core/concepts.hpp>
