// expect: static assertion failed: rolora::federation: the Backend type does not model rolora::backend
// A plain matrix type is not a backend: the federation must say what to use instead.
#include <rolora/rolora.hpp>

template class rolora::federation<Eigen::MatrixXd, rolora::alternating, rolora::fedavg>;
