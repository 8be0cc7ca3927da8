# tests/mkmodel.cmake — kvf-mkmodel run as a real process.
if(TARGET kvf-mkmodel)
  set(KVF_MKMODEL_TEST_LIBS kvf_modelio m)
  if(TARGET kvf_tokenizer)
    list(APPEND KVF_MKMODEL_TEST_LIBS kvf_tokenizer)
  endif()
  kvf_add_test(test_mkmodel SOURCES test_mkmodel.c LIBS ${KVF_MKMODEL_TEST_LIBS})
  add_dependencies(test_mkmodel kvf-mkmodel)
  if(TARGET kvf_tokenizer)
    # The generated tokenizer.json is also checked by loading it.
    target_compile_definitions(test_mkmodel PRIVATE KVF_HAVE_TOKENIZER=1)
  endif()
endif()
