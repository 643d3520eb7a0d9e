// Checkpoint manifest (JSON) and shard files (HDF5; format 2: contiguous datasets with Fletcher32 sums of their
// blocks as attributes, format 1: chunked with HDF5's Fletcher32 filter).
#include "io/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>

#include "io/fletcher32.h"
#include "io/hdf5_handle.h"
#include "runtime/base/error.h"

namespace strata {
namespace fs = std::filesystem;

std::string manifest_path(const std::string& dir) { return (fs::path(dir) / "manifest.json").string(); }
std::string shard_file_name(int pp_rank, int tp_rank) { return cat("model-pp", pp_rank, "-tp", tp_rank, ".h5"); }

// ---------------------------------------------------------------------------------------------------- manifest

Manifest Manifest::read(const std::string& dir) {
  const std::string path = manifest_path(dir);
  STRATA_CHECK(fs::is_directory(dir), Checkpoint, "checkpoint directory '", dir, "' does not exist");
  std::ifstream in(path);
  STRATA_CHECK(in, Checkpoint, "cannot open ", path, ": ", std::strerror(errno), " (is '", dir,
               "' a strata checkpoint? convert or init one)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Checkpoint, cat(path, ": not valid JSON: ", e.what()));
  }
  auto field = [&](const char* key) -> const nlohmann::json& {
    STRATA_CHECK(j.contains(key), Checkpoint, path, ": missing field '", key, "'");
    return j.at(key);
  };
  Manifest m;
  try {
    STRATA_CHECK(field("format").get<std::string>() == "strata-checkpoint", Checkpoint, path,
                 ": 'format' is not \"strata-checkpoint\"");
    m.format_version = field("format_version").get<int>();
    STRATA_CHECK(m.format_version >= kOldestCheckpointFormatVersion && m.format_version <= kCheckpointFormatVersion,
                 Checkpoint, path, ": format_version ", m.format_version,
                 " is not supported (this strata reads versions ", kOldestCheckpointFormatVersion, " to ",
                 kCheckpointFormatVersion, ")");
    m.model = field("model");
    const auto& layout = field("layout");
    m.tensor_parallel_size = layout.at("tensor_parallel_size").get<int>();
    m.pipeline_parallel_size = layout.at("pipeline_parallel_size").get<int>();
    m.dtype = parse_dtype(field("dtype").get<std::string>());
    for (const auto& s : field("shards")) {
      ShardInfo info;
      info.file = s.at("file").get<std::string>();
      info.pp_rank = s.at("pp_rank").get<int>();
      info.tp_rank = s.at("tp_rank").get<int>();
      info.layer_begin = s.at("layers").at(0).get<std::int64_t>();
      info.layer_end = s.at("layers").at(1).get<std::int64_t>();
      m.shards.push_back(info);
    }
    m.tokenizer = field("tokenizer");
    m.source = j.value("source", nlohmann::json::object());
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Checkpoint, cat(path, ": malformed manifest: ", e.what()));
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::Checkpoint) throw;
    throw Error(ErrorKind::Checkpoint, cat(path, ": ", e.what()));
  }
  STRATA_CHECK(int(m.shards.size()) == m.tensor_parallel_size * m.pipeline_parallel_size, Checkpoint, path, ": ",
               m.shards.size(), " shards listed for tensor_parallel_size ", m.tensor_parallel_size,
               " x pipeline_parallel_size ", m.pipeline_parallel_size);
  return m;
}

void Manifest::write(const std::string& dir) const {
  nlohmann::json shards_json = nlohmann::json::array();
  for (const auto& s : shards)
    shards_json.push_back(
        {{"file", s.file}, {"pp_rank", s.pp_rank}, {"tp_rank", s.tp_rank}, {"layers", {s.layer_begin, s.layer_end}}});
  nlohmann::json j = {
      {"format", "strata-checkpoint"},
      {"format_version", format_version},
      {"model", model},
      {"layout", {{"tensor_parallel_size", tensor_parallel_size}, {"pipeline_parallel_size", pipeline_parallel_size}}},
      {"dtype", dtype_name(dtype)},
      {"shards", shards_json},
      {"tokenizer", tokenizer},
      {"source", source}};
  const std::string path = manifest_path(dir), temp = path + ".tmp";
  {
    std::ofstream out(temp);
    STRATA_CHECK(out, Io, "cannot write ", temp);
    out << j.dump(2) << "\n";
    STRATA_CHECK(out.flush(), Io, "cannot write ", temp);
  }
  fs::rename(temp, path);  // the manifest appears only once complete
}

const ShardInfo& Manifest::shard(int pp_rank, int tp_rank) const {
  for (const auto& s : shards)
    if (s.pp_rank == pp_rank && s.tp_rank == tp_rank) return s;
  throw Error(ErrorKind::Checkpoint, cat("manifest lists no shard for pp rank ", pp_rank, " tp rank ", tp_rank));
}

