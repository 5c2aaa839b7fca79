// ROLORA_SKIP(reason): ends the current test case as skipped, saying why. It prints
// "rolora-skip: <reason>", which ctest's SKIP_REGULAR_EXPRESSION (tests/CMakeLists.txt) reports as
// "skipped"; run by hand, the reason shows. For tests that need what a machine may lack: the
// corpus, a GPU, mpirun.
#pragma once
#include <iostream>

#define ROLORA_SKIP(reason)                              \
  do {                                                   \
    std::cout << "rolora-skip: " << reason << std::endl; \
    return;                                              \
  } while (0)
