# tests/security.cmake — CURVE/zauth with real processes (test_security) and the
# coordinator's per-request limits (test_limits). Both start real binaries.
if(TARGET kvf_static)
  kvf_add_test(test_security SOURCES test_security.c LIBS kvf_static LABELS multiprocess TIMEOUT 120)
  foreach(dep kvf-coordinator kvf-worker kvfctl)
    if(TARGET ${dep})
      add_dependencies(test_security ${dep})
    endif()
  endforeach()
endif()
kvf_add_test(test_limits SOURCES test_limits.c LIBS kvf_proto kvf_common LABELS multiprocess TIMEOUT 60)
add_dependencies(test_limits kvf-coordinator)
