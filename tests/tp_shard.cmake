# tests/tp_shard.cmake — a TP rank's share of the model (worker/tp_shard.h): the
# arithmetic for tiny-llama, stories260K and Llama-3-8B over T = 1, 2, 4, 8, and
# the cpu backend holding exactly those blocks. No GPU, no second process.
kvf_add_test(test_tp_shard SOURCES test_tp_shard.c LIBS kvf_cpu kvf_tp TIMEOUT 120)
if(KVF_HAVE_CUDA AND TARGET kvf_cuda)
  # The cuda backend's refusals of splits and of a group without NCCL (checked before any CUDA call).
  target_link_libraries(test_tp_shard PRIVATE kvf_cuda)
  target_compile_definitions(test_tp_shard PRIVATE KVF_TEST_CUDA=1)
endif()
# The cuda backend over a TP group of 2 and 4 GPUs (one process per rank, NCCL)
# against one GPU, and a dead rank. Skips where there are fewer GPUs.
if(KVF_HAVE_CUDA AND TARGET kvf_cuda AND TARGET kvf_tp_nccl)
  kvf_add_test(test_cuda_tp SOURCES test_cuda_tp.c LIBS kvf_cuda kvf_tp_nccl kvf_modelio m LABELS gpu TIMEOUT 1200)
endif()
# A TP follower's choice between forward and forward_sample (worker/tp_group.c), fake backends over shm.
kvf_add_test(test_tp_follower SOURCES test_tp_follower.c LIBS kvf_tp TIMEOUT 60)
# The vocab-parallel lm_head's best-logit merge (against the host sampler's greedy pick) and unshard, one process.
kvf_add_test(test_tp_vocab SOURCES test_tp_vocab.c LIBS kvf_cpu kvf_tp TIMEOUT 60)
