// The strata checkpoint (format version 2, specified in docs/checkpoint-format.md): a directory with
// manifest.json and one HDF5 file per (pipeline stage, tensor-parallel rank). Each rank opens only its own shard.
// Tensors keep their Hugging Face names, hold only the rank's slice, carry their global shape and offset, and are
// stored contiguous and unfiltered with Fletcher32 checksums of their 256 KiB blocks beside them (larger blocks
// for tensors over 1 GiB), verified on every
// read; a rank can then use its weights in place in the page cache (ShardReader::map). Version 1 shards (chunked,
// HDF5's Fletcher32 filter) are still read.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/file_mapping.h"
#include "runtime/base/dtype.h"
#include "runtime/tensor/tensor.h"

namespace strata {

constexpr int kCheckpointFormatVersion = 2;        // what strata writes
constexpr int kOldestCheckpointFormatVersion = 1;  // the oldest it reads

struct ShardInfo {
  std::string file;  // relative to the checkpoint directory
  int pp_rank = 0, tp_rank = 0;
  std::int64_t layer_begin = 0, layer_end = 0;
};

struct Manifest {
  int format_version = kCheckpointFormatVersion;
  nlohmann::json model;  // ModelConfig, Hugging Face names
  int tensor_parallel_size = 1, pipeline_parallel_size = 1;
  DType dtype = DType::F32;  // storage dtype of the weights
  std::vector<ShardInfo> shards;
  nlohmann::json tokenizer;  // {"type": "byte", ...}
  nlohmann::json source;     // where the weights came from (preset + seed, or a converted model)

  // Reads and validates DIR/manifest.json; errors name the file and the field.
  static Manifest read(const std::string& dir);
  void write(const std::string& dir) const;
  const ShardInfo& shard(int pp_rank, int tp_rank) const;
};

std::string manifest_path(const std::string& dir);
std::string shard_file_name(int pp_rank, int tp_rank);  // "model-pp0-tp1.h5"

struct StoredTensor {
  std::string name;
  Shape shape;  // local shape in this shard
  DType dtype = DType::F32;
  Shape global_shape;   // shape of the whole tensor
  Shape global_offset;  // where this slice starts in it
  std::string split;    // "rows" | "cols" | "replicated"
};

// Where a format 2 dataset's bytes are in its shard file, and the Fletcher32 sums of its blocks.
struct ContiguousStorage {
  std::uint64_t offset = 0;  // from the start of the file
  std::size_t bytes = 0;
  std::size_t block = 0;  // bytes per checksum block (the last one shorter)
  std::vector<std::uint32_t> sums;
};

// Stored bytes seen in place in a shard's mapping (ShardReader::map); `data` stays valid while `mapping` lives.
struct MappedBytes {
  const void* data = nullptr;
  std::size_t bytes = 0;
  std::shared_ptr<const FileMapping> mapping;
};

// One shard opened read-only. Move-only; closes the file when destroyed.
class ShardReader {
 public:
  // `map`: format 2 datasets are read through a mapping of the file (and map() serves them in place); false: with
  // pread, so that a file that is short or fails reports the system's error instead of faulting (--no-mmap).
  explicit ShardReader(const std::string& path, bool map = true);
  ~ShardReader();
  ShardReader(ShardReader&&) noexcept;
  ShardReader& operator=(ShardReader&&) noexcept;

