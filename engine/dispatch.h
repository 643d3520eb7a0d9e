// Dynamic work sharing across data-parallel replicas: world rank 0 hands prompts out as replicas ask for them,
// instead of a fixed i % dp split, so a replica that drew long prompts (or runs slower) takes fewer and the job ends
// when the work does, not when the unluckiest replica does.
//
//   WorkDispatcher (rank 0): the indices still to run, handed out in order, except that a replica is first given
//     prompts whose start matches the last one it was given (within a look-ahead window), so prompts sharing a
//     system prompt tend to meet that prefix in the same replica's cache. Static mode keeps the old i % dp split
//     (for comparison).
//   RequestSource (a replica's stage-0 ranks): what the scheduler pulls new requests from. Rank 0 takes from the
//     dispatcher directly; other replica leaders ask it over MPI (Tag::Work / Tag::WorkReply), ahead of need; the
//     other tensor-parallel ranks of a replica's first stage get the same indices from their leader
//     (Tag::WorkShare), so every one of them schedules the same requests. Requests are built from indices where they
//     run (prompts are tokenized by the replica that runs them).
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "runtime/base/parallel_layout.h"
#include "runtime/base/watchdog.h"
#include "runtime/comm/communicator.h"

namespace strata {

// One prompt to run: its index in the file, and its line as written (the replica parses and tokenizes it).
struct WorkItem {
  std::int64_t index = 0;
  std::uint64_t line_number = 0;
  std::string line;
  std::uint64_t key = 0;  // prefix_key of the prompt's text (0: none); rank 0 only
};
// The next prompt to hand out, read as a stream; false at the end.
using WorkFeed = std::function<bool(WorkItem&)>;

class WorkDispatcher {
 public:
  // Reads at most a look-ahead window of prompts from `feed` ahead of what it has handed out.
  WorkDispatcher(WorkFeed feed, int replicas, bool static_split);
  // Up to `count` prompts for `replica`, in input order (fewer when the work runs out; none once it has).
  std::vector<WorkItem> take(int replica, int count);
  bool exhausted(int replica);
  std::int64_t handed_to(int replica) const { return handed_[std::size_t(replica)]; }

  // Rank 0, between its steps: answers the work requests that arrived.
  void serve(Communicator& world, const ParallelLayout& layout);

 private:
  void fill(int replica, std::size_t want);
  static constexpr std::size_t kLookAhead = 1024;
  WorkFeed feed_;
  bool fed_ = false;                          // the feed has ended
  std::size_t window_ = 0;                    // items read and not yet handed out
  std::vector<std::deque<WorkItem>> queues_;  // one (dynamic), or one per replica (static)
  std::vector<std::uint64_t> affinity_;       // per replica: the prefix key of the last prompt it was given
  std::vector<std::int64_t> handed_;
  bool static_split_;
  SendQueue replies_{256};
};

// Where a replica's scheduler gets requests. take() returns at once with what is there (wait = false), or waits for
// at least one request or the end of the work (wait = true). Every stage-0 rank of a replica calls it at the same
// points with the same arguments and gets the same requests.
class RequestSource {
 public:
  virtual ~RequestSource() = default;
  virtual std::vector<Request> take(int count, bool wait) = 0;
  virtual bool exhausted() const = 0;
};

using RequestFactory = std::function<Request(const WorkItem& item)>;

// The source of a replica's stage-0 rank: rank 0 (with `dispatcher`), another replica leader, or a tensor-parallel
// peer of the leader. `watchdog` (may be null) is told what the rank waits for.
std::unique_ptr<RequestSource> make_request_source(Communicator& world, const ParallelLayout& layout,
                                                   WorkDispatcher* dispatcher, RequestFactory factory,
                                                   Watchdog* watchdog);

// A fixed list (tests, benchmarks): everything at once.
std::unique_ptr<RequestSource> make_fixed_source(std::vector<Request> requests);

// The prefix key of a prompt text: a hash of its first bytes (0 for a shorter text).
std::uint64_t prefix_key(const std::string& text);

}  // namespace strata