// ---------------------------------------------------------------------------------------------------- attributes
namespace {

void write_attr_ints(hid_t object, const char* name, const std::vector<std::int64_t>& values, bool scalar) {
  const hsize_t count = values.size();
  h5::Handle space = scalar ? h5::dataspace(H5Screate(H5S_SCALAR), "attribute space")
                            : h5::dataspace(H5Screate_simple(1, &count, nullptr), "attribute space");
  h5::Handle attr = h5::attribute(H5Acreate2(object, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                                  cat("create attribute ", name));
  STRATA_H5_CHECK(H5Awrite(attr.get(), H5T_NATIVE_INT64, values.data()));
}

void write_attr_string(hid_t object, const char* name, const std::string& value) {
  h5::Handle type = h5::datatype(H5Tcopy(H5T_C_S1), "string type");
  STRATA_H5_CHECK(H5Tset_size(type.get(), std::max<std::size_t>(1, value.size())));
  h5::Handle space = h5::dataspace(H5Screate(H5S_SCALAR), "attribute space");
  h5::Handle attr = h5::attribute(H5Acreate2(object, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                                  cat("create attribute ", name));
  STRATA_H5_CHECK(H5Awrite(attr.get(), type.get(), value.empty() ? " " : value.data()));
}

nlohmann::json read_attr(hid_t object, const char* name) {
  h5::Handle attr = h5::attribute(H5Aopen(object, name, H5P_DEFAULT), cat("open attribute ", name));
  h5::Handle type = h5::datatype(H5Aget_type(attr.get()), "attribute type");
  h5::Handle space = h5::dataspace(H5Aget_space(attr.get()), "attribute space");
  const hssize_t count = H5Sget_simple_extent_npoints(space.get());
  STRATA_CHECK(count >= 1 && count <= 64, Checkpoint, "attribute '", name, "' has ", count,
               " elements (expected a scalar or a short array)");
  if (H5Tget_class(type.get()) == H5T_STRING) {
    STRATA_CHECK(count == 1, Checkpoint, "attribute '", name, "' is an array of strings, expected one string");
    if (H5Tis_variable_str(type.get()) > 0) {  // as h5py writes str attributes
      h5::Handle memtype = h5::datatype(H5Tcopy(H5T_C_S1), "string type");
      STRATA_H5_CHECK(H5Tset_size(memtype.get(), H5T_VARIABLE));
      STRATA_H5_CHECK(H5Tset_cset(memtype.get(), H5Tget_cset(type.get())));  // h5py writes UTF-8
      char* text = nullptr;
      STRATA_H5_CHECK(H5Aread(attr.get(), memtype.get(), &text));
      std::string value = text ? text : "";
      H5free_memory(text);
      return value;
    }
    std::string value(H5Tget_size(type.get()), '\0');
    STRATA_H5_CHECK(H5Aread(attr.get(), type.get(), value.data()));
    return value.substr(0, value.find('\0'));
  }
  STRATA_CHECK(H5Tget_class(type.get()) == H5T_INTEGER, Checkpoint, "attribute '", name, "' is not an integer");
  std::vector<std::int64_t> values(static_cast<std::size_t>(count));
  STRATA_H5_CHECK(H5Aread(attr.get(), H5T_NATIVE_INT64, values.data()));
  if (H5Sget_simple_extent_type(space.get()) == H5S_SCALAR) return values[0];
  return values;
}

// read_attr with the shard and tensor named in any error.
nlohmann::json attr_at(hid_t object, const char* name, const std::string& where) {
  try {
    return read_attr(object, name);
  } catch (const Error& e) {
    throw Error(ErrorKind::Checkpoint, cat(where, ": ", e.what()));
  }
}

Shape ints_attr(hid_t object, const char* name, const std::string& where) {
  STRATA_CHECK(H5Aexists(object, name) > 0, Checkpoint, where, ": missing attribute '", name, "'");
  const nlohmann::json value = attr_at(object, name, where);
  STRATA_CHECK(value.is_array(), Checkpoint, where, ": attribute '", name, "' must be an integer array");
  STRATA_CHECK(value.size() <= Shape::kMaxDims, Checkpoint, where, ": attribute '", name, "' has ", value.size(),
               " dimensions (at most ", Shape::kMaxDims, ")");
  return value.get<Shape>();
}

// HDF5 float types strata stores: IEEE f32, IEEE half, and bfloat16 (1 sign, 8 exponent, 7 mantissa bits).
h5::Handle file_type_of(DType dtype) {
  if (dtype == DType::F32) return h5::datatype(H5Tcopy(H5T_IEEE_F32LE), "f32 type");
  h5::Handle type = h5::datatype(H5Tcopy(H5T_IEEE_F32LE), "16-bit float type");
  const bool bf16 = dtype == DType::BF16;
  STRATA_H5_CHECK(H5Tset_fields(type.get(), 15, bf16 ? 7 : 10, bf16 ? 8 : 5, 0, bf16 ? 7 : 10));
  STRATA_H5_CHECK(H5Tset_size(type.get(), 2));
  STRATA_H5_CHECK(H5Tset_ebias(type.get(), bf16 ? 127 : 15));
  return type;
}

DType dtype_of_type(hid_t type, const std::string& where) {
  STRATA_CHECK(H5Tget_class(type) == H5T_FLOAT, Checkpoint, where, ": not a floating-point dataset");
  size_t spos, epos, esize, mpos, msize;
  STRATA_H5_CHECK(H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize));
  const size_t size = H5Tget_size(type);
  if (size == 4 && esize == 8 && msize == 23) return DType::F32;
  if (size == 2 && esize == 5 && msize == 10) return DType::F16;
  if (size == 2 && esize == 8 && msize == 7) return DType::BF16;
  throw Error(ErrorKind::Checkpoint, cat(where, ": unsupported float layout (", size, " bytes, ", esize,
                                         " exponent bits, ", msize, " mantissa bits)"));
}

// H5Dread with the failure named: a Fletcher32 mismatch is reported as corruption of that tensor in that shard.
void read_dataset(hid_t set, hid_t memory_type, hid_t memory_space, hid_t file_space, void* out,
                  const std::string& path, const std::string& name) {
  try {
    STRATA_H5_CHECK(H5Dread(set, memory_type, memory_space, file_space, H5P_DEFAULT, out));
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.find("Fletcher32") != std::string::npos || what.find("checksum") != std::string::npos)
      throw Error(ErrorKind::Checkpoint, cat("checksum mismatch: shard ", path, ", tensor ", name,
                                             " is corrupt (Fletcher32 check failed); re-create or re-copy the shard"));
    throw Error(ErrorKind::Checkpoint, cat("cannot read shard ", path, ", tensor ", name, ": ", what));
  }
}

// ---------------------------------------------------------------------------------------------------- parallel read

// Where HDF5 stored one chunk of a dataset chunked along rows only: its first row, file address and stored size.
struct StoredChunk {
  std::int64_t first_row = 0;
  haddr_t address = 0;
  hsize_t size = 0;
};

struct ChunkLayout {
  std::int64_t chunk_rows = 0;
  std::size_t row_bytes = 0;  // stored bytes per row (all dimensions after the first)
  std::vector<StoredChunk> chunks;
};

// The chunks of `set` when it is laid out as ShardWriter writes it: little-endian, chunked along the first dimension
// only, Fletcher32 the only filter and applied to every chunk, every chunk allocated and holding chunk bytes + the
// 4-byte checksum. Metadata only (no data is read). Anything else: nullopt, and the caller uses H5Dread.
std::optional<ChunkLayout> strata_chunk_layout(hid_t set, const StoredTensor& t, const std::string& where) {
  const std::size_t rank = t.shape.size();
  if (rank == 0 || t.shape[0] <= 0) return std::nullopt;
  h5::Handle type = h5::datatype(H5Dget_type(set), where);
  if (H5Tget_order(type.get()) != H5T_ORDER_LE) return std::nullopt;
  h5::Handle dcpl = h5::plist(H5Dget_create_plist(set), where);
  if (H5Pget_layout(dcpl.get()) != H5D_CHUNKED || H5Pget_nfilters(dcpl.get()) != 1) return std::nullopt;
  unsigned flags = 0, config = 0;
  std::size_t values = 0;
  if (H5Pget_filter2(dcpl.get(), 0, &flags, &values, nullptr, 0, nullptr, &config) != H5Z_FILTER_FLETCHER32)
    return std::nullopt;
  std::vector<hsize_t> chunk(rank);
  if (H5Pget_chunk(dcpl.get(), int(rank), chunk.data()) != int(rank)) return std::nullopt;
  ChunkLayout layout;
  layout.chunk_rows = std::int64_t(chunk[0]);
  layout.row_bytes = dtype_size(t.dtype);
  for (std::size_t d = 1; d < rank; ++d) {
    if (std::int64_t(chunk[d]) != t.shape[d]) return std::nullopt;
    layout.row_bytes *= std::size_t(t.shape[d]);
  }
  if (layout.chunk_rows <= 0 || layout.row_bytes == 0) return std::nullopt;
  h5::Handle space = h5::dataspace(H5Dget_space(set), where);
  hsize_t count = 0;
  STRATA_H5_CHECK(H5Dget_num_chunks(set, space.get(), &count));
  if (std::int64_t(count) != (t.shape[0] + layout.chunk_rows - 1) / layout.chunk_rows) return std::nullopt;
  const hsize_t stored_size = hsize_t(layout.chunk_rows) * layout.row_bytes + 4;  // edge chunks are stored whole
  std::vector<hsize_t> offset(rank);
  for (hsize_t i = 0; i < count; ++i) {
    unsigned mask = 0;
    StoredChunk c;
    STRATA_H5_CHECK(H5Dget_chunk_info(set, space.get(), i, offset.data(), &mask, &c.address, &c.size));
    if (mask != 0 || c.address == HADDR_UNDEF || c.size != stored_size) return std::nullopt;
    if (std::any_of(offset.begin() + 1, offset.end(), [](hsize_t o) { return o != 0; })) return std::nullopt;
    c.first_row = std::int64_t(offset[0]);
    layout.chunks.push_back(c);
  }
  return layout;
}

// pread of exactly `bytes` bytes (retrying short reads); the errno text on failure, empty on success.
std::string pread_all(int fd, char* dest, std::size_t bytes, off_t at) {
  while (bytes > 0) {
    const ssize_t got = ::pread(fd, dest, bytes, at);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return got < 0 ? std::strerror(errno) : std::string("unexpected end of file");
    dest += got;
    bytes -= std::size_t(got);
    at += got;
  }
  return {};
}

// ---------------------------------------------------------------------------------------------------- format 2

// Format 2 stores each dataset contiguous and unfiltered, with the Fletcher32 sums of its consecutive blocks of
// `fletcher32_block_bytes` bytes (the last one shorter) in the uint32 attribute `fletcher32`. Unlike HDF5's filter
// this leaves a tensor's bytes whole in the file, so a rank can use them in place from the page cache.
constexpr const char* kBlockBytesAttribute = "fletcher32_block_bytes";
constexpr const char* kBlockSumsAttribute = "fletcher32";
constexpr std::size_t kDataAlignment = 64;  // every dataset's data starts on a cache line (AVX-512 loads)
// A quantized tensor (llama.cpp's q8_0 / q4_0 blocks) is a 2-D dataset of bytes, [rows, bytes of a row's blocks],
// with this attribute naming the block format; global_shape and global_offset count weights, as for the others.
constexpr const char* kQuantizationAttribute = "quantization";

// 256 KiB blocks (enough of them in a few-MB tensor to verify it on several threads at once), larger for tensors
// over 1 GiB so that the sums stay a small attribute (<= 4096 of them).
std::size_t checksum_block_bytes(std::size_t bytes) {
  std::size_t block = std::size_t(1) << 18;
  while (block * 4096 < bytes) block *= 2;
  return block;
}

std::vector<std::uint32_t> block_checksums(const void* data, std::size_t bytes, std::size_t block) {
  std::vector<std::uint32_t> sums((bytes + block - 1) / block);
  const char* p = static_cast<const char*>(data);
  for (std::size_t b = 0; b < sums.size(); ++b) sums[b] = fletcher32(p + b * block, std::min(block, bytes - b * block));
  return sums;
}

void write_attr_u32s(hid_t object, const char* name, const std::vector<std::uint32_t>& values) {
  const hsize_t count = values.size();
  h5::Handle space = h5::dataspace(H5Screate_simple(1, &count, nullptr), "attribute space");
  h5::Handle attr = h5::attribute(H5Acreate2(object, name, H5T_STD_U32LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                                  cat("create attribute ", name));
  STRATA_H5_CHECK(H5Awrite(attr.get(), H5T_NATIVE_UINT32, values.data()));
}

std::vector<std::uint32_t> read_attr_u32s(hid_t object, const char* name, const std::string& where) {
  h5::Handle attr = h5::attribute(H5Aopen(object, name, H5P_DEFAULT), cat(where, ": attribute ", name));
  h5::Handle space = h5::dataspace(H5Aget_space(attr.get()), cat(where, ": attribute ", name));
  const hssize_t count = H5Sget_simple_extent_npoints(space.get());
  STRATA_CHECK(count >= 1, Checkpoint, where, ": attribute '", name, "' is empty");
  std::vector<std::uint32_t> values(static_cast<std::size_t>(count));
  STRATA_H5_CHECK(H5Aread(attr.get(), H5T_NATIVE_UINT32, values.data()));
  return values;
}

// The layout of `set` when it is stored as ShardWriter writes format 2: little-endian, contiguous, unfiltered,
// allocated, with block sums. Anything else: nullopt (format 1 chunks, or written by another tool). Sums that do
// not fit the data throw: the shard's metadata is damaged.
std::optional<ContiguousStorage> strata_contiguous_layout(hid_t set, const StoredTensor& t, const std::string& where) {
  h5::Handle type = h5::datatype(H5Dget_type(set), where);
  if (H5Tget_order(type.get()) != H5T_ORDER_LE) return std::nullopt;
  h5::Handle dcpl = h5::plist(H5Dget_create_plist(set), where);
  if (H5Pget_layout(dcpl.get()) != H5D_CONTIGUOUS || H5Pget_nfilters(dcpl.get()) != 0) return std::nullopt;
  if (H5Aexists(set, kBlockBytesAttribute) <= 0 || H5Aexists(set, kBlockSumsAttribute) <= 0) return std::nullopt;
  const haddr_t address = H5Dget_offset(set);
  ContiguousStorage c;
  c.bytes = dtype_bytes(t.dtype, shape_numel(t.shape));
  STRATA_CHECK(address != HADDR_UNDEF && H5Dget_storage_size(set) == c.bytes, Checkpoint, where, ": data not stored (",
               H5Dget_storage_size(set), " of ", c.bytes, " bytes allocated)");
  c.offset = address;  // from the start of the file, a user block included
  const nlohmann::json block = attr_at(set, kBlockBytesAttribute, where);
  STRATA_CHECK(block.is_number_integer() && block.get<std::int64_t>() > 0 && block.get<std::int64_t>() % 4 == 0,
               Checkpoint, where, ": attribute '", kBlockBytesAttribute, "' must be a positive multiple of 4");
  c.block = block.get<std::size_t>();
  c.sums = read_attr_u32s(set, kBlockSumsAttribute, where);
  STRATA_CHECK(c.sums.size() == (c.bytes + c.block - 1) / c.block, Checkpoint, where, ": ", c.sums.size(),
               " block checksums for ", c.bytes, " bytes in blocks of ", c.block);
  return c;
}

// Where a format 2 dataset's bytes are in `file`; throws when the file ends before them (a truncated shard).
const char* mapped_data(const FileMapping& file, const ContiguousStorage& c, const std::string& name) {
  STRATA_CHECK(c.offset + c.bytes <= file.size(), Checkpoint, "shard ", file.path(), " is truncated: tensor ", name,
               " is stored at bytes ", c.offset, "-", c.offset + c.bytes - 1, " of a ", file.size(), "-byte file");
  return file.data() + c.offset;
}

// Verifies blocks [first, last) of a contiguous dataset, `data` pointing at block `first`, on the rank's OpenMP
// threads. Each verified block is handed to `use(begin, end)` (byte offsets in the tensor) on the thread that checked
// it, while it is still in that core's cache. The first bad block throws, naming the shard, the tensor and the bytes.
template <class Use>
void verify_blocks(const char* data, const ContiguousStorage& c, std::size_t first, std::size_t last,
                   const std::string& path, const std::string& name, const Use& use) {
  std::atomic<std::size_t> bad{SIZE_MAX};
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t b = std::int64_t(first); b < std::int64_t(last); ++b) {
    const std::size_t begin = std::size_t(b) * c.block, end = std::min(c.bytes, begin + c.block);
    if (fletcher32(data + (begin - first * c.block), end - begin) != c.sums[std::size_t(b)]) {
      for (std::size_t seen = bad; std::size_t(b) < seen && !bad.compare_exchange_weak(seen, std::size_t(b));) {
      }
      continue;
    }
    use(begin, end);
  }
  if (bad != SIZE_MAX) {
    const std::size_t begin = bad * c.block;
    throw Error(
        ErrorKind::Checkpoint,
        cat("checksum mismatch: shard ", path, ", tensor ", name, " is corrupt (Fletcher32 check failed for bytes ",
            begin, "-", std::min(c.bytes, begin + c.block) - 1, " of the tensor); re-create or re-copy the shard"));
  }
}

herr_t collect_attribute_name(hid_t, const char* name, const H5A_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->push_back(name);
  return 0;
}

herr_t collect_name(hid_t, const char* name, const H5L_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->push_back(name);
  return 0;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------- reader

ShardReader::ShardReader(const std::string& path, bool map) : path_(path), map_(map) {
  h5::silence_library_errors();
  STRATA_CHECK(fs::exists(path), Checkpoint, "shard ", path, " is missing");
  h5::Handle file = h5::file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT),
                             cat("cannot open shard ", path, " (not an HDF5 file, or truncated)"));
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  STRATA_CHECK(fd_ >= 0, Checkpoint, "cannot open shard ", path, ": ", std::strerror(errno));
  file_ = file.release();  // both closed in the destructor
}

