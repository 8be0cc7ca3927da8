# tests/mkmodel.cmake — kvf-mkmodel run as a real process.
if(TARGET kvf-mkmodel)
  kvf_add_test(test_mkmodel SOURCES test_mkmodel.c LIBS kvf_modelio m)
  add_dependencies(test_mkmodel kvf-mkmodel)
endif()
