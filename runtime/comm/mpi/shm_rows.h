// Sequence parallelism's reduce-scatter (Collectives::reduce_scatter_sum) where the ranks of a tensor-parallel group
// share a node: the data to be summed lives in shared memory (the layer's row-parallel output, which its products
// write straight into this rank's part of a segment, shm_segment.h), and each rank sums its rows out of every rank's
// part in place, in rank order. Nothing is copied between ranks: through MPI each rank's rows were first copied into
// the other's memory (process_vm_readv), then summed (docs/performance.md).
//
// The same protocol hands every rank all of every rank's values (all_parts): an all-reduce whose sums are made by
// the caller where it uses them (each rank sums all the rows, as after an all-reduce each normalizes all of them).
//
// Two waits on flags in the segment: for every rank's data (its products done), and for every rank to have read the
// others' (so that none writes its part again, at the next product, while another still reads it). A rank that
// never arrives is the watchdog's to report, as one stuck in MPI is. Every rank must give the same rows (for a
// reduce-scatter, shares that follow one another in rank order): a mismatch is reported by name on every rank.
//
// The same memory also serves as SharedRows (runtime/base/shared_rows.h): rounds in which each rank waits only for
// the rows meant for it, and a writer only (at its next round) for its readers to be done. Its flags are apart from
// the collective calls' above; a caller that writes a rank's part outside a round after a round (a collective's
// operands) first calls await_readers.
#pragma once
#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "runtime/base/shared_rows.h"
#include "runtime/comm/mpi/shm_segment.h"

namespace strata {

class ShmRows final : public SharedRows {
 public:
  // The most ranks whose rounds' flags fit the header page (SharedRows); create gives none for a larger group.
  static constexpr int kMaxRanks = 32;
  // Collective over `comm`; null (on every rank) where ShmSegment::create gives none.
  static std::unique_ptr<ShmRows> create(MPI_Comm comm, std::size_t bytes);
  ~ShmRows();
  ShmRows(const ShmRows&) = delete;
  ShmRows& operator=(const ShmRows&) = delete;

  // This rank's `bytes` of shared memory (page-aligned).
  void* data() const;
  // Whether [p, p + bytes) lies in data().
  bool holds(const void* p, std::size_t bytes) const;
  // use(parts), parts[r] rank r's floats [from, from + count) of its data(), in its memory, readable during the call
  // only (`from` counted in floats from data()'s start): this rank's share, which every rank gives as its own (the
  // shares side by side in rank order, of any sizes). Collective.
  using PartsUser = std::function<void(std::span<const float* const> parts)>;
  void reduce_scatter(std::size_t from, std::int64_t count, const PartsUser& use);
  // use(parts), parts[r] rank r's floats [at, at + count) of its data(): every rank gets all of them (an all-reduce's
  // operands, for a caller that sums them into what it makes next). Collective.
  void all_parts(std::size_t at, std::int64_t count, const PartsUser& use);

  // SharedRows: rounds on the same memory.
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::size_t bytes() const override { return bytes_; }
  void await_readers() override;
  void* begin_round() override;
  void publish(int reader, std::int64_t at, std::int64_t count) override;
  const void* rows_from(int writer, std::int64_t at, std::int64_t count) override;
  void end_reading() override;

 private:
  struct Header;  // a rank's flags and the call it is in (shm_rows.cpp)
  ShmRows(std::unique_ptr<ShmSegment> segment, std::size_t bytes, int rank, int size);
  Header& header(int rank) const;
  const float* floats(int rank) const;
  void wait_for_all(std::uint64_t sequence, bool read) const;
  // The protocol of both calls (`whole` for all_parts): every rank's parts from its `at`.
  void exchange(std::size_t at, std::int64_t count, bool whole, const PartsUser& use);
  // The first rank whose call does not fit this one's (-1 where all do).
  int misfit(std::size_t at, std::int64_t count, bool whole) const;

  std::unique_ptr<ShmSegment> segment_;
  std::size_t bytes_;
  int rank_, size_;
  std::uint64_t sequence_ = 0;  // calls so far, the same on every rank
  std::uint64_t round_ = 0;     // SharedRows rounds begun so far, the same on every rank between rounds
};

}  // namespace strata