const FileMapping& ShardReader::mapping() const {
  if (!mapping_) mapping_ = FileMapping::map(fd_, path_);  // the file opened with HDF5's, whatever the path names now
  return *mapping_;
}

ShardReader::~ShardReader() {
  if (file_ >= 0) H5Fclose(file_);
  if (fd_ >= 0) ::close(fd_);
}
ShardReader::ShardReader(ShardReader&& other) noexcept
    : path_(std::move(other.path_)),
      file_(std::exchange(other.file_, -1)),
      fd_(std::exchange(other.fd_, -1)),
      map_(other.map_),
      parallel_reads_(std::exchange(other.parallel_reads_, 0)),
      staging_(std::move(other.staging_)),
      staging_count_(std::exchange(other.staging_count_, 0)),
      mapping_(std::move(other.mapping_)),
      described_(std::move(other.described_)) {}
ShardReader& ShardReader::operator=(ShardReader&& other) noexcept {
  std::swap(path_, other.path_);
  std::swap(file_, other.file_);
  std::swap(fd_, other.fd_);
  std::swap(parallel_reads_, other.parallel_reads_);
  std::swap(staging_, other.staging_);
  std::swap(staging_count_, other.staging_count_);
  std::swap(mapping_, other.mapping_);
  std::swap(described_, other.described_);
  std::swap(map_, other.map_);
  return *this;
}

