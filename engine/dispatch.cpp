// See dispatch.h.
#include "engine/dispatch.h"

#include <algorithm>
#include <cstring>

#include "runtime/base/error.h"

namespace strata {
namespace {

// A work reply (and share): int64 exhausted, int64 count, then per prompt int64 index, line number and length, and
// the line's bytes.
std::vector<char> pack_items(const std::vector<WorkItem>& items, bool exhausted) {
  std::vector<char> message;
  auto put = [&](std::int64_t v) {
    const std::size_t at = message.size();
    message.resize(at + sizeof v);
    std::memcpy(message.data() + at, &v, sizeof v);
  };
  put(exhausted ? 1 : 0);
  put(std::int64_t(items.size()));
  for (const WorkItem& item : items) {
    put(item.index);
    put(std::int64_t(item.line_number));
    put(std::int64_t(item.line.size()));
    message.insert(message.end(), item.line.begin(), item.line.end());
  }
  return message;
}

std::vector<WorkItem> unpack_items(const std::vector<char>& message, bool& exhausted) {
  std::size_t at = 0;
  auto get = [&]() {
    std::int64_t v = 0;
    STRATA_CHECK(at + sizeof v <= message.size(), Communication, "truncated work message (", message.size(), " bytes)");
    std::memcpy(&v, message.data() + at, sizeof v);
    at += sizeof v;
    return v;
  };
  exhausted = get() != 0;
  const std::int64_t count = get();
  std::vector<WorkItem> items(std::size_t(std::max<std::int64_t>(count, 0)));
  for (WorkItem& item : items) {
    item.index = get();
    item.line_number = std::uint64_t(get());
    const std::int64_t length = get();
    STRATA_CHECK(length >= 0 && at + std::size_t(length) <= message.size(), Communication, "truncated work message (",
                 message.size(), " bytes)");
    item.line.assign(message.data() + at, std::size_t(length));
    at += std::size_t(length);
  }
  return items;
}

}  // namespace

std::uint64_t prefix_key(const std::string& text) {
  constexpr std::size_t kBytes = 64;  // about a system prompt's first sentence
  if (text.size() < kBytes) return 0;
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (std::size_t i = 0; i < kBytes; ++i) h = (h ^ std::uint8_t(text[i])) * 1099511628211ull;
  return h | 1;  // never 0
}

// ------------------------------------------------------------------------------------------------ dispatcher

WorkDispatcher::WorkDispatcher(WorkFeed feed, int replicas, bool static_split)
    : feed_(std::move(feed)),
      queues_(static_split ? std::size_t(replicas) : 1),
      affinity_(std::size_t(replicas), 0),
      handed_(std::size_t(replicas), 0),
      static_split_(static_split) {
  STRATA_CHECK(replicas >= 1, Internal, "work dispatcher for ", replicas, " replicas");
}

// Reads prompts until the window is full (static split: until `replica` has `want`, or the file ends).
void WorkDispatcher::fill(int replica, std::size_t want) {
  const int replicas = int(affinity_.size());
  auto& mine = queues_[static_split_ ? std::size_t(replica) : 0];
  while (!fed_ && (window_ < kLookAhead || (static_split_ && mine.size() < want))) {
    WorkItem item;
    if (!feed_(item)) {
      fed_ = true;
      break;
    }
    queues_[static_split_ ? std::size_t(item.index % replicas) : 0].push_back(std::move(item));
    ++window_;
  }
}

bool WorkDispatcher::exhausted(int replica) {
  fill(replica, 1);
  return queues_[static_split_ ? std::size_t(replica) : 0].empty() && fed_;
}

std::vector<WorkItem> WorkDispatcher::take(int replica, int count) {
  fill(replica, std::size_t(std::max(count, 0)));
  auto& queue = queues_[static_split_ ? std::size_t(replica) : 0];
  std::vector<WorkItem> out;
  std::uint64_t& affinity = affinity_[std::size_t(replica)];
  // The oldest prompt always goes (so none waits behind prompts of another prefix, and the writer's reorder buffer
  // stays small), then prompts starting like the replica's last one (within the look-ahead), then the oldest.
  if (count > 0 && !queue.empty() && !static_split_) {
    if (affinity == 0) affinity = queue.front().key;
    out.push_back(std::move(queue.front()));
    queue.pop_front();
  }
  if (affinity != 0 && !static_split_) {
    std::vector<std::size_t> matching;
    for (std::size_t i = 0; i < queue.size() && int(out.size() + matching.size()) < count; ++i)
      if (queue[i].key == affinity) matching.push_back(i);
    for (std::size_t i : matching) out.push_back(std::move(queue[i]));
    for (auto it = matching.rbegin(); it != matching.rend(); ++it) queue.erase(queue.begin() + std::int64_t(*it));
  }
  while (int(out.size()) < count && !queue.empty()) {
    affinity = queue.front().key;
    out.push_back(std::move(queue.front()));
    queue.pop_front();
  }
  std::sort(out.begin(), out.end(), [](const WorkItem& a, const WorkItem& b) { return a.index < b.index; });
  window_ -= out.size();
  handed_[std::size_t(replica)] += std::int64_t(out.size());
  return out;
}

void WorkDispatcher::serve(Communicator& world, const ParallelLayout& layout) {
  std::vector<char> message;
  int src = 0;
  while (world.try_recv_any(Tag::Work, message, src)) {
    std::int32_t count = 0;
    STRATA_CHECK(message.size() == sizeof count, Communication, "malformed work request from rank ", src);
    std::memcpy(&count, message.data(), sizeof count);
    const int replica = layout.replica_of(src);
    const std::vector<WorkItem> items = take(replica, count);
    replies_.push(world.isend(pack_items(items, exhausted(replica)), src, Tag::WorkReply));
  }
}

// ------------------------------------------------------------------------------------------------ sources

namespace {

class FixedSource final : public RequestSource {
 public:
  explicit FixedSource(std::vector<Request> requests) : requests_(std::move(requests)) {}
  std::vector<Request> take(int, bool) override {
    done_ = true;
    return std::move(requests_);
  }
  bool exhausted() const override { return done_; }

