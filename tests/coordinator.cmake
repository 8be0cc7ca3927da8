# tests/coordinator.cmake — kvf-coordinator: unit tests of its modules and
# multi-process tests that start the real binary.
kvf_add_test(test_coord_placement SOURCES test_coord_placement.c LIBS kvf_coord TIMEOUT 60)
kvf_add_test(test_coord_queue SOURCES test_coord_queue.c LIBS kvf_coord TIMEOUT 60)
kvf_add_test(test_coord_reqtable SOURCES test_coord_reqtable.c LIBS kvf_coord TIMEOUT 60)
kvf_add_test(test_coord_proc SOURCES test_coord_proc.c LIBS kvf_coord LABELS multiprocess TIMEOUT 120)
add_dependencies(test_coord_proc kvf-coordinator)
kvf_add_test(test_coord_hostile SOURCES test_coord_hostile.c LIBS kvf_coord kvf_tokenizer LABELS multiprocess TIMEOUT 120)
add_dependencies(test_coord_hostile kvf-coordinator)
kvf_add_test(test_coord_stress SOURCES test_coord_stress.c LIBS kvf_coord LABELS multiprocess TIMEOUT 180)
add_dependencies(test_coord_stress kvf-coordinator)
