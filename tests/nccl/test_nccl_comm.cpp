// The NCCL communicator under mpiexec, one GPU per rank: collectives on device tensors with exactly known results
// (bf16 and f32), all_gather, broadcast, device send/recv, split, host memory refused, and the timeout path (a
// collective one rank never joins ends in an Error and an aborted communicator, not a hang). Skips, with the
// reason, when this node has fewer GPUs than the test has ranks (NCCL allows one rank per GPU).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <mpi.h>
#include <type_traits>

#include <chrono>
#include <cstdint>
#include <vector>

#include "runtime/base/dtype.h"
#include "runtime/base/error.h"
#include "runtime/comm/mpi/mpi_communicator.h"
#include "runtime/comm/nccl/nccl_communicator.h"

using namespace strata;

namespace {

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int world_size() {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

int gpu_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

#define SKIP_WITHOUT_GPUS()                                                                                    \
  do {                                                                                                         \
    if (gpu_count() < world_size())                                                                            \
      GTEST_SKIP() << "needs one GPU per rank: " << world_size() << " ranks but " << gpu_count() << " GPU(s)"; \
  } while (0)

// One stream, one device buffer set and one NCCL communicator over MPI_COMM_WORLD per test.
class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (gpu_count() < world_size()) return;  // the test body skips
    ASSERT_EQ(cudaSetDevice(world_rank()), cudaSuccess);
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
    bootstrap_ = make_mpi_communicator(MPI_COMM_WORLD);
  }
  void TearDown() override {
    comm_.reset();
    for (void* p : device_) cudaFree(p);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  NcclCommunicator& comm(double timeout = 60) {
    if (!comm_)
      comm_ = make_nccl_communicator(*bootstrap_, world_rank(), stream_,
                                     NcclOptions{timeout, cat("test world (rank ", world_rank(), ")")});
    return *comm_;
  }
  template <typename T>
  T* to_device(const std::vector<T>& host) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, host.size() * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    device_.push_back(p);
    return static_cast<T*>(p);
  }
  template <typename T>
  std::vector<T> to_host(const T* device, std::size_t count) {
    std::vector<T> host(count);
    EXPECT_EQ(cudaMemcpy(host.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }

  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Communicator> bootstrap_;
  std::unique_ptr<NcclCommunicator> comm_;
  std::vector<void*> device_;
};

}  // namespace

TEST_F(NcclTest, AllReduceSumsF32AndBf16Exactly) {
  SKIP_WITHOUT_GPUS();
  const int n = world_size(), r = world_rank();
  std::vector<float> f32(4099, float(r + 1));  // odd length: no vector-width luck
  f32[7] = float(1 << r);
  float* d_f32 = to_device(f32);
  // bf16 holds small integers exactly, so the sum is exact whatever order NCCL adds in.
  std::vector<std::uint16_t> bf16(1025, f32_to_bf16(float(2 * r + 1)));
  bf16[1024] = f32_to_bf16(-float(r));
  std::uint16_t* d_bf16 = to_device(bf16);
  comm().all_reduce_sum(TensorView{d_f32, {4099}, DType::F32, MemoryKind::Device});
  comm().all_reduce_sum(TensorView{d_bf16, {1025}, DType::BF16, MemoryKind::Device});
  comm().synchronize();
  const auto sum = to_host(d_f32, f32.size());
  EXPECT_EQ(sum[0], float(n * (n + 1) / 2));
  EXPECT_EQ(sum[4098], float(n * (n + 1) / 2));
  EXPECT_EQ(sum[7], float((1 << n) - 1));
  const auto sum16 = to_host(d_bf16, bf16.size());
  EXPECT_EQ(bf16_to_f32(sum16[0]), float(n * n));  // 1 + 3 + ... + (2n - 1)
  EXPECT_EQ(bf16_to_f32(sum16[1024]), -float(n * (n - 1) / 2));
  comm().poll_async_error();  // healthy: no error
}

TEST_F(NcclTest, AllGatherAndBroadcast) {
  SKIP_WITHOUT_GPUS();
  const int n = world_size(), r = world_rank();
  std::int32_t* mine = to_device(std::vector<std::int32_t>{r, r * r, -r});
  std::int32_t* all = to_device(std::vector<std::int32_t>(std::size_t(3 * n), 99));
  comm().all_gather(mine, all, 3 * sizeof(std::int32_t));
  std::vector<char> text(13, '?');
  if (r == n - 1) text.assign({'f', 'r', 'o', 'm', ' ', 't', 'h', 'e', ' ', 'l', 'a', 's', 't'});
  char* d_text = to_device(text);
  comm().broadcast(d_text, text.size(), n - 1);
  comm().synchronize();
  const auto gathered = to_host(all, std::size_t(3 * n));
  for (int k = 0; k < n; ++k) {
    EXPECT_EQ(gathered[std::size_t(3 * k)], k);
    EXPECT_EQ(gathered[std::size_t(3 * k + 1)], k * k);
    EXPECT_EQ(gathered[std::size_t(3 * k + 2)], -k);
  }
  const auto got = to_host(d_text, text.size());
  EXPECT_EQ(std::string(got.begin(), got.end()), "from the last");
}

TEST_F(NcclTest, DeviceSendRecvBetweenNeighbours) {
  SKIP_WITHOUT_GPUS();
  const int n = world_size(), r = world_rank();
  if (n < 2) GTEST_SKIP() << "point-to-point needs 2 ranks, this run has " << n;
  // A pipeline hand-off: rank k sends to k + 1. Even ranks send first and odd ranks receive first, so no two
  // ranks wait on each other (a send and a recv on one stream run in order).
  const std::size_t count = 300000;  // larger than one NCCL chunk
  std::vector<float> out(count);
  for (std::size_t i = 0; i < count; ++i) out[i] = float(r * 1000000 + int(i));
  float* d_out = to_device(out);
  float* d_in = to_device(std::vector<float>(count, -1.0f));
  const bool sends = r + 1 < n, receives = r > 0;
  auto send = [&] {
    if (sends) comm().send_device(d_out, count * sizeof(float), r + 1);
  };
  auto receive = [&] {
    if (receives) comm().recv_device(d_in, count * sizeof(float), r - 1);
  };
  if (r % 2 == 0) {
    send();
    receive();
  } else {
    receive();
    send();
  }
  comm().synchronize();
  const auto in = to_host(d_in, count);
  if (receives) {
    EXPECT_EQ(in[0], float((r - 1) * 1000000));
    EXPECT_EQ(in[count - 1], float((r - 1) * 1000000 + int(count - 1)));
  } else {
    EXPECT_EQ(in[0], -1.0f) << "rank 0 receives nothing";
  }
}

TEST_F(NcclTest, SplitOrdersByKey) {
  SKIP_WITHOUT_GPUS();
  const int n = world_size(), r = world_rank();
  auto reversed = comm().split(0, -r);  // everyone, in descending world rank
  EXPECT_EQ(reversed->size(), n);
  EXPECT_EQ(reversed->rank(), n - 1 - r);
  float* value = to_device(std::vector<float>{float(reversed->rank() * 10)});
  reversed->all_reduce_sum(TensorView{value, {1}, DType::F32, MemoryKind::Device});
  reversed->barrier();
  EXPECT_EQ(to_host(value, 1)[0], float(10 * n * (n - 1) / 2));
}

TEST_F(NcclTest, HostMemoryIsRefusedWithAClearError) {
  SKIP_WITHOUT_GPUS();
  std::vector<float> host(16, 1.0f);
  try {
    comm().all_reduce_sum(TensorView{host.data(), {16}, DType::F32, MemoryKind::Host});
    FAIL() << "a host tensor was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("use the MPI communicator"), std::string::npos) << e.what();
  }
  EXPECT_THROW(comm().all_gather(host.data(), host.data(), 4), Error);
  EXPECT_THROW(comm().broadcast(host.data(), 4, 0), Error);
  // Host messages are not part of NCCL's interface at all (Collectives, not Communicator): checked at compile time.
  static_assert(!std::is_base_of_v<Communicator, NcclCommunicator>);
  // The refusals happen before NCCL is involved: the communicator still works.
  float* one = to_device(std::vector<float>{1.0f});
  comm().all_reduce_sum(TensorView{one, {1}, DType::F32, MemoryKind::Device});
  comm().synchronize();
  EXPECT_EQ(to_host(one, 1)[0], float(world_size()));
}

TEST_F(NcclTest, ACollectiveOneRankNeverJoinsTimesOutAndAborts) {
  SKIP_WITHOUT_GPUS();
  const int n = world_size(), r = world_rank();
  if (n < 2) GTEST_SKIP() << "a missing peer needs 2 ranks, this run has " << n;
  NcclCommunicator& nccl = comm(/*timeout=*/3);
  float* value = to_device(std::vector<float>(1024, 1.0f));
  if (r == 0) {
    // Rank 0 joins an all-reduce nobody else joins: synchronize() must give up after the timeout, abort the
    // communicator and name the rank and group.
    nccl.all_reduce_sum(TensorView{value, {1024}, DType::F32, MemoryKind::Device});
    const auto start = std::chrono::steady_clock::now();
    try {
      nccl.synchronize();
      ADD_FAILURE() << "synchronize() returned although rank 0 was alone in the all-reduce";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("timed out"), std::string::npos) << what;
      EXPECT_NE(what.find("rank 0 of"), std::string::npos) << what;
      EXPECT_NE(what.find("aborted"), std::string::npos) << what;
    }
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_GE(waited, 2.5);
    EXPECT_LT(waited, 30.0);
    EXPECT_THROW(nccl.poll_async_error(), Error) << "an aborted communicator must refuse further use";
  }
  // The others stay alive but never join (a stuck peer, not a dead one, so rank 0 sees its own timeout rather than
  // a connection error), and leave once rank 0 has given up.
  MPI_Barrier(MPI_COMM_WORLD);
  if (r != 0) nccl.abort();
}
