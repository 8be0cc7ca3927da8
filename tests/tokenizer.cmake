# tests/tokenizer.cmake — the tokenizer (common/tokenizer*.c) and the kvf-tokenize tool.
kvf_add_test(test_tokenizer SOURCES test_tokenizer.c
             LIBS kvf_tokenizer kvf_common PkgConfig::JANSSON Threads::Threads TIMEOUT 120)
if(TARGET kvf-tokenize)
  add_dependencies(test_tokenizer kvf-tokenize)  # the tool test runs the built binary
endif()
