# tests/tp.cmake — tensor parallelism: the shm communicator between forked
# processes and the cpu backend sharded over TP 2 / 4 against TP 1.
kvf_add_test(test_tp SOURCES test_tp.c LIBS kvf_cpu kvf_tp TIMEOUT 300)
add_dependencies(test_tp kvf-mkmodel)  # a model whose vocabulary splits unevenly
if(KVF_HAVE_CUDA AND TARGET kvf_tp_nccl)
  kvf_add_test(test_tp_nccl SOURCES test_tp_nccl.c LIBS kvf_tp_nccl LABELS gpu TIMEOUT 300)
endif()
# A TP 2 group of kvf-worker processes end to end against an in-test coordinator socket.
kvf_add_test(test_tp_worker SOURCES test_tp_worker.c LIBS kvf_proto kvf_common PkgConfig::JANSSON TIMEOUT 300)
add_dependencies(test_tp_worker kvf-worker)