bool ShardReader::contains(const std::string& name) const { return H5Lexists(file_, name.c_str(), H5P_DEFAULT) > 0; }

std::vector<std::string> ShardReader::tensor_names() const {
  std::vector<std::string> names;
  hsize_t index = 0;
  STRATA_H5_CHECK(H5Literate(file_, H5_INDEX_NAME, H5_ITER_INC, &index, collect_name, &names));
  return names;
}

nlohmann::json ShardReader::attributes() const {
  std::vector<std::string> names;
  hsize_t index = 0;
  STRATA_H5_CHECK(H5Aiterate2(file_, H5_INDEX_NAME, H5_ITER_INC, &index, collect_attribute_name, &names));
  nlohmann::json attrs = nlohmann::json::object();
  for (const auto& name : names) attrs[name] = read_attr(file_, name.c_str());
  return attrs;
}

StoredTensor ShardReader::describe(const std::string& name) const { return described(name).tensor; }

const ShardReader::Described& ShardReader::described(const std::string& name) const {
  if (const auto it = described_.find(name); it != described_.end()) return it->second;
  const std::string where = cat("shard ", path_, ": tensor ", name);
  STRATA_CHECK(contains(name), Checkpoint, "shard ", path_, " has no tensor ", name);
  h5::Handle set = h5::dataset(H5Dopen2(file_, name.c_str(), H5P_DEFAULT), where);
  h5::Handle type = h5::datatype(H5Dget_type(set.get()), where);
  h5::Handle space = h5::dataspace(H5Dget_space(set.get()), where);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  STRATA_CHECK(rank >= 0 && std::size_t(rank) <= Shape::kMaxDims, Checkpoint, where, ": ", rank,
               " dimensions (at most ", Shape::kMaxDims, ")");
  std::vector<hsize_t> dims(static_cast<std::size_t>(std::max(rank, 0)));
  STRATA_H5_CHECK(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr));
  Described d;
  StoredTensor& t = d.tensor;
  t.name = name;
  t.shape.assign(dims.begin(), dims.end());
  if (H5Aexists(set.get(), kQuantizationAttribute) > 0) {  // bytes [rows, row bytes] of blocks: logical [rows, cols]
    const nlohmann::json format = attr_at(set.get(), kQuantizationAttribute, where);
    STRATA_CHECK(format.is_string() && (format == "q8_0" || format == "q4_0"), Checkpoint, where, ": attribute '",
                 kQuantizationAttribute, "' is ", format.dump(), " (q8_0 and q4_0 are supported)");
    t.dtype = parse_dtype(format.get<std::string>());
    const std::size_t block = dtype_bytes(t.dtype, 32);
    STRATA_CHECK(H5Tget_class(type.get()) == H5T_INTEGER && H5Tget_size(type.get()) == 1 && t.shape.size() == 2 &&
                     t.shape[1] % std::int64_t(block) == 0,
                 Checkpoint, where, ": a ", format.get<std::string>(), " tensor must be a 2-D byte dataset of whole ",
                 block, "-byte blocks per row (got ", shape_string(t.shape), ")");
    t.shape[1] = t.shape[1] / std::int64_t(block) * 32;
  } else {
    t.dtype = dtype_of_type(type.get(), where);
  }
  t.global_shape = ints_attr(set.get(), "global_shape", where);
  t.global_offset = ints_attr(set.get(), "global_offset", where);
  const nlohmann::json split = H5Aexists(set.get(), "split") > 0 ? attr_at(set.get(), "split", where) : "";
  STRATA_CHECK(split.is_string(), Checkpoint, where, ": attribute 'split' must be a string");
  t.split = split.get<std::string>();
  d.contiguous = strata_contiguous_layout(set.get(), t, where);
  return described_.emplace(name, std::move(d)).first->second;
}

