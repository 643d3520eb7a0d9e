// See block_pool.h.
#include "engine/block_pool.h"

#include <algorithm>
#include <iterator>

#include "runtime/base/error.h"

namespace strata {

BlockPool::BlockPool(std::int32_t blocks, std::int32_t block_size, bool prefix_caching)
    : block_size_(block_size),
      prefix_caching_(prefix_caching),
      refs_(std::size_t(std::max(blocks, 0)), 0),
      hash_of_(refs_.size(), 0),
      registered_(refs_.size(), false),
      tokens_(prefix_caching ? refs_.size() * std::size_t(std::max(block_size, 1)) : 0),
      released_at_(refs_.size(), 0) {
  STRATA_CHECK(blocks >= 1 && block_size >= 1, Internal, "a KV-cache pool of ", blocks, " blocks of ", block_size);
  add_run(0, blocks);
}

void BlockPool::add_run(std::int32_t start, std::int32_t length) {
  runs_.emplace(start, length);
  longest_.emplace(-length, start);
  free_blocks_ += length;
}

void BlockPool::remove_run(Runs::iterator run) {
  longest_.erase({-run->second, run->first});
  free_blocks_ -= run->second;
  runs_.erase(run);
}

// A free block (see allocate), -1 where there is none; it leaves the runs.
std::int32_t BlockPool::take_free(std::int32_t previous) {
  if (runs_.empty()) return -1;
  // The block after `previous` is free only as the start of a run (`previous` itself is held).
  auto run = previous >= 0 ? runs_.find(previous + 1) : runs_.end();
  std::int32_t block = previous + 1;
  if (run == runs_.end()) {
    const auto [negative_length, start] = *longest_.begin();
    run = runs_.find(start);
    block = start == 0 ? 0 : start + -negative_length / 2;
  }
  const auto [start, length] = *run;
  remove_run(run);
  if (block > start) add_run(start, block - start);
  if (block + 1 < start + length) add_run(block + 1, start + length - block - 1);
  return block;
}

// `block` back into the runs, joined with the runs just before and after it.
void BlockPool::give_back(std::int32_t block) {
  std::int32_t start = block, end = block + 1;
  auto after = runs_.find(end);
  if (after != runs_.end()) {
    end += after->second;
    remove_run(after);
  }
  auto before = runs_.lower_bound(block);
  if (before != runs_.begin() && std::prev(before)->first + std::prev(before)->second == block) {
    --before;
    start = before->first;
    remove_run(before);
  }
  add_run(start, end - start);
}

// splitmix64 over the parent and each token: cheap, and every input bit reaches every output bit.
std::uint64_t BlockPool::chain_hash(std::uint64_t parent, std::span<const std::int32_t> tokens) {
  auto mix = [](std::uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  };
  std::uint64_t h = mix(parent ^ 0x5157a7a0c4c3e1d9ull);
  for (std::int32_t t : tokens) h = mix(h ^ std::uint64_t(std::uint32_t(t)));
  return h;
}

void BlockPool::check_block(std::int32_t block, const char* op) const {
  STRATA_CHECK(block >= 0 && block < total(), Internal, "KV-cache pool: ", op, " of block ", block, " (pool of ",
               total(), ")");
}

BlockPool::Prefix BlockPool::acquire_prefix(std::span<const std::int32_t> tokens, std::int64_t max_blocks) {
  Prefix prefix;
  if (!prefix_caching_) return prefix;
  const std::int64_t full = std::min<std::int64_t>(std::int64_t(tokens.size()) / block_size_, max_blocks);
  counts_.prefix_queries += std::max<std::int64_t>(full, 0);
  for (std::int64_t i = 0; i < full; ++i) {
    const auto part = tokens.subspan(std::size_t(i * block_size_), std::size_t(block_size_));
    const std::uint64_t h = chain_hash(prefix.chain, part);
    const auto found = by_hash_.find(h);
    if (found == by_hash_.end()) break;
    const std::int32_t b = found->second;
    if (!std::equal(part.begin(), part.end(), tokens_.begin() + std::int64_t(b) * block_size_)) break;
    retain(b);
    prefix.blocks.push_back(b);
    prefix.chain = h;
    ++counts_.prefix_hits;
  }
  return prefix;
}

std::int32_t BlockPool::allocate(std::int32_t previous) {
  std::int32_t b = take_free(previous);
  if (b < 0) {
    if (evictable_.empty()) return -1;
    b = evictable_.begin()->second;
    evictable_.erase(evictable_.begin());
    forget(b);
    ++counts_.evictions;
  }
  refs_[std::size_t(b)] = 1;
  counts_.peak_used = std::max<std::int64_t>(counts_.peak_used, used());
  return b;
}

void BlockPool::retain(std::int32_t block) {
  check_block(block, "retain");
  if (refs_[std::size_t(block)]++ == 0) {  // a cached block taken back into use
    STRATA_CHECK(registered_[std::size_t(block)], Internal, "KV-cache pool: retain of free block ", block);
    evictable_.erase(released_at_[std::size_t(block)]);
    counts_.peak_used = std::max<std::int64_t>(counts_.peak_used, used());
  }
}

void BlockPool::release(std::int32_t block) {
  check_block(block, "release");
  STRATA_CHECK(refs_[std::size_t(block)] > 0, Internal, "KV-cache pool: release of block ", block,
               " that no sequence holds");
  if (--refs_[std::size_t(block)] > 0) return;
  if (registered_[std::size_t(block)]) {
    released_at_[std::size_t(block)] = ++clock_;
    evictable_.emplace(clock_, block);
  } else {
    give_back(block);
  }
}

std::uint64_t BlockPool::register_full(std::int32_t block, std::uint64_t parent, std::span<const std::int32_t> tokens) {
  check_block(block, "register");
  STRATA_CHECK(std::int64_t(tokens.size()) == block_size_, Internal, "KV-cache pool: registering ", tokens.size(),
               " tokens in a block of ", block_size_);
  const std::uint64_t h = chain_hash(parent, tokens);
  if (!prefix_caching_ || registered_[std::size_t(block)] || by_hash_.count(h)) return h;
  by_hash_.emplace(h, block);
  hash_of_[std::size_t(block)] = h;
  registered_[std::size_t(block)] = true;
  std::copy(tokens.begin(), tokens.end(), tokens_.begin() + std::int64_t(block) * block_size_);
  return h;
}

void BlockPool::forget(std::int32_t block) {
  by_hash_.erase(hash_of_[std::size_t(block)]);
  registered_[std::size_t(block)] = false;
}

}  // namespace strata
