# tests/modelio.cmake — safetensors and config.json (kvf_modelio).
kvf_add_test(test_safetensors SOURCES test_safetensors.c LIBS kvf_modelio m)
kvf_add_test(test_modelcfg SOURCES test_modelcfg.c LIBS kvf_modelio)