std::uint16_t* ShardReader::staging(std::size_t count) const {
  if (count > staging_count_) {
    staging_.reset(new std::uint16_t[count]);  // default-initialised: no zeroing pass
    staging_count_ = count;
  }
  return staging_.get();
}

void ShardReader::read_f32(const std::string& name, const Shape& expected, float* out) const {
  read(name, expected, DType::F32, out);
}

void ShardReader::read(const std::string& name, const Shape& expected, DType dtype, void* out) const {
  const Described& d = described(name);
  const StoredTensor& t = d.tensor;
  STRATA_CHECK(t.shape == expected, Checkpoint, "shard ", path_, ": tensor ", name, " has shape ",
               shape_string(t.shape), ", expected ", shape_string(expected));
  STRATA_CHECK(dtype == DType::F32 || dtype == t.dtype, Internal, "shard ", path_, ": tensor ", name, " is stored ",
               dtype_name(t.dtype), " and cannot be read as ", dtype_name(dtype));
  if (d.contiguous) return read_contiguous(d, dtype, out);
  STRATA_CHECK(!is_quantized(t.dtype), Checkpoint, "shard ", path_, ": ", dtype_name(t.dtype), " tensor ", name,
               " has no block checksums (strata writes quantized tensors in format 2 only)");
  h5::Handle set = h5::dataset(H5Dopen2(file_, name.c_str(), H5P_DEFAULT), name);
  if (read_chunks_parallel(set.get(), t, dtype, out)) return;
  const std::size_t count = std::size_t(shape_numel(t.shape));
  if (t.dtype == DType::F32) {
    read_dataset(set.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, out, path_, name);
  } else {
    h5::Handle type = file_type_of(t.dtype);  // read the stored bits as they are, convert here (exact, fast)
    if (dtype == t.dtype) return read_dataset(set.get(), type.get(), H5S_ALL, H5S_ALL, out, path_, name);
    std::uint16_t* raw = staging(count);
    read_dataset(set.get(), type.get(), H5S_ALL, H5S_ALL, raw, path_, name);
    convert_to_f32(t.dtype, raw, static_cast<float*>(out), count);
  }
}