 private:
  std::vector<Request> requests_;
  bool done_ = false;
};

// A replica's stage-0 ranks. The leader gets indices (from the dispatcher on rank 0, or by asking rank 0) and passes
// them to its tensor-parallel peers; the peers receive them. All build the requests with the factory.
class ReplicaSource final : public RequestSource {
 public:
  ReplicaSource(Communicator& world, const ParallelLayout& layout, WorkDispatcher* dispatcher, RequestFactory factory,
                Watchdog* watchdog)
      : world_(world), layout_(layout), dispatcher_(dispatcher), factory_(std::move(factory)), watchdog_(watchdog) {
    leader_ = layout.rank_of(layout.dp_rank(), 0, 0);
    for (int r : layout.tp_group())
      if (r != layout.world_rank()) peers_.push_back(r);
    waiting_for_leader_ = cat("waiting for prompt indices from rank ", leader_, " (the first rank of this replica)");
  }

  std::vector<Request> take(int count, bool wait) override {
    std::vector<WorkItem> items;
    if (layout_.world_rank() == leader_) {
      items = leader_take(count, wait);
      for (int peer : peers_) shares_.push(world_.isend(pack_items(items, exhausted_), peer, Tag::WorkShare));
    } else {
      beat(waiting_for_leader_.c_str());
      items = unpack_items(world_.recv(leader_, Tag::WorkShare), exhausted_);
    }
    std::vector<Request> requests;
    requests.reserve(items.size());
    for (const WorkItem& item : items) requests.push_back(factory_(item));
    return requests;
  }
  bool exhausted() const override { return exhausted_; }

 private:
  std::vector<WorkItem> leader_take(int count, bool wait) {
    if (dispatcher_) {  // rank 0: the dispatcher is here
      std::vector<WorkItem> items = dispatcher_->take(layout_.dp_rank(), count);
      exhausted_ = dispatcher_->exhausted(layout_.dp_rank());
      return items;
    }
    if (!asked_) {  // one request outstanding at a time, sent ahead of need
      std::int32_t want = count;
      std::vector<char> message(sizeof want);
      std::memcpy(message.data(), &want, sizeof want);
      asks_.push(world_.isend(std::move(message), 0, Tag::Work));
      asked_ = true;
    }
    std::vector<char> reply;
    int src = 0;
    if (wait) {
      beat("waiting for prompts from rank 0 (it hands them out between its own steps)");
      reply = world_.recv(0, Tag::WorkReply);
    } else if (!world_.try_recv_any(Tag::WorkReply, reply, src)) {
      return {};
    }
    asked_ = false;
    return unpack_items(reply, exhausted_);
  }
  void beat(const char* activity) {  // the watchdog keeps the pointer: only strings that live as long as the source
    if (watchdog_) watchdog_->beat(activity);
  }

  Communicator& world_;
  const ParallelLayout& layout_;
  WorkDispatcher* dispatcher_;
  RequestFactory factory_;
  Watchdog* watchdog_;
  int leader_ = 0;
  std::vector<int> peers_;
  bool exhausted_ = false, asked_ = false;
  std::string waiting_for_leader_;
  SendQueue asks_{4}, shares_{64};
};

}  // namespace

std::unique_ptr<RequestSource> make_request_source(Communicator& world, const ParallelLayout& layout,
                                                   WorkDispatcher* dispatcher, RequestFactory factory,
                                                   Watchdog* watchdog) {
  return std::make_unique<ReplicaSource>(world, layout, dispatcher, std::move(factory), watchdog);
}

std::unique_ptr<RequestSource> make_fixed_source(std::vector<Request> requests) {
  return std::make_unique<FixedSource>(std::move(requests));
}

}  // namespace strata
