// federated_finetune compiled by nvcc: the same program (federated_finetune.cpp), where --backend
// cuda runs the transformer on the GPU through thrust_cuda_backend
// (apps/common/backend_options.hpp). Built with -DROLORA_BUILD_CUDA_APPS=ON
// (docs/backends.md).
#include "federated_finetune.cpp"
