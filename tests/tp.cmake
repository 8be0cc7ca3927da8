# tests/tp.cmake — tensor parallelism: the shm communicator between forked
# processes and the cpu backend sharded over TP 2 / 4 against TP 1.
kvf_add_test(test_tp SOURCES test_tp.c LIBS kvf_cpu kvf_tp TIMEOUT 300)
if(KVF_HAVE_CUDA AND TARGET kvf_tp_nccl)
  kvf_add_test(test_tp_nccl SOURCES test_tp_nccl.c LIBS kvf_tp_nccl LABELS gpu TIMEOUT 300)
endif()
