# tests/proto.cmake — the wire codec (proto/).
kvf_add_test(test_proto SOURCES test_proto.c LIBS kvf_proto TIMEOUT 120)

# The same tests with AddressSanitizer and UBSan on the codec itself: the proto
# and common sources are compiled into the target (not the plain libraries), so
# every byte the decoder touches is checked.
kvf_add_test(test_proto_asan
  SOURCES test_proto.c ${KVF_PROTO_SOURCES}
    ${CMAKE_SOURCE_DIR}/common/error.c
    ${CMAKE_SOURCE_DIR}/common/sampling.c
    ${CMAKE_SOURCE_DIR}/common/zmqutil.c
  LIBS PkgConfig::MSGPACK PkgConfig::CZMQ PkgConfig::ZMQ m
  TIMEOUT 300)
target_compile_options(test_proto_asan PRIVATE -fsanitize=address,undefined -fno-omit-frame-pointer
  -fno-sanitize-recover=undefined)
target_link_options(test_proto_asan PRIVATE -fsanitize=address,undefined)
set_tests_properties(test_proto_asan PROPERTIES
  ENVIRONMENT "ASAN_OPTIONS=detect_leaks=1:abort_on_error=1;UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")
