# tests/fuzz.cmake — libFuzzer targets over the decoders of untrusted input
# (tests/fuzz/README.md). They need clang with -fsanitize=fuzzer; the main build
# is gcc, so tests/fuzz/ is a small project of its own, configured with clang and
# built as an ExternalProject. Each CTest test runs one target for a few seconds
# on a copy of its committed seed corpus (label "fuzz"). Without a working clang
# + libFuzzer the tests are registered anyway and report skipped, naming what is
# missing.
option(KVF_FUZZ "Build the libFuzzer targets with clang (else their tests report skipped)" ON)
set(KVF_FUZZ_SECONDS 8 CACHE STRING "seconds each fuzz test runs (-max_total_time)")
set(KVF_FUZZ_TARGETS codec tokenizer safetensors modelcfg)
set(KVF_FUZZ_SKIP 77)

find_program(KVF_FUZZ_CC NAMES clang clang-14 clang-15 clang-16 clang-17 clang-18 clang-19)
set(KVF_FUZZ_MISSING "")
if(NOT KVF_FUZZ)
  set(KVF_FUZZ_MISSING "the fuzz targets are switched off (KVF_FUZZ=OFF)")
elseif(NOT KVF_FUZZ_CC)
  set(KVF_FUZZ_MISSING "clang not found (Debian: apt-get install clang libclang-rt-dev)")
else()
  # The configure-time check: can clang build and link a libFuzzer target with ASan+UBSan?
  set(_dir ${CMAKE_CURRENT_BINARY_DIR}/fuzz-check)
  file(MAKE_DIRECTORY ${_dir})
  file(WRITE ${_dir}/check.c
    "#include <stddef.h>\n#include <stdint.h>\n"
    "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return n > 0 && d[0] == 1; }\n")
  execute_process(
    COMMAND ${KVF_FUZZ_CC} -fsanitize=fuzzer,address,undefined ${_dir}/check.c -o ${_dir}/check
    RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
  if(NOT _rc EQUAL 0)
    string(REGEX REPLACE "\n.*" "" _first "${_out}")
    string(REPLACE "'" "" _first "${_first}")  # it goes into a sh -c '...' below
    set(KVF_FUZZ_MISSING
      "${KVF_FUZZ_CC} cannot link -fsanitize=fuzzer,address,undefined (libFuzzer runtime missing? Debian: libclang-rt-dev)")
    if(_first)
      string(APPEND KVF_FUZZ_MISSING ": ${_first}")
    endif()
  endif()
endif()

if(KVF_FUZZ_MISSING)
  message(STATUS "kvfleet: fuzz tests will be skipped: ${KVF_FUZZ_MISSING}")
  foreach(t ${KVF_FUZZ_TARGETS})
    add_test(NAME fuzz_${t} COMMAND sh -c "echo 'skipped: ${KVF_FUZZ_MISSING}'; exit ${KVF_FUZZ_SKIP}")
    set_tests_properties(fuzz_${t} PROPERTIES LABELS fuzz SKIP_RETURN_CODE ${KVF_FUZZ_SKIP})
  endforeach()
  return()
endif()
message(STATUS "kvfleet: fuzz targets built with ${KVF_FUZZ_CC}")

include(ExternalProject)
set(KVF_FUZZ_BIN ${CMAKE_CURRENT_BINARY_DIR}/fuzz-build/bin)
set(_byproducts "")
foreach(t ${KVF_FUZZ_TARGETS})
  list(APPEND _byproducts ${KVF_FUZZ_BIN}/fuzz_${t})
endforeach()
ExternalProject_Add(kvf_fuzzers
  SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/fuzz
  BINARY_DIR ${CMAKE_CURRENT_BINARY_DIR}/fuzz-build
  CMAKE_CACHE_ARGS
    -DCMAKE_C_COMPILER:FILEPATH=${KVF_FUZZ_CC}
    -DCMAKE_BUILD_TYPE:STRING=Debug
    -DKVF_ROOT:PATH=${CMAKE_SOURCE_DIR}
    -DKVF_PROTO_SOURCES:STRING=${KVF_PROTO_SOURCES}
    -DKVF_WERROR:BOOL=${KVF_WERROR}
  INSTALL_COMMAND ""
  BUILD_ALWAYS ON
  BUILD_BYPRODUCTS ${_byproducts})

foreach(t ${KVF_FUZZ_TARGETS})
  add_test(NAME fuzz_${t}
    COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/run.sh ${KVF_FUZZ_BIN}/fuzz_${t}
      ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/${t} ${CMAKE_CURRENT_BINARY_DIR}/fuzz-work/${t}
      ${KVF_FUZZ_SECONDS})
  set_tests_properties(fuzz_${t} PROPERTIES LABELS fuzz SKIP_RETURN_CODE ${KVF_FUZZ_SKIP}
    TIMEOUT 120)
endforeach()