// Passes over the rank's OpenMP threads, each balanced on its own. Read as stored (dtype == t.dtype): pread each
// chunk's rows straight into `out` (the kernel copies from the page cache into the tensor, faulting its pages in on
// every thread) and its edge padding and checksum into a small tail, then verify each chunk. Read as f32: pread
// the whole chunks into the staging buffer, verify, then convert the rows into `out`.
bool ShardReader::read_chunks_parallel(long long set, const StoredTensor& t, DType dtype, void* out) const {
  const std::string where = cat("shard ", path_, ": tensor ", t.name);
  const std::optional<ChunkLayout> layout = strata_chunk_layout(hid_t(set), t, where);
  if (!layout) return false;
  const std::int64_t rows = t.shape[0];
  const std::size_t stored = std::size_t(layout->chunk_rows) * layout->row_bytes + 4;
  const std::size_t chunks = layout->chunks.size();
  const bool direct = dtype == t.dtype;
  // Slot k: the chunk starting at row k * chunk_rows. Its first head[k] stored bytes go to head_at[k], the rest
  // (tail: edge padding, then the 4-byte checksum) to tail_at[k].
  std::vector<const StoredChunk*> at_slot(chunks, nullptr);
  for (const StoredChunk& c : layout->chunks) {
    const std::size_t slot = std::size_t(c.first_row / layout->chunk_rows);
    STRATA_CHECK(c.first_row % layout->chunk_rows == 0 && slot < chunks && !at_slot[slot], Checkpoint, where,
                 ": chunk at row ", c.first_row, " does not fit the chunk grid of ", layout->chunk_rows, " rows");
    at_slot[slot] = &c;
  }
  std::vector<std::size_t> head(chunks, stored);
  std::vector<char*> head_at(chunks), tail_at(chunks, nullptr);
  std::vector<std::vector<char>> tails(direct ? chunks : 0);
  char* staged = direct ? nullptr : reinterpret_cast<char*>(staging((stored * chunks + 1) / 2));
  for (std::size_t k = 0; k < chunks; ++k) {
    if (direct) {
      const std::int64_t first = std::int64_t(k) * layout->chunk_rows;
      head[k] = std::size_t(std::min(layout->chunk_rows, rows - first)) * layout->row_bytes;
      head_at[k] = static_cast<char*>(out) + std::size_t(first) * layout->row_bytes;
      tails[k].resize(stored - head[k]);
      tail_at[k] = tails[k].data();
    } else {
      head_at[k] = staged + k * stored;
    }
  }
  auto dest = [&](std::size_t k, std::size_t at) {
    return at < head[k] ? head_at[k] + at : tail_at[k] + (at - head[k]);
  };

  constexpr std::size_t kPiece = 1u << 20;
  const std::size_t pieces_per_chunk = (stored + kPiece - 1) / kPiece;
  const std::int64_t pieces = std::int64_t(chunks * pieces_per_chunk);
  std::atomic<bool> read_failed{false};
  std::string read_error;
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t p = 0; p < pieces; ++p) {
    const std::size_t k = std::size_t(p) / pieces_per_chunk;
    std::size_t begin = (std::size_t(p) % pieces_per_chunk) * kPiece;
    const std::size_t end = std::min(stored, begin + kPiece);
    while (begin < end) {  // at most two reads: up to the end of the head, then into the tail
      const std::size_t until = begin < head[k] ? std::min(end, head[k]) : end;
      const std::string error = pread_all(fd_, dest(k, begin), until - begin, off_t(at_slot[k]->address + begin));
      if (!error.empty() && !read_failed.exchange(true)) read_error = error;
      begin = until;
    }
  }
  STRATA_CHECK(!read_failed, Checkpoint, "cannot read shard ", path_, ", tensor ", t.name, ": ", read_error);

  std::atomic<bool> corrupt{false};
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t k = 0; k < std::int64_t(chunks); ++k) {
    Fletcher32 sum;
    const std::size_t in_head = std::min(head[k], stored - 4);
    sum.update(head_at[k], in_head);
    if (stored - 4 > in_head) sum.update(tail_at[k], stored - 4 - in_head);
    unsigned char bytes[4];  // HDF5 appends the checksum little-endian
    for (std::size_t i = 0; i < 4; ++i) bytes[i] = static_cast<unsigned char>(*dest(std::size_t(k), stored - 4 + i));
    const std::uint32_t expected = std::uint32_t(bytes[0]) | std::uint32_t(bytes[1]) << 8 |
                                   std::uint32_t(bytes[2]) << 16 | std::uint32_t(bytes[3]) << 24;
    if (!sum.matches(expected)) corrupt = true;
  }
  if (corrupt)
    throw Error(ErrorKind::Checkpoint, cat("checksum mismatch: shard ", path_, ", tensor ", t.name,
                                           " is corrupt (Fletcher32 check failed); re-create or re-copy the shard"));
  if (!direct) {
    const std::size_t row_values = layout->row_bytes / dtype_size(t.dtype);
    const std::int64_t rows_per_block = std::max<std::int64_t>(1, std::int64_t((256u << 10) / layout->row_bytes));
#pragma omp parallel for schedule(dynamic)
    for (std::int64_t first = 0; first < rows; first += rows_per_block) {
      for (std::int64_t r = first; r < std::min(rows, first + rows_per_block);) {  // stop at chunk boundaries
        const std::int64_t slot = r / layout->chunk_rows, in_chunk = r % layout->chunk_rows;
        const std::int64_t until = std::min({rows, first + rows_per_block, (slot + 1) * layout->chunk_rows});
        const char* src = staged + std::size_t(slot) * stored + std::size_t(in_chunk) * layout->row_bytes;
        convert_to_f32(t.dtype, src, static_cast<float*>(out) + std::size_t(r) * row_values,
                       std::size_t(until - r) * row_values);
        r = until;
      }
    }
  }
  ++parallel_reads_;
  return true;
}

