// Rows that a group's ranks write in memory they all map and read from one another in place, with no meeting of
// the whole group: each reader waits only for the writer whose rows it needs, and only for the rows meant for it.
// Sequence parallelism (layers/transformer.h) runs its exchanges on it: a rank computes the other ranks' rows of a
// row-parallel output first and hands them over as soon as they are made, then its own; it quantizes its own rows
// of a product's input, hands them over and computes their products while the others' arrive. A rank whose core ran
// a little slower for a while then holds the others back only by what exceeds the work it left them (their own
// rows), not by the whole difference at every meeting, as a collective does.
//
// A round: the writer's begin_round (which waits until every reader has finished with its last round's rows), its
// rows written, publish() once for each reader (the rows it wrote for that reader), and on each reader rows_from()
// for each writer (waiting until that writer has published this round's rows for it), then end_reading(). Every
// rank takes part in every round, as writer and reader, in the same order of rounds.
#pragma once
#include <cstddef>
#include <cstdint>

namespace strata {

class SharedRows {
 public:
  virtual ~SharedRows() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The bytes of this rank's memory (every rank's is as large).
  virtual std::size_t bytes() const = 0;
  // Waits until every other rank has finished reading this rank's rows of the rounds so far (before this rank
  // writes its memory outside a round: a collective's operands).
  virtual void await_readers() = 0;
  // Starts the next round: await_readers(), then this rank's memory (bytes() of it), to be written.
  virtual void* begin_round() = 0;
  // This round's rows for `reader` are written: rows [at, at + count) in the caller's units (rows, floats), which
  // the reader checks against the rows it asks for.
  virtual void publish(int reader, std::int64_t at, std::int64_t count) = 0;
  // Waits until `writer` has published this round's rows for this rank, and returns the writer's memory (in this
  // rank's address space, readable until end_reading). Throws an Error naming both ranks where the writer published
  // other rows than [at, at + count); this rank's reading is then ended.
  virtual const void* rows_from(int writer, std::int64_t at, std::int64_t count) = 0;
  // This rank has read all it needs of this round.
  virtual void end_reading() = 0;
};

}  // namespace strata
