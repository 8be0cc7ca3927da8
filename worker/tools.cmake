# worker/tools.cmake — single-process tools built on common/ (included by worker/CMakeLists.txt).
add_executable(kvf-tokenize kvf_tokenize.c)
target_link_libraries(kvf-tokenize PRIVATE kvf_tokenizer kvf_common PkgConfig::JANSSON)
