// The KV-cache blocks of one replica, as the scheduler hands them out: every stage and tensor-parallel rank of the
// replica has a cache of the same number of blocks (each holding its own layers and heads), and the scheduler's
// block ids travel with each step, so one pool on stage 0 decides for all of them.
//
// A block is held by reference count: a sequence holds the blocks its positions are in, and samples of one prompt
// share the full blocks of that prompt. With prefix caching, a block that became full is registered under a hash of
// its tokens chained to the hash of the block before it (so equal hashes mean equal whole prefixes), and its tokens
// are kept to compare on a hit: a 64-bit collision on the chain would need equal last-block tokens too. A released
// registered block is not wiped: it stays findable until it is the least recently used one when a block is needed.
//   Where it can, a sequence's blocks lie one after another in the pool: attention reads a sequence's blocks in
// order, and a run of them is one stream through memory that the hardware prefetchers follow, where blocks handed
// out one at a time to sequences growing side by side interleave them (a batch's decode blocks: every sequence's next
// block lands after the others', and attention read such blocks 12-18% slower than consecutive ones;
// docs/performance.md). So a growing sequence takes the block after its last one where that is free, and a new
// sequence starts in the middle of the longest run of free blocks, leaving room after the sequence before it.
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

namespace strata {

struct BlockPoolCounts {
  std::int64_t prefix_queries = 0, prefix_hits = 0;  // blocks looked up / found when sequences were admitted
  std::int64_t evictions = 0;                        // cached blocks reused for other tokens
  std::int64_t peak_used = 0;                        // most blocks held by sequences at once
};

class BlockPool {
 public:
  BlockPool(std::int32_t blocks, std::int32_t block_size, bool prefix_caching);
  std::int32_t block_size() const { return block_size_; }
  std::int32_t total() const { return std::int32_t(refs_.size()); }
  // Blocks a new allocation can take now: never used, or released and only cached.
  std::int32_t available() const { return free_blocks_ + std::int32_t(evictable_.size()); }
  std::int32_t used() const { return total() - available(); }
  bool prefix_caching() const { return prefix_caching_; }
  const BlockPoolCounts& counts() const { return counts_; }

  // Blocks needed for `positions` positions.
  std::int64_t blocks_for(std::int64_t positions) const { return (positions + block_size_ - 1) / block_size_; }

  // The cached blocks holding the first full blocks of `tokens` (at most max_blocks), each now held once more by the
  // caller, and the chain hash after the last of them. Empty without prefix caching.
  struct Prefix {
    std::vector<std::int32_t> blocks;
    std::uint64_t chain = 0;
  };
  Prefix acquire_prefix(std::span<const std::int32_t> tokens, std::int64_t max_blocks);

  // A block for new positions of a sequence whose last block is `previous` (-1: its first block): a free block (never
  // used, or freed), the one after `previous` where that is free, else the middle of the longest run of free blocks
  // (its first block where the run starts the pool: no sequence before it to grow; the lowest such run of equal
  // length); else the least recently released cached block, which is forgotten. -1 when every block is held.
  std::int32_t allocate(std::int32_t previous = -1);
  void retain(std::int32_t block);   // one more holder (a sample sharing a prompt block)
  void release(std::int32_t block);  // one holder less; with none left it is free (or cached, if registered)

  // `block` is full with `tokens` (block_size ids) after the prefix whose chain hash is `parent`: registers it for
  // later prefixes (when prefix caching is on and no equal block is registered) and returns its chain hash.
  std::uint64_t register_full(std::int32_t block, std::uint64_t parent, std::span<const std::int32_t> tokens);

  static std::uint64_t chain_hash(std::uint64_t parent, std::span<const std::int32_t> tokens);

 private:
  void check_block(std::int32_t block, const char* op) const;
  void forget(std::int32_t block);
  using Runs = std::map<std::int32_t, std::int32_t>;
  void add_run(std::int32_t start, std::int32_t length);
  void remove_run(Runs::iterator run);
  std::int32_t take_free(std::int32_t previous);
  void give_back(std::int32_t block);

  std::int32_t block_size_;
  bool prefix_caching_;
  std::vector<std::int32_t> refs_;
  // Free blocks (never used, or freed), ready to hand out, as runs of consecutive ids: start -> length, and the same
  // runs ordered by length, longest first, then lowest start.
  Runs runs_;
  std::set<std::pair<std::int32_t, std::int32_t>> longest_;  // (-length, start)
  std::int32_t free_blocks_ = 0;
  // Registered blocks: chain hash -> block, and per block its hash, tokens, and place in the LRU order.
  std::unordered_map<std::uint64_t, std::int32_t> by_hash_;
  std::vector<std::uint64_t> hash_of_;
  std::vector<bool> registered_;
  std::vector<std::int32_t> tokens_;                 // block_size per block, of registered blocks
  std::map<std::uint64_t, std::int32_t> evictable_;  // released registered blocks by release time (oldest first)
  std::vector<std::uint64_t> released_at_;
  std::uint64_t clock_ = 0;
  BlockPoolCounts counts_;
};

}  // namespace strata
