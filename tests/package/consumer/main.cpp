// Downstream consumer used by rolora's packaging tests.
#include <Eigen/Dense>
#include <cmath>
#include <iostream>
#include <rolora/rolora.hpp>
#include <string_view>

int main() {
  std::cout << "rolora " << rolora::version << '\n';
#ifdef ROLORA_EXPECTED_VERSION
  if (rolora::version != std::string_view{ROLORA_EXPECTED_VERSION}) {
    std::cerr << "version mismatch: expected " << ROLORA_EXPECTED_VERSION << '\n';
    return 1;
  }
#endif
  // A product of two small matrices: [[1,2],[3,4]] * [[0,1],[1,0]] = [[2,1],[4,3]].
  Eigen::MatrixXd a(2, 2);
  a << 1, 2, 3, 4;
  Eigen::MatrixXd b(2, 2);
  b << 0, 1, 1, 0;
  Eigen::MatrixXd expected(2, 2);
  expected << 2, 1, 4, 3;
  const Eigen::MatrixXd c = a * b;
  if ((c - expected).norm() > 1e-12) {
    std::cerr << "unexpected product:\n" << c << '\n';
    return 1;
  }
  std::cout << "Eigen product OK\n";
  return 0;
}
