#include "runtime/comm/mpi/shm_rows.h"

#include <atomic>
#include <new>
#include <vector>

#include "runtime/base/log.h"
#include "runtime/comm/mpi/mpi_communicator.h"

namespace strata {

// A rank's part of the segment: this header, then its data from kDataOffset. `arrived`: the sequence number of the
// last call whose data it has written (with that call's `at`, `count` and kind); `read`: of the last call whose sums it
// has taken from every rank's data. Each flag on its own cache line: one rank writes it, the others spin on it.
// The rounds' (SharedRows): `taken`, the last round this rank has read every writer's rows of; ready[r], the last
// round whose rows for rank r this rank has published, and which rows.
struct ShmRows::Header {
  alignas(64) std::atomic<std::uint64_t> arrived;
  std::uint64_t at;
  std::int64_t count;
  bool whole;  // all_parts, not reduce_scatter
  alignas(64) std::atomic<std::uint64_t> read;
  alignas(64) std::atomic<std::uint64_t> taken;
  struct Ready {
    alignas(64) std::atomic<std::uint64_t> round;
    std::int64_t at, count;
  } ready[kMaxRanks];
};

namespace {
constexpr std::size_t kDataOffset = 4096;  // the data page-aligned, after the header
static_assert(sizeof(std::atomic<std::uint64_t>) <= 64 && alignof(std::max_align_t) <= kDataOffset);
std::size_t pages(std::size_t bytes) { return (bytes + 4095) / 4096 * 4096; }
}  // namespace

std::unique_ptr<ShmRows> ShmRows::create(MPI_Comm comm, std::size_t bytes) {
  int size = 0, rank = 0;
  STRATA_MPI_CHECK(MPI_Comm_size(comm, &size));
  STRATA_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  static_assert(sizeof(Header) <= kDataOffset, "the header fits the page before the data");
  if (size > kMaxRanks) return nullptr;  // (the same on every rank)
  auto segment = ShmSegment::create(comm, kDataOffset + pages(bytes), "the sequence-parallel reduce-scatter",
                                    "MPI point-to-point sends");
  if (!segment) return nullptr;
  std::unique_ptr<ShmRows> rows(new ShmRows(std::move(segment), bytes, rank, size));
  Header& own = rows->header(rank);
  new (&own.arrived) std::atomic<std::uint64_t>(0);
  new (&own.read) std::atomic<std::uint64_t>(0);
  new (&own.taken) std::atomic<std::uint64_t>(0);
  for (auto& ready : own.ready) new (&ready.round) std::atomic<std::uint64_t>(0);
  STRATA_MPI_CHECK(MPI_Barrier(comm));  // every rank's flags made before anyone looks at them
  return rows;
}

ShmRows::ShmRows(std::unique_ptr<ShmSegment> segment, std::size_t bytes, int rank, int size)
    : segment_(std::move(segment)), bytes_(bytes), rank_(rank), size_(size) {}

ShmRows::~ShmRows() = default;

ShmRows::Header& ShmRows::header(int rank) const { return *static_cast<Header*>(segment_->part(rank)); }

const float* ShmRows::floats(int rank) const {
  return reinterpret_cast<const float*>(static_cast<const char*>(segment_->part(rank)) + kDataOffset);
}

void* ShmRows::data() const { return static_cast<char*>(segment_->part(rank_)) + kDataOffset; }

bool ShmRows::holds(const void* p, std::size_t bytes) const {
  const auto* begin = static_cast<const char*>(data());
  const auto* at = static_cast<const char*>(p);
  return at >= begin && at <= begin + bytes_ && bytes <= std::size_t(begin + bytes_ - at);
}

void ShmRows::wait_for_all(std::uint64_t sequence, bool read) const {
  for (int r = 0; r < size_; ++r) {
    const Header& peer = header(r);
    const std::atomic<std::uint64_t>& flag = read ? peer.read : peer.arrived;
    spin_until([&] { return flag.load(std::memory_order_acquire) >= sequence; });
  }
}

void ShmRows::reduce_scatter(std::size_t from, std::int64_t count, const PartsUser& use) {
  STRATA_CHECK(count >= 0 && (from + std::size_t(count)) * sizeof(float) <= bytes_, Internal,
               "shared-memory reduce-scatter of ", count, " values from ", from, ": past the ", bytes_,
               " bytes of the segment");
  exchange(from, count, false, use);
}

void ShmRows::all_parts(std::size_t at, std::int64_t count, const PartsUser& use) {
  STRATA_CHECK(count >= 0 && (at + std::size_t(count)) * sizeof(float) <= bytes_, Internal,
               "shared-memory all-reduce of ", count, " values from ", at, ": past the ", bytes_,
               " bytes of the segment");
  exchange(at, count, true, use);
}

void ShmRows::exchange(std::size_t at, std::int64_t count, bool whole, const PartsUser& use) {
  const std::uint64_t sequence = ++sequence_;
  Header& own = header(rank_);
  own.at = at;
  own.count = count;
  own.whole = whole;
  own.arrived.store(sequence, std::memory_order_release);
  wait_for_all(sequence, false);
  const int differs = misfit(at, count, whole);
  // The other rank's call, read before the flags below free it.
  const std::uint64_t their_at = differs < 0 ? 0 : header(differs).at;
  const std::int64_t their_count = differs < 0 ? 0 : header(differs).count;
  const bool their_whole = differs >= 0 && header(differs).whole;
  // Every rank finishes the protocol before it throws: one that left early would write its data again while another
  // still reads it.
  const auto finish = [&] {
    own.read.store(sequence, std::memory_order_release);
    wait_for_all(sequence, true);
  };
  if (differs < 0) {
    std::vector<const float*> parts;
    for (int r = 0; r < size_; ++r) parts.push_back(floats(r) + at);
    try {
      use(parts);
    } catch (...) {
      finish();
      throw;
    }
  }
  finish();
  if (differs >= 0) {
    const auto call = [](bool all) { return all ? " values in all" : " values a rank"; };
    throw Error(ErrorKind::Communication,
                cat("shared-memory ", whole ? "all-reduce" : "reduce-scatter", ": rank ", differs, " sums ",
                    their_count, call(their_whole), " from float ", their_at, " where rank ", rank_, " sums ", count,
                    call(whole), " from ", at, " (every rank must give the same rows)"));
  }
}

// An all-reduce's calls give the same values on every rank; a reduce-scatter's shares follow one another, rank r's
// ending where rank r + 1's begins.
int ShmRows::misfit(std::size_t at, std::int64_t count, bool whole) const {
  for (int r = 0; r < size_; ++r) {
    const Header& h = header(r);
    if (h.whole != whole) return r;
    if (whole && (h.at != at || h.count != count)) return r;
    if (!whole && r < size_ - 1 && h.at + std::uint64_t(h.count) != header(r + 1).at) return r;
  }
  return -1;
}

// SharedRows. A writer's begin_round of round k + 1 waits until every reader has ended round k, so the ready flag a
// reader waits on in round k reads k - 1 (not yet published) or k: `>=` on the round is exact.
void ShmRows::await_readers() {
  for (int r = 0; r < size_; ++r)
    if (r != rank_) {
      const std::atomic<std::uint64_t>& taken = header(r).taken;
      spin_until([&] { return taken.load(std::memory_order_acquire) >= round_; });
    }
}

void* ShmRows::begin_round() {
  await_readers();
  ++round_;
  return data();
}

void ShmRows::publish(int reader, std::int64_t at, std::int64_t count) {
  STRATA_CHECK(reader >= 0 && reader < size_ && round_ > 0, Internal, "shared rows published for rank ", reader, " of ",
               size_, " in round ", round_);
  Header::Ready& ready = header(rank_).ready[reader];
  ready.at = at;
  ready.count = count;
  ready.round.store(round_, std::memory_order_release);
}

const void* ShmRows::rows_from(int writer, std::int64_t at, std::int64_t count) {
  STRATA_CHECK(writer >= 0 && writer < size_ && round_ > 0, Internal, "shared rows asked of rank ", writer, " of ",
               size_, " in round ", round_);
  if (writer == rank_) return data();
  const Header::Ready& ready = header(writer).ready[rank_];
  spin_until([&] { return ready.round.load(std::memory_order_acquire) >= round_; });
  if (ready.at != at || ready.count != count) {
    const std::int64_t their_at = ready.at, their_count = ready.count;
    end_reading();  // (the writer is not left waiting for this rank)
    throw Error(ErrorKind::Communication, cat("shared rows: rank ", writer, " gave rank ", rank_, " rows ", their_at,
                                              "..", their_at + their_count, " where rank ", rank_, " takes ", at, "..",
                                              at + count, " (every rank must give the same rows)"));
  }
  return floats(writer);
}

void ShmRows::end_reading() { header(rank_).taken.store(round_, std::memory_order_release); }

}  // namespace strata
