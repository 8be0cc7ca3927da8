# worker/mkmodel.cmake — kvf-mkmodel: seeded random Llama models in Hugging Face layout.
add_executable(kvf-mkmodel
  ${CMAKE_CURRENT_LIST_DIR}/kvf_mkmodel.c
  ${CMAKE_CURRENT_LIST_DIR}/mkmodel_tok.c
)
target_link_libraries(kvf-mkmodel PRIVATE kvf_modelio kvf_common PkgConfig::PCRE2 PkgConfig::JANSSON)
