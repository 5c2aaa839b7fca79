# Driver of the fuzz targets, shared by ctest (tests/fuzz/tests.cmake) and scripts/fuzz.sh:
#   cmake -D ACTION=build -D SOURCE_DIR=<repo> -D FUZZ_DIR=<dir> -D CXX=<clang++> [-D JOBS=n] -P fuzz.cmake
#       configures tests/fuzz with clang++ in FUZZ_DIR, builds it and writes the seed corpora
#       (FUZZ_DIR/seeds/<target>) with rolora's own writers;
#   cmake -D ACTION=run -D SOURCE_DIR=<repo> -D FUZZ_DIR=<dir> -D TARGET=<name> -D SECONDS=<s> -P fuzz.cmake
#       runs fuzz_<name> for SECONDS seconds from the seeds and the corpus it grew before
#       (FUZZ_DIR/corpus/<target>), with the formats' dictionary; fails on any crash, leak,
#       undefined behaviour, timeout (10 s per input) or out-of-memory (2 GB), leaving the input
#       as FUZZ_DIR/artifacts/<target>-crash-... (replay: FUZZ_DIR/fuzz_<name> <that file>).
cmake_minimum_required(VERSION 3.21)
foreach(_var IN ITEMS ACTION SOURCE_DIR FUZZ_DIR)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "fuzz.cmake: -D ${_var}=... is required")
  endif()
endforeach()

if(ACTION STREQUAL "build")
  if(NOT DEFINED JOBS)
    cmake_host_system_information(RESULT JOBS QUERY NUMBER_OF_LOGICAL_CORES)
  endif()
  set(_launcher)
  find_program(_ccache ccache)
  if(_ccache)
    set(_launcher "-DCMAKE_CXX_COMPILER_LAUNCHER=${_ccache}")
    set(ENV{CCACHE_BASEDIR} "${SOURCE_DIR}")  # relative paths: a clone elsewhere hits the cache
  endif()
  execute_process(
    COMMAND "${CMAKE_COMMAND}" -S "${SOURCE_DIR}/tests/fuzz" -B "${FUZZ_DIR}" "-DCMAKE_CXX_COMPILER=${CXX}"
            -DCMAKE_BUILD_TYPE= ${_launcher}
    RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "fuzz.cmake: configuring the fuzz targets with ${CXX} failed")
  endif()
  execute_process(COMMAND "${CMAKE_COMMAND}" --build "${FUZZ_DIR}" -j ${JOBS} RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "fuzz.cmake: building the fuzz targets failed")
  endif()
  execute_process(COMMAND "${FUZZ_DIR}/rolora_fuzz_seeds" "${FUZZ_DIR}/seeds" RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "fuzz.cmake: writing the seed corpora failed")
  endif()
elseif(ACTION STREQUAL "run")
  set(_exe "${FUZZ_DIR}/fuzz_${TARGET}")
  if(NOT EXISTS "${_exe}")
    message(FATAL_ERROR "fuzz.cmake: ${_exe} does not exist (run ACTION=build first)")
  endif()
  set(_corpus "${FUZZ_DIR}/corpus/${TARGET}")
  set(_seeds "${FUZZ_DIR}/seeds/${TARGET}")
  file(MAKE_DIRECTORY "${_corpus}" "${_seeds}" "${FUZZ_DIR}/artifacts")
  execute_process(
    COMMAND "${_exe}" -max_total_time=${SECONDS} -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
            "-dict=${SOURCE_DIR}/tests/fuzz/rolora.dict" "-artifact_prefix=${FUZZ_DIR}/artifacts/${TARGET}-"
            "${_corpus}" "${_seeds}"
    RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
  # libFuzzer reports on stderr: keep the summary (the last status line and the final stats),
  # or everything when it failed.
  if(_rc EQUAL 0)
    string(REGEX MATCH "#[0-9]+[ \t]+DONE[^\n]*" _done "${_err}")
    string(REGEX MATCH "stat::number_of_executed_units[^\n]*" _units "${_err}")
    message("fuzz_${TARGET}: ${SECONDS} s, no crash\n${_done}\n${_units}")
  else()
    message("${_out}${_err}")
    message(FATAL_ERROR "fuzz_${TARGET} found a crash (exit ${_rc}); the input is under ${FUZZ_DIR}/artifacts/")
  endif()
else()
  message(FATAL_ERROR "fuzz.cmake: ACTION must be build or run, got '${ACTION}'")
endif()
