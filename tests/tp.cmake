# tests/tp.cmake — tensor parallelism: the shm communicator between forked
# processes and the cpu backend sharded over TP 2 / 4 against TP 1.
kvf_add_test(test_tp SOURCES test_tp.c LIBS kvf_cpu kvf_tp TIMEOUT 300)
