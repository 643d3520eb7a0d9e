// A whole file mapped read-only. Its pages are the page cache's own: tensors served from a mapping cost no fresh
// memory and no copy (the checkpoint reader's map path), and ranks on one node mapping the same shard (data-parallel
// replicas) share one copy. Shared ownership, so mapped tensors keep the mapping alive after the reader is gone.
//
// The file must not be truncated or rewritten in place while mapped (pages past a new end of file fault with
// SIGBUS; so does an I/O error under a mapped page): strata writes shards under a temporary name and renames them,
// which leaves existing mappings intact. A file overwritten in place with one of the same size (cp over it, rsync
// --inplace) changes a running job's weights under it: replace checkpoints by renaming. Mapping a file installs a
// SIGBUS handler that, for faults inside a live mapping, prints what happened in the log's format with the rank
// before the process dies of the signal, and passes any other SIGBUS to the handler before it.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

namespace strata {

class FileMapping {
 public:
  // Maps the open file `fd` (named `path` in errors) whole; throws Error(Checkpoint) with the system's reason. The
  // caller keeps `fd`: the mapping holds the file by itself.
  static std::shared_ptr<const FileMapping> map(int fd, const std::string& path);
  ~FileMapping();
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;

  const char* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  FileMapping(std::string path, const char* data, std::size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const char* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace strata
