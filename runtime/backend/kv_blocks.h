// The paged KV cache's addressing, shared by the backends: a layer's cache is [blocks, block_size, kv_heads,
// head_dim], and position p of a chunk's sequence is row p % block_size of block
// block_table[chunk.table_offset + p / block_size]. Sequences hold blocks, not whole contexts, so the cache holds
// as many tokens as there are blocks, however they are spread over sequences. Blocks are copied whole
// (TransformerStage::copy_block), so the order of the elements inside a block is the backend's own: the CPU backend
// keeps each KV head's rows together ([kv_heads, block_size, head_dim], for its attention loops' memory reads).
#pragma once
#include <cstdint>
#include <span>

#include "runtime/backend/backend.h"
#include "runtime/base/error.h"

namespace strata {

struct KvBlocks {
  KvBlocks(const TensorView& cache, std::span<const std::int32_t> block_table)
      : count(cache.shape.at(0)), size(cache.shape.at(1)), table(block_table) {}

  // Blocks a sequence of `positions` positions holds.
  static std::int64_t needed(std::int64_t positions, std::int64_t block_size) {
    return (positions + block_size - 1) / block_size;
  }
  // The chunk's positions are covered by its table, and every block it names exists.
  void check(const SeqChunk& c) const {
    const std::int64_t used = needed(std::int64_t(c.start_pos) + c.n_tokens, size);
    STRATA_CHECK(c.start_pos >= 0 && c.n_tokens >= 0 && c.table_offset >= 0 &&
                     std::int64_t(c.table_offset) + used <= std::int64_t(table.size()),
                 Internal, "KV cache: chunk positions ", c.start_pos, "+", c.n_tokens, " need ", used,
                 " blocks at table offset ", c.table_offset, " of a table of ", table.size());
    for (std::int64_t b = 0; b < used; ++b) {
      const std::int32_t block = table[std::size_t(c.table_offset + b)];
      STRATA_CHECK(block >= 0 && block < count, Internal, "KV cache: block ", block, " outside the pool of ", count);
    }
  }
  // The pool block that holds position `pos` of the chunk's sequence (as its row pos % size).
  std::int64_t block_of(const SeqChunk& c, std::int32_t pos) const {
    return table[std::size_t(c.table_offset + pos / size)];
  }

  std::int64_t count, size;
  std::span<const std::int32_t> table;
};

}  // namespace strata
