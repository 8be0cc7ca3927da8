# tests/reliability.cmake — worker loss, coordinator restart on its journal,
# overload and chaos with real processes (included by tests/CMakeLists.txt).
# The longer soak is tests/chaos.sh.
if(TARGET kvf_static)
  kvf_add_test(test_reliability SOURCES test_reliability.c LIBS kvf_static PkgConfig::JANSSON
               LABELS multiprocess TIMEOUT 600)
  foreach(dep kvf-coordinator kvf-worker kvfctl)
    if(TARGET ${dep})
      add_dependencies(test_reliability ${dep})
    endif()
  endforeach()
endif()
# The journal module alone (no processes).
kvf_add_test(test_coord_journal SOURCES test_coord_journal.c LIBS kvf_coord TIMEOUT 60)
# kvfctl run's chunk list (what a resumed run reads), no processes.
if(TARGET kvfctl_core)
  kvf_add_test(test_kvfctl_chunks SOURCES test_kvfctl_chunks.c LIBS kvfctl_core TIMEOUT 60)
endif()
