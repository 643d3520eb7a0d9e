// A Collectives that times another: seconds spent in its calls (less the caller's own work that a call runs, the
// sums fused into what the caller makes next), for the run's per-rank breakdown of compute, communication and
// waiting (--metrics). On NCCL the calls only enqueue work on the stream, so what it measures
// there is the host's share; on MPI it is the whole exchange, waiting for the slowest peer included.
#pragma once
#include <chrono>
#include <memory>
#include <vector>

#include "runtime/comm/communicator.h"

namespace strata {

class TimedCollectives final : public Collectives {
 public:
  explicit TimedCollectives(Collectives& inner) : inner_(inner) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  void all_reduce_sum(TensorView data) override {
    timed([&] { inner_.all_reduce_sum(data); });
  }
  void reduce_scatter_sum(TensorView data, RowStarts starts, TensorView share) override {
    timed([&] { inner_.reduce_scatter_sum(data, starts, share); });
  }
  bool all_reduce_with(TensorView data, const PartsUser& use) override {
    bool done = false;
    timed([&] { done = inner_.all_reduce_with(data, untimed(use)); });
    return done;
  }
  Buffer shared_workspace(std::size_t bytes) override { return inner_.shared_workspace(bytes); }
  // The rounds' waits (for readers, for a writer's rows) are communication too.
  SharedRows* shared_rows(const void* workspace) override {
    SharedRows* inner = inner_.shared_rows(workspace);
    if (!inner) return nullptr;
    for (const auto& rows : rows_)
      if (rows->inner == inner) return rows.get();
    rows_.push_back(std::make_unique<TimedRows>(*this, inner));
    return rows_.back().get();
  }
  void all_gather(const void* send, void* recv, std::size_t bytes_per_rank) override {
    timed([&] { inner_.all_gather(send, recv, bytes_per_rank); });
  }
  void all_gather_rows(void* rows, std::size_t row_bytes, RowStarts starts) override {
    timed([&] { inner_.all_gather_rows(rows, row_bytes, starts); });
  }
  void all_to_all(const void* send, const std::size_t* send_bytes, const std::size_t* send_offsets, void* recv,
                  const std::size_t* recv_bytes, const std::size_t* recv_offsets) override {
    timed([&] { inner_.all_to_all(send, send_bytes, send_offsets, recv, recv_bytes, recv_offsets); });
  }
  void broadcast(void* data, std::size_t bytes, int root) override {
    timed([&] { inner_.broadcast(data, bytes, root); });
  }
  void barrier() override {
    timed([&] { inner_.barrier(); });
  }
  bool graph_capturable() const override { return inner_.graph_capturable(); }
  double seconds() const { return seconds_; }

 private:
  // The caller's own work inside a call (use(): the residual add and norm its sums are fused into) is compute, not
  // communication: its time is taken back out.
  PartsUser untimed(const PartsUser& use) {
    return [this, &use](std::span<const float* const> parts) {
      const auto start = std::chrono::steady_clock::now();
      use(parts);
      seconds_ -= std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
  }
  template <typename F>
  void timed(F&& call) {
    const auto start = std::chrono::steady_clock::now();
    call();
    seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  struct TimedRows final : SharedRows {
    TimedRows(TimedCollectives& timer, SharedRows* rows) : owner(timer), inner(rows) {}
    int rank() const override { return inner->rank(); }
    int size() const override { return inner->size(); }
    std::size_t bytes() const override { return inner->bytes(); }
    void await_readers() override {
      owner.timed([&] { inner->await_readers(); });
    }
    void* begin_round() override {
      void* data = nullptr;
      owner.timed([&] { data = inner->begin_round(); });
      return data;
    }
    void publish(int reader, std::int64_t at, std::int64_t count) override { inner->publish(reader, at, count); }
    const void* rows_from(int writer, std::int64_t at, std::int64_t count) override {
      const void* rows = nullptr;
      owner.timed([&] { rows = inner->rows_from(writer, at, count); });
      return rows;
    }
    void end_reading() override { inner->end_reading(); }
    TimedCollectives& owner;
    SharedRows* inner;
  };
  Collectives& inner_;
  double seconds_ = 0;
  std::vector<std::unique_ptr<TimedRows>> rows_;  // shared_rows' wrappers, one per workspace
};

}  // namespace strata
