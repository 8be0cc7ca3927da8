# tests/client.cmake — libkvf, kvfctl and whole-cluster tests (included by tests/CMakeLists.txt).
if(TARGET kvfctl_core)
  kvf_add_test(test_kvfctl SOURCES test_kvfctl.c LIBS kvfctl_core TIMEOUT 60)
endif()