  const std::string& path() const { return path_; }
  bool contains(const std::string& name) const;
  // Reads tensor `name`, whose local shape must equal `expected`, into `out` as f32 (converting f16/bf16). Every
  // checksum is verified; a mismatch throws naming the shard and the tensor. Datasets laid out as strata writes them
  // are read on the calling rank's OpenMP threads and verified by io/fletcher32.h: format 2 from the file's mapping,
  // format 1 chunk by chunk with pread. Any other layout goes through H5Dread.
  void read_f32(const std::string& name, const Shape& expected, float* out) const;
  // The same into `out` as `dtype`, which must be F32 or the stored dtype (then the bits are copied as stored).
  void read(const std::string& name, const Shape& expected, DType dtype, void* out) const;
  // Reads part of a stored 1-D or 2-D tensor as f32: along `axis` (0: rows, 1: columns) the stored indices
  // [begin, end), everything along the other axis. The block is written to `out` with a row stride of
  // `out_stride` elements (1-D tensors: contiguous). Format 1: only that hyperslab is read; format 2: the checksum
  // blocks it touches (all of them for a column range).
  void read_region_f32(const std::string& name, int axis, std::int64_t begin, std::int64_t end, float* out,
                       std::int64_t out_stride) const;
  // The tensors `names` (local shapes `expected`) in place in the page cache, every checksum verified, when they
  // are stored as `dtype`, contiguous and checksummed as format 2 writes them, and back to back in this order in
  // the file (gate_proj then up_proj, which the stage keeps stacked); nullopt otherwise (nothing is mapped and the
  // caller reads them instead). A checksum mismatch throws as read does.
  std::optional<MappedBytes> map(const std::vector<std::string>& names, const std::vector<Shape>& expected,
                                 DType dtype) const;
  StoredTensor describe(const std::string& name) const;
  std::vector<std::string> tensor_names() const;
  nlohmann::json attributes() const;  // the file's root attributes
  // How many reads took strata's own parallel path (format 1 chunks or format 2 mapping; for tests).
  std::size_t parallel_reads() const { return parallel_reads_; }

 private:
  std::uint16_t* staging(std::size_t count) const;  // reused buffer for 16-bit reads (no zeroing, no new pages)
  // The parallel path of read_f32; false (nothing read) when the dataset is not laid out as strata writes it.
  bool read_chunks_parallel(long long set, const StoredTensor& t, DType dtype, void* out) const;
  struct Described {
    StoredTensor tensor;
    std::optional<ContiguousStorage> contiguous;  // format 2 datasets
  };
  // HDF5 is asked once per tensor (loading asks about each several times).
  const Described& described(const std::string& name) const;
  // Format 2 (contiguous) datasets, from the mapping.
  void read_contiguous(const Described& d, DType dtype, void* out) const;
  const FileMapping& mapping() const;  // maps the file at first use
  // Blocks [first, last) of a format 2 dataset, returning where block `first` starts: in the mapping, or pread into
  // `into` (room for them) or else into `holder`. Unverified.
  const char* contiguous_blocks(const ContiguousStorage& c, const std::string& name, std::size_t first,
                                std::size_t last, std::vector<char>& holder, char* into = nullptr) const;

  std::string path_;
  long long file_ = -1;  // hid_t, kept opaque so HDF5 headers stay private to io/
  int fd_ = -1;          // the same file for pread from several threads (HDF5 itself is not thread-safe)
  bool map_ = true;
  mutable std::size_t parallel_reads_ = 0;
  mutable std::unique_ptr<std::uint16_t[]> staging_;
  mutable std::size_t staging_count_ = 0;
  mutable std::shared_ptr<const FileMapping> mapping_;
  mutable std::map<std::string, Described> described_;
};

// Writes one shard in format 2.
class ShardWriter {
 public:
  ShardWriter(const std::string& path, const nlohmann::json& root_attributes);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;
  // `data`: f32 values, stored as tensor.dtype (rounded to nearest even).
  void write(const StoredTensor& tensor, const float* data);
  // Writes the tensors with their data back to back in the file, in this order, so that a reader can map them as
  // one block (ShardReader::map; gate_proj and up_proj, which the stage stacks). `stored[i]` holds tensor i's
  // values already in its dtype (f32, or the 16-bit bits).
  void write_adjacent(const std::vector<StoredTensor>& tensors, const std::vector<const void*>& stored);
  void close();  // flushes; throws on failure (the destructor closes silently)

 private:
  std::string path_;
  long long file_ = -1;
};

}  // namespace strata
