# Packaging test driver, run as:  cmake -DMODE=find_package|subdirectory ... -P run.cmake
#
#   MODE=find_package : `cmake --install` the rolora build tree ROLORA_BINARY_DIR into a fresh
#                       prefix under WORK_DIR, then configure/build/run tests/package/consumer
#                       with find_package(rolora 0.1 CONFIG REQUIRED) against that prefix only.
#   MODE=subdirectory : configure/build/run the consumer with add_subdirectory(ROLORA_SOURCE_DIR)
#                       and check that rolora's own tests/examples were not configured.
#
# Required: MODE ROLORA_SOURCE_DIR WORK_DIR; ROLORA_BINARY_DIR for find_package.
# Optional: CONFIG GENERATOR CXX_COMPILER CXX_COMPILER_LAUNCHER EIGEN3_DIR EXPECTED_VERSION.
cmake_minimum_required(VERSION 3.21)

foreach(_var IN ITEMS MODE ROLORA_SOURCE_DIR WORK_DIR)
  if(NOT DEFINED ${_var} OR "${${_var}}" STREQUAL "")
    message(FATAL_ERROR "run.cmake: -D${_var}=... is required")
  endif()
endforeach()
if(NOT CONFIG)
  set(CONFIG Release)
endif()

function(run_step what)
  message(STATUS "[package.${MODE}] ${what}: ${ARGN}")
  execute_process(COMMAND ${ARGN}
    RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
  message("${_out}")
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "[package.${MODE}] ${what} failed (exit ${_rc})")
  endif()
  set(STEP_OUTPUT "${_out}" PARENT_SCOPE)
endfunction()

set(_consumer_src "${ROLORA_SOURCE_DIR}/tests/package/consumer")
set(_build "${WORK_DIR}/${MODE}-build")
file(REMOVE_RECURSE "${_build}")

set(_configure_args -S "${_consumer_src}" -B "${_build}"
  "-DCMAKE_BUILD_TYPE=${CONFIG}"
  "-DROLORA_CONSUMER_MODE=${MODE}")
if(GENERATOR)
  list(APPEND _configure_args -G "${GENERATOR}")
endif()
if(CXX_COMPILER)
  list(APPEND _configure_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
list(LENGTH CXX_COMPILER_LAUNCHER _launcher_len)
if(_launcher_len EQUAL 1)  # e.g. ccache; multi-word launchers are simply not forwarded
  list(APPEND _configure_args "-DCMAKE_CXX_COMPILER_LAUNCHER=${CXX_COMPILER_LAUNCHER}")
endif()
if(EIGEN3_DIR)
  list(APPEND _configure_args "-DEigen3_DIR=${EIGEN3_DIR}")
endif()
if(EXPECTED_VERSION)
  list(APPEND _configure_args "-DROLORA_EXPECTED_VERSION=${EXPECTED_VERSION}")
endif()

if(MODE STREQUAL "find_package")
  if(NOT ROLORA_BINARY_DIR)
    message(FATAL_ERROR "run.cmake: -DROLORA_BINARY_DIR=... is required for MODE=find_package")
  endif()
  set(_prefix "${WORK_DIR}/prefix")
  file(REMOVE_RECURSE "${_prefix}")  # fresh prefix: stale headers must not hide missing ones
  run_step("install" "${CMAKE_COMMAND}" --install "${ROLORA_BINARY_DIR}"
    --prefix "${_prefix}" --config "${CONFIG}")
  foreach(_f IN ITEMS include/rolora/rolora.hpp include/rolora/version.hpp)
    if(NOT EXISTS "${_prefix}/${_f}")
      message(FATAL_ERROR "[package.find_package] ${_f} was not installed")
    endif()
  endforeach()
  list(APPEND _configure_args
    "-DCMAKE_PREFIX_PATH=${_prefix}"
    "-DROLORA_EXPECT_PREFIX=${_prefix}"
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
elseif(MODE STREQUAL "subdirectory")
  list(APPEND _configure_args "-DROLORA_SOURCE_DIR=${ROLORA_SOURCE_DIR}")
else()
  message(FATAL_ERROR "run.cmake: unknown MODE '${MODE}' (find_package|subdirectory)")
endif()

run_step("configure consumer" "${CMAKE_COMMAND}" ${_configure_args})
run_step("build consumer" "${CMAKE_COMMAND}" --build "${_build}" --config "${CONFIG}")

if(MODE STREQUAL "subdirectory")
  # rolora is not the top-level project here: its tests/examples must default to OFF.
  foreach(_dir IN ITEMS tests examples bench)
    if(EXISTS "${_build}/rolora-build/${_dir}")
      message(FATAL_ERROR
        "[package.subdirectory] rolora's ${_dir}/ was configured inside a consumer project")
    endif()
  endforeach()
endif()

set(_exe "${_build}/bin/rolora_consumer")
if(NOT EXISTS "${_exe}" AND EXISTS "${_exe}.exe")
  set(_exe "${_exe}.exe")
endif()
run_step("run consumer" "${_exe}")
if(EXPECTED_VERSION AND NOT STEP_OUTPUT MATCHES "rolora ${EXPECTED_VERSION}")
  message(FATAL_ERROR "[package.${MODE}] consumer did not report rolora ${EXPECTED_VERSION}")
endif()
message(STATUS "[package.${MODE}] OK")