// Format 2: verify each block and copy it (as stored) or convert it (to f32) on the same thread. From the mapping;
// without it, the blocks are pread straight into `out` (as stored) or into the staging buffer (to f32) first.
void ShardReader::read_contiguous(const Described& d, DType dtype, void* out) const {
  const StoredTensor& t = d.tensor;
  const ContiguousStorage& c = *d.contiguous;
  char* dest = static_cast<char*>(out);
  const bool as_stored = dtype == t.dtype;
  if (is_quantized(t.dtype) && !as_stored) {  // checksum blocks cut quantized blocks: verify all, then dequantize
    char* into = map_ ? nullptr : reinterpret_cast<char*>(staging((c.bytes + 1) / 2));
    std::vector<char> unused;
    const char* data = contiguous_blocks(c, t.name, 0, c.sums.size(), unused, into);
    verify_blocks(data, c, 0, c.sums.size(), path_, t.name, [](std::size_t, std::size_t) {});
    convert_to_f32(t.dtype, data, static_cast<float*>(out), std::size_t(shape_numel(t.shape)));
    ++parallel_reads_;
    return;
  }
  const std::size_t element = as_stored && is_quantized(t.dtype) ? 1 : dtype_size(t.dtype);
  char* into = map_ ? nullptr : as_stored ? dest : reinterpret_cast<char*>(staging((c.bytes + 1) / 2));
  std::vector<char> unused;
  const char* data = contiguous_blocks(c, t.name, 0, c.sums.size(), unused, into);
  verify_blocks(data, c, 0, c.sums.size(), path_, t.name, [&](std::size_t begin, std::size_t end) {
    if (!as_stored)
      convert_to_f32(t.dtype, data + begin, reinterpret_cast<float*>(dest) + begin / element, (end - begin) / element);
    else if (data != dest)
      std::memcpy(dest + begin, data + begin, end - begin);
  });
  ++parallel_reads_;
}

const char* ShardReader::contiguous_blocks(const ContiguousStorage& c, const std::string& name, std::size_t first,
                                           std::size_t last, std::vector<char>& holder, char* into) const {
  const std::size_t begin = first * c.block, end = std::min(c.bytes, last * c.block);
  if (map_) return mapped_data(mapping(), c, name) + begin;
  if (!into) {
    holder.resize(end - begin);
    into = holder.data();
  }
  std::atomic<bool> failed{false};
  std::string error;
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t b = std::int64_t(first); b < std::int64_t(last); ++b) {
    const std::size_t at = std::size_t(b) * c.block, bytes = std::min(c.block, c.bytes - at);
    const std::string failure = pread_all(fd_, into + (at - begin), bytes, off_t(c.offset + at));
    if (!failure.empty() && !failed.exchange(true)) error = failure;
  }
  STRATA_CHECK(!failed, Checkpoint, "cannot read shard ", path_, ", tensor ", name, ": ", error);
  return into;
}

std::optional<MappedBytes> ShardReader::map(const std::vector<std::string>& names, const std::vector<Shape>& expected,
                                            DType dtype) const {
  STRATA_CHECK(names.size() == expected.size() && !names.empty(), Internal, "map: ", names.size(), " names, ",
               expected.size(), " shapes");
  if (!map_) return std::nullopt;
  std::vector<const ContiguousStorage*> parts;
  for (std::size_t i = 0; i < names.size(); ++i) {
    const Described& d = described(names[i]);
    STRATA_CHECK(d.tensor.shape == expected[i], Checkpoint, "shard ", path_, ": tensor ", names[i], " has shape ",
                 shape_string(d.tensor.shape), ", expected ", shape_string(expected[i]));
    if (d.tensor.dtype != dtype || !d.contiguous) return std::nullopt;
    const ContiguousStorage& c = *d.contiguous;
    if (i > 0 && c.offset != parts.back()->offset + parts.back()->bytes) return std::nullopt;  // not back to back
    if (i == 0 && c.offset % kDataAlignment != 0) return std::nullopt;
    parts.push_back(&c);
  }
  const FileMapping& file = mapping();
  for (std::size_t i = 0; i < parts.size(); ++i)
    verify_blocks(mapped_data(file, *parts[i], names[i]), *parts[i], 0, parts[i]->sums.size(), path_, names[i],
                  [](std::size_t, std::size_t) {});
  ++parallel_reads_;
  std::size_t bytes = 0;
  for (const auto* c : parts) bytes += c->bytes;
  return MappedBytes{file.data() + parts[0]->offset, bytes, mapping_};
}

void ShardReader::read_region_f32(const std::string& name, int axis, std::int64_t begin, std::int64_t end, float* out,
                                  std::int64_t out_stride) const {
  const Described& d = described(name);
  const StoredTensor& t = d.tensor;
  const std::string where = cat("shard ", path_, ": tensor ", name);
  STRATA_CHECK(t.shape.size() == 1 || t.shape.size() == 2, Checkpoint, where, ": expected 1-D or 2-D, got ",
               shape_string(t.shape));
  const hsize_t rows = hsize_t(t.shape[0]), cols = t.shape.size() == 2 ? hsize_t(t.shape[1]) : 1;
  const hsize_t extent = axis == 0 ? rows : cols;
  STRATA_CHECK(begin >= 0 && begin < end && hsize_t(end) <= extent && (axis == 0 || t.shape.size() == 2), Checkpoint,
               where, ": region [", begin, ", ", end, ") along axis ", axis, " outside ", shape_string(t.shape));
  const hsize_t start[2] = {axis == 0 ? hsize_t(begin) : 0, axis == 1 ? hsize_t(begin) : 0};
  const hsize_t count[2] = {axis == 0 ? hsize_t(end - begin) : rows, axis == 1 ? hsize_t(end - begin) : cols};
  STRATA_CHECK(!is_quantized(t.dtype) || (axis == 0 || (begin % 32 == 0 && end % 32 == 0)), Checkpoint, where,
               ": columns [", begin, ", ", end, ") of a ", dtype_name(t.dtype),
               " tensor cut its blocks of 32 weights; choose a tensor-parallel size that splits at multiples of 32");
  STRATA_CHECK(!is_quantized(t.dtype) || d.contiguous, Checkpoint, where, ": a ", dtype_name(t.dtype),
               " tensor without block checksums (strata writes quantized tensors in format 2 only)");
  if (const auto& c = d.contiguous) {  // format 2: only the blocks the region touches, verified
    const std::size_t row_bytes = dtype_bytes(t.dtype, std::int64_t(cols));
    const std::size_t first = std::size_t(start[0]) * row_bytes, last = std::size_t(start[0] + count[0]) * row_bytes;
    const std::size_t first_block = first / c->block, last_block = (last + c->block - 1) / c->block;
    std::vector<char> holder;
    const char* data = contiguous_blocks(*c, name, first_block, last_block, holder);
    verify_blocks(data, *c, first_block, last_block, path_, name, [](std::size_t, std::size_t) {});
    const char* rows_at = data + (first - first_block * c->block);
    const std::int64_t stride = t.shape.size() == 1 ? 1 : out_stride;  // 1-D: one element per "row"
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < std::int64_t(count[0]); ++r)
      convert_to_f32(t.dtype, rows_at + std::size_t(r) * row_bytes + dtype_bytes(t.dtype, std::int64_t(start[1])),
                     out + r * stride, std::size_t(count[1]));
    ++parallel_reads_;
    return;
  }
  h5::Handle set = h5::dataset(H5Dopen2(file_, name.c_str(), H5P_DEFAULT), where);
  h5::Handle file_space = h5::dataspace(H5Dget_space(set.get()), where);
  STRATA_H5_CHECK(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr));
  const int dims = int(t.shape.size());
  h5::Handle memory_space = h5::dataspace(H5Screate_simple(dims, count, nullptr), where);
  // Read the block contiguously in its stored type (no HDF5 conversion), then convert and place each row.
  const std::size_t block = std::size_t(count[0] * count[1]);
  std::vector<char> raw(block * dtype_size(t.dtype));
  h5::Handle type = file_type_of(t.dtype);
  read_dataset(set.get(), type.get(), memory_space.get(), file_space.get(), raw.data(), path_, name);
  const std::size_t width = std::size_t(count[1]);
  if (dims == 1) {
    convert_to_f32(t.dtype, raw.data(), out, block);
    return;
  }
  for (std::size_t r = 0; r < std::size_t(count[0]); ++r)
    convert_to_f32(t.dtype, raw.data() + r * width * dtype_size(t.dtype), out + std::int64_t(r) * out_stride, width);
}

