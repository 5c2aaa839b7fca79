// Umbrella header for the CPU build of rolora's core: the contracts, the adapter algebra, update
// policies, aggregators, the in-process federated simulation, its callbacks and the
// linear-regression theory, on the Eigen backend. Never includes GPU code, the transformer
// (rolora/nn.hpp), the e-mail data (rolora/data/data.hpp) or file I/O (rolora/io/).
#pragma once

#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/config.hpp>
#include <rolora/adapter/lora.hpp>
#include <rolora/adapter/optimizer.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/aggregate/factorwise.hpp>
#include <rolora/aggregate/fedavg.hpp>
#include <rolora/aggregate/low_rank.hpp>
#include <rolora/aggregate/procrustes.hpp>
#include <rolora/aggregate/ranks.hpp>
#include <rolora/aggregate/residual.hpp>
#include <rolora/aggregate/stack.hpp>
#include <rolora/aggregate/svd_resplit.hpp>
#include <rolora/backend/eigen/backend.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/core/rng.hpp>
#include <rolora/core/shape.hpp>
#include <rolora/federated/callbacks.hpp>
#include <rolora/federated/client.hpp>
#include <rolora/federated/federation.hpp>
#include <rolora/federated/methods.hpp>
#include <rolora/federated/partition.hpp>
#include <rolora/federated/round_config.hpp>
#include <rolora/federated/sampling.hpp>
#include <rolora/federated/server.hpp>
#include <rolora/federated/task.hpp>
#include <rolora/policy/policies.hpp>
#include <rolora/theory/linear_regression.hpp>
#include <rolora/theory/methods.hpp>
#include <rolora/version.hpp>
