# ctest `layering`: rolora's headers form layers, and no header includes one from a layer above
# its own or takes part in an include cycle (docs/architecture.md draws the layers).
#   cmake -P tests/layering.cmake
# Layers, lowest first; a header may include headers of its own layer or any below:
#   0 core/, version.hpp      contracts, errors, RNG, thread pool
#   1 backend/<name>/         one folder per backend (storage, GEMM, nn primitives)
#   2 adapter/, policy/       LoRA factors and sets, optimizers; which factor trains when
#   3 aggregate/              merging client updates
#   4 io/                     safetensors, PEFT, .npy
#   4 privacy/                the RDP accountant, client-level DP, secure noise, DP-SGD
#   4 tokenizers/             Hugging Face tokenizer.json (core errors, io's file and JSON readers)
#   5 federated/              server, client, messages, the round loop, checkpoints
#   6 mpi/, theory/, nn/, data/   transports and applications of the federation
#   6 secagg/                 secure aggregation's cryptographic core (libsodium)
#   6 models/                 Hugging Face families: config, checkpoint loading, forward/backward
#   7 rolora.hpp, nn.hpp, transports.hpp   umbrella headers, the transports by name
cmake_minimum_required(VERSION 3.21)
get_filename_component(_root "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
set(_inc "${_root}/include")

function(layer_of header out)  # header: "rolora/area/..." -> its layer number
  set(_layers core:0 version.hpp:0 backend:1 adapter:2 policy:2 aggregate:3 io:4 privacy:4 tokenizers:4
              federated:5 mpi:6 grpc:6 secagg:6 theory:6 nn:6 data:6 models:6 rolora.hpp:7 nn.hpp:7 transports.hpp:7)
  string(REGEX REPLACE "^rolora/([^/]+).*$" "\\1" _area "${header}")
  if(header MATCHES "^rolora/[^/]+$")  # a top-level file: its own name is the key
    string(REGEX REPLACE "^rolora/" "" _area "${header}")
  endif()
  foreach(_l IN LISTS _layers)
    string(REPLACE ":" ";" _pair "${_l}")
    list(GET _pair 0 _name)
    list(GET _pair 1 _n)
    if(_name STREQUAL _area)
      set(${out} ${_n} PARENT_SCOPE)
      return()
    endif()
  endforeach()
  message(FATAL_ERROR "layering: ${header} is in no layer; add its area to tests/layering.cmake "
    "and docs/architecture.md")
endfunction()

file(GLOB_RECURSE _files RELATIVE "${_inc}" "${_inc}/rolora/*.hpp")
set(_problems "")
set(_nodes "")
foreach(_h IN LISTS _files)
  layer_of("${_h}" _lh)
  file(STRINGS "${_inc}/${_h}" _lines REGEX "^#include <rolora/")
  set(_deps "")
  foreach(_line IN LISTS _lines)
    string(REGEX REPLACE "^#include <([^>]+)>.*$" "\\1" _d "${_line}")
    if(NOT EXISTS "${_inc}/${_d}")
      string(APPEND _problems "\n  ${_h} includes ${_d}, which does not exist")
      continue()
    endif()
    layer_of("${_d}" _ld)
    if(_ld GREATER _lh)
      string(APPEND _problems "\n  ${_h} (layer ${_lh}) includes ${_d} (layer ${_ld}, above it)")
    endif()
    list(APPEND _deps "${_d}")
  endforeach()
  string(MAKE_C_IDENTIFIER "${_h}" _id)
  set(_deps_${_id} "${_deps}")
  list(APPEND _nodes "${_h}")
endforeach()

# Cycles: peel off headers whose includes are all peeled; whatever remains lies on a cycle.
set(_left "${_nodes}")
set(_progress TRUE)
while(_progress)
  set(_progress FALSE)
  set(_next "")
  foreach(_h IN LISTS _left)
    string(MAKE_C_IDENTIFIER "${_h}" _id)
    set(_blocked FALSE)
    foreach(_d IN LISTS _deps_${_id})
      if(_d IN_LIST _left)
        set(_blocked TRUE)
        break()
      endif()
    endforeach()
    if(_blocked)
      list(APPEND _next "${_h}")
    else()
      set(_progress TRUE)
    endif()
  endforeach()
  set(_left "${_next}")
endwhile()
if(_left)
  list(JOIN _left ", " _cycle)
  string(APPEND _problems "\n  an include cycle runs through: ${_cycle}")
endif()

list(LENGTH _nodes _count)
if(_problems)
  message(FATAL_ERROR "layering: ${_problems}")
endif()
message(STATUS "layering: ${_count} headers, every include within or below its layer, no cycle")
