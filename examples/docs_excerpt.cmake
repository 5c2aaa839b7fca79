# docs/concepts.md shows the part of examples/custom_aggregator.cpp between the lines
# `// BEGIN concepts.md` and `// END concepts.md`, as the ```cpp block that follows the line
# `<!-- excerpt: examples/custom_aggregator.cpp -->`. The example is the source: this script fails
# when the doc's block differs from it, and with -D UPDATE=ON rewrites the block from it.
#   cmake [-D UPDATE=ON] -P examples/docs_excerpt.cmake
get_filename_component(_root "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
set(_example "${_root}/examples/custom_aggregator.cpp")
set(_doc "${_root}/docs/concepts.md")
set(_marker "<!-- excerpt: examples/custom_aggregator.cpp -->")

file(READ "${_example}" _code)
string(FIND "${_code}" "// BEGIN concepts.md\n" _begin)
string(FIND "${_code}" "// END concepts.md" _end)
if(_begin EQUAL -1 OR _end EQUAL -1 OR _end LESS _begin)
  message(FATAL_ERROR "${_example}: the BEGIN/END concepts.md markers are missing")
endif()
math(EXPR _begin "${_begin} + 21")  # past the BEGIN line
math(EXPR _length "${_end} - ${_begin}")
string(SUBSTRING "${_code}" ${_begin} ${_length} _excerpt)

file(READ "${_doc}" _text)
string(FIND "${_text}" "${_marker}\n```cpp\n" _at)
if(_at EQUAL -1)
  message(FATAL_ERROR "${_doc}: no `${_marker}` line followed by a ```cpp block")
endif()
string(LENGTH "${_marker}\n```cpp\n" _skip)
math(EXPR _start "${_at} + ${_skip}")
string(SUBSTRING "${_text}" 0 ${_start} _head)
string(SUBSTRING "${_text}" ${_start} -1 _rest)
string(FIND "${_rest}" "```" _close)
string(SUBSTRING "${_rest}" 0 ${_close} _shown)
string(SUBSTRING "${_rest}" ${_close} -1 _tail)

if(_shown STREQUAL _excerpt)
  message(STATUS "docs/concepts.md shows examples/custom_aggregator.cpp as it is")
elseif(UPDATE)
  file(WRITE "${_doc}" "${_head}${_excerpt}${_tail}")
  message(STATUS "rewrote the excerpt in ${_doc}")
else()
  message(FATAL_ERROR "docs/concepts.md's excerpt differs from examples/custom_aggregator.cpp; "
    "run `cmake -D UPDATE=ON -P examples/docs_excerpt.cmake`")
endif()
