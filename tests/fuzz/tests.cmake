# ctest entries for the fuzz targets (included by tests/CMakeLists.txt).
#   fuzz.build        builds tests/fuzz with clang++ in <build>/fuzz and writes the seed corpora
#   fuzz.<target>     runs fuzz_<target> for ROLORA_FUZZ_SECONDS (short: CI stays fast;
#                     scripts/fuzz.sh runs them as long as asked)
# Without a clang++ whose libFuzzer links, each fuzz.<target> reports "skipped" with the reason.
set(ROLORA_FUZZ_SECONDS 10 CACHE STRING "Seconds ctest runs each fuzz target")
find_program(ROLORA_FUZZ_CXX NAMES clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14
  DOC "clang++ with libFuzzer, for the fuzz targets")

# Does clang++ link a libFuzzer target with ASan + UBSan? (Debian: clang + libclang-rt-<v>-dev.)
if(ROLORA_FUZZ_CXX AND NOT DEFINED CACHE{ROLORA_FUZZ_WORKS})
  set(_probe_dir "${CMAKE_CURRENT_BINARY_DIR}/fuzz_probe")
  file(WRITE "${_probe_dir}/probe.cpp"
    "#include <cstddef>\n#include <cstdint>\n"
    "extern \"C\" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }\n")
  execute_process(
    COMMAND "${ROLORA_FUZZ_CXX}" -fsanitize=fuzzer,address,undefined probe.cpp -o probe
    WORKING_DIRECTORY "${_probe_dir}" RESULT_VARIABLE _rc OUTPUT_QUIET ERROR_QUIET)
  if(_rc EQUAL 0)
    set(ROLORA_FUZZ_WORKS ON CACHE INTERNAL "clang++ links libFuzzer targets")
  else()
    set(ROLORA_FUZZ_WORKS OFF CACHE INTERNAL "clang++ links libFuzzer targets")
  endif()
endif()

file(GLOB _rolora_fuzz_sources CONFIGURE_DEPENDS "${CMAKE_CURRENT_LIST_DIR}/fuzz_*.cpp")
set(_fuzz_driver
  "${CMAKE_COMMAND}" -D "SOURCE_DIR=${PROJECT_SOURCE_DIR}" -D "FUZZ_DIR=${CMAKE_CURRENT_BINARY_DIR}/fuzz")
if(ROLORA_FUZZ_WORKS)
  message(STATUS "rolora: fuzz targets built with ${ROLORA_FUZZ_CXX}, run ${ROLORA_FUZZ_SECONDS} s each by ctest")
  add_test(NAME fuzz.build
    COMMAND ${_fuzz_driver} -D ACTION=build -D "CXX=${ROLORA_FUZZ_CXX}" -P "${CMAKE_CURRENT_LIST_DIR}/fuzz.cmake")
  set_tests_properties(fuzz.build PROPERTIES FIXTURES_SETUP rolora_fuzz LABELS fuzz TIMEOUT 1800)
endif()
foreach(_src IN LISTS _rolora_fuzz_sources)
  get_filename_component(_name "${_src}" NAME_WE)
  string(REGEX REPLACE "^fuzz_" "" _name "${_name}")
  if(ROLORA_FUZZ_WORKS)
    add_test(NAME fuzz.${_name}
      COMMAND ${_fuzz_driver} -D ACTION=run -D TARGET=${_name} -D SECONDS=${ROLORA_FUZZ_SECONDS}
              -P "${CMAKE_CURRENT_LIST_DIR}/fuzz.cmake")
    set_tests_properties(fuzz.${_name} PROPERTIES FIXTURES_REQUIRED rolora_fuzz LABELS fuzz)
  else()
    add_test(NAME fuzz.${_name}
      COMMAND "${CMAKE_COMMAND}" -E echo
              "rolora-skip: no clang++ that links -fsanitize=fuzzer (Debian: apt install clang libclang-rt-14-dev)")
    set_tests_properties(fuzz.${_name} PROPERTIES LABELS fuzz SKIP_REGULAR_EXPRESSION "rolora-skip:")
  endif()
endforeach()
