// pretrain compiled by nvcc: the same program (pretrain.cpp), where --backend cuda runs the
// transformer on the GPU through thrust_cuda_backend (apps/common/backend_options.hpp).
// Built with -DROLORA_BUILD_CUDA_APPS=ON (docs/backends.md).
#include "pretrain.cpp"
