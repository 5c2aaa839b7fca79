// Umbrella header of rolora's transformer (docs/nn.md): the nn_backend primitives on Eigen, the
// weights, the pre-LN encoder with LoRA layers and its classification client task. Kept out of
// rolora/rolora.hpp so that a user of the adapter algebra compiles no transformer code.
#pragma once

#include <rolora/backend/eigen/nn_primitives.hpp>
#include <rolora/nn/classification_task.hpp>
#include <rolora/nn/mlp.hpp>
#include <rolora/nn/nn_backend.hpp>
#include <rolora/nn/transformer.hpp>
#include <rolora/nn/weights.hpp>
#include <rolora/rolora.hpp>