// ---------------------------------------------------------------------------------------------------- writer

ShardWriter::ShardWriter(const std::string& path, const nlohmann::json& root_attributes) : path_(path) {
  h5::silence_library_errors();
  // Data of every dataset starts on a cache line, so that mapped tensors are aligned as allocated ones are.
  h5::Handle fapl = h5::plist(H5Pcreate(H5P_FILE_ACCESS), cat("shard ", path));
  STRATA_H5_CHECK(H5Pset_alignment(fapl.get(), 1, kDataAlignment));
  h5::Handle f =
      h5::file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), cat("cannot create shard ", path));
  for (const auto& [key, value] : root_attributes.items()) {
    if (value.is_string())
      write_attr_string(f.get(), key.c_str(), value.get<std::string>());
    else
      write_attr_ints(f.get(), key.c_str(), {value.get<std::int64_t>()}, true);
  }
  file_ = f.release();  // closed by close() or the destructor
}

ShardWriter::~ShardWriter() {
  if (file_ >= 0) H5Fclose(file_);
}

void ShardWriter::close() {
  if (file_ < 0) return;
  const hid_t f = file_;
  file_ = -1;
  STRATA_H5_CHECK(H5Fclose(f));
}

void ShardWriter::write(const StoredTensor& t, const float* data) {
  if (t.dtype == DType::F32) return write_adjacent({t}, {data});
  std::vector<std::uint16_t> stored(std::size_t(shape_numel(t.shape)));
  convert_from_f32(t.dtype, data, stored.data(), stored.size());
  write_adjacent({t}, {stored.data()});
}

// Every dataset with all its attributes first (metadata only: contiguous storage is allocated at the first write),
// then the data in order, so that nothing else is allocated between them and they lie back to back.
void ShardWriter::write_adjacent(const std::vector<StoredTensor>& tensors, const std::vector<const void*>& stored) {
  STRATA_CHECK(tensors.size() == stored.size(), Internal, "write_adjacent: ", tensors.size(), " tensors, ",
               stored.size(), " buffers");
  std::vector<h5::Handle> sets, types;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const StoredTensor& t = tensors[i];
    const std::string where = cat("shard ", path_, ": tensor ", t.name);
    const std::size_t bytes = dtype_bytes(t.dtype, shape_numel(t.shape));
    STRATA_CHECK(bytes > 0, Internal, where, ": empty tensor ", shape_string(t.shape), " (format 2 stores none)");
    std::vector<hsize_t> dims(t.shape.begin(), t.shape.end());
    if (is_quantized(t.dtype)) {  // rows of blocks as bytes
      STRATA_CHECK(dims.size() == 2, Internal, where, ": only matrices are quantized");
      dims[1] = hsize_t(dtype_bytes(t.dtype, t.shape[1]));
    }
    h5::Handle space = h5::dataspace(H5Screate_simple(int(dims.size()), dims.data(), nullptr), where);
    types.push_back(is_quantized(t.dtype) ? h5::datatype(H5Tcopy(H5T_STD_U8LE), "byte type") : file_type_of(t.dtype));
    h5::Handle dcpl = h5::plist(H5Pcreate(H5P_DATASET_CREATE), where);
    STRATA_H5_CHECK(H5Pset_layout(dcpl.get(), H5D_CONTIGUOUS));
    STRATA_H5_CHECK(H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_LATE));
    STRATA_H5_CHECK(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER));  // every byte is written once, below
    sets.push_back(h5::dataset(
        H5Dcreate2(file_, t.name.c_str(), types.back().get(), space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
        where));
    write_attr_ints(sets.back().get(), "global_shape", {t.global_shape.begin(), t.global_shape.end()}, false);
    write_attr_ints(sets.back().get(), "global_offset", {t.global_offset.begin(), t.global_offset.end()}, false);
    write_attr_string(sets.back().get(), "split", t.split);
    if (is_quantized(t.dtype)) write_attr_string(sets.back().get(), kQuantizationAttribute, dtype_name(t.dtype));
    const std::size_t block = checksum_block_bytes(bytes);
    write_attr_ints(sets.back().get(), kBlockBytesAttribute, {std::int64_t(block)}, true);
    write_attr_u32s(sets.back().get(), kBlockSumsAttribute, block_checksums(stored[i], bytes, block));
  }
  for (std::size_t i = 0; i < tensors.size(); ++i)  // memory type = file type: HDF5 copies the bytes as they are
    STRATA_H5_CHECK(H5Dwrite(sets[i].get(), types[i].get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, stored[i]));
}

}  // namespace strata
