// Shared test helpers: a single-rank Communicator (no MPI), a WeightSource of deterministic random weights
// (the same values `strata init` writes), and tolerance comparisons.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <vector>

#include "layers/checkpoint_weights.h"
#include "layers/transformer.h"
#include "runtime/comm/communicator.h"

namespace strata::test {

// A group of one: collectives are identities; point-to-point to oneself goes through a queue.
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(TensorView) override {}
  void all_gather(const void* send, void* recv, std::size_t bytes) override { std::memcpy(recv, send, bytes); }
  void all_to_all(const void* send, const std::size_t* send_bytes, const std::size_t* send_offsets, void* recv,
                  const std::size_t*, const std::size_t* recv_offsets) override {
    std::memcpy(static_cast<char*>(recv) + recv_offsets[0], static_cast<const char*>(send) + send_offsets[0],
                send_bytes[0]);
  }
  void broadcast(void*, std::size_t, int) override {}
  std::int64_t all_reduce_max(std::int64_t value) override { return value; }
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int) override { return std::make_unique<LocalCommunicator>(); }
  std::unique_ptr<SendRequest> isend(std::vector<char> message, int, Tag tag) override {
    queues_[tag].push_back(std::move(message));
    return std::make_unique<Done>();
  }
  std::vector<char> recv(int, Tag tag) override {
    auto& q = queues_[tag];
    EXPECT_FALSE(q.empty()) << "recv would block forever";
    auto m = std::move(q.front());
    q.pop_front();
    return m;
  }
  bool try_recv_any(Tag tag, std::vector<char>& message, int& src) override {
    auto& q = queues_[tag];
    if (q.empty()) return false;
    message = std::move(q.front());
    q.pop_front();
    src = 0;
    return true;
  }

 private:
  struct Done : SendRequest {
    void wait() override {}
  };
  std::map<Tag, std::deque<std::vector<char>>> queues_;
};

// Serves any TensorSpec from the deterministic random model of `seed` (what `strata init` writes).
using RandomWeights = RandomWeightSource;

inline ModelConfig tiny_config() {
  ModelConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 260;
  c.max_position_embeddings = 128;
  c.rms_norm_eps = 1e-5;
  c.bos_token_id = 256;
  c.eos_token_id = 257;
  return c;
}

// max |a - b| / max |b| (0 when both are zero)
inline double relative_error(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return scale == 0 ? diff : diff / scale;
}

template <typename T>
std::vector<double> as_double(const T* data, std::size_t n) {
  return std::vector<double>(data, data + n);
}

// For tests that address a stage's sequences by number: sequence s holds the blocks [s * per, (s + 1) * per) of
// the paged cache (per = blocks of max_seq_len positions), so table() is the identity and chunk() puts the number
// in the table offset.
struct SequenceBlocks {
  explicit SequenceBlocks(const StageLimits& limits)
      : per(std::int32_t((limits.max_seq_len + limits.block_size - 1) / limits.block_size)) {
    for (std::int64_t b = 0; b < limits.cache_blocks(); ++b) table.push_back(std::int32_t(b));
  }
  SeqChunk chunk(std::int32_t sequence, std::int32_t start, std::int32_t n, std::int32_t offset) const {
    return SeqChunk{sequence * per, start, n, offset};
  }
  std::int32_t per;
  std::vector<std::int32_t> table;
};

}  // namespace strata::test
