// The client-side objective: what a client optimises on its own data (the client_task concept of
// core/concepts.hpp), with what it needs: adapter sets and gradient sets.
#pragma once
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/optimizer.hpp>
#include <rolora/core/concepts.hpp>
