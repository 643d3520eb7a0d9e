// safetensors parsing and reading; see safetensors.h.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <tuple>

#include <nlohmann/json.hpp>

#include "runtime/base/error.h"

namespace strata {
namespace {

constexpr std::uint64_t kMaxHeader = 100ull << 20;  // the format's own limit

DType safetensors_dtype(const std::string& name, const std::string& where) {
  if (name == "F32") return DType::F32;
  if (name == "F16") return DType::F16;
  if (name == "BF16") return DType::BF16;
  throw Error(ErrorKind::Checkpoint, cat(where, ": dtype '", name, "' is not supported (F32, F16, BF16 are)"));
}

void pread_all(int fd, void* buffer, std::size_t bytes, std::uint64_t offset, const std::string& path) {
  auto* out = static_cast<char*>(buffer);
  while (bytes > 0) {
    const ssize_t got = ::pread(fd, out, bytes, off_t(offset));
    STRATA_CHECK(got > 0, Io, "cannot read ", path, " at byte ", offset, got == 0 ? " (file truncated)" : "");
    out += got;
    bytes -= std::size_t(got);
    offset += std::uint64_t(got);
  }
}

}  // namespace

std::map<std::string, SafetensorsEntry> parse_safetensors_header(const std::string& header, std::uint64_t data_size,
                                                                 const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Checkpoint, cat(where, ": header is not valid JSON (", e.what(), ")"));
  }
  STRATA_CHECK(j.is_object(), Checkpoint, where, ": header is not a JSON object");
  std::map<std::string, SafetensorsEntry> tensors;
  std::vector<std::tuple<std::uint64_t, std::uint64_t, std::string>> ranges;
  for (const auto& [name, value] : j.items()) {
    if (name == "__metadata__") continue;
    const std::string at = cat(where, ": tensor ", name);
    STRATA_CHECK(value.is_object() && value.contains("dtype") && value["dtype"].is_string() &&
                     value.contains("shape") && value["shape"].is_array() && value.contains("data_offsets") &&
                     value["data_offsets"].is_array() && value["data_offsets"].size() == 2,
                 Checkpoint, at, ": needs \"dtype\" (string), \"shape\" (array) and \"data_offsets\" ([begin, end])");
    SafetensorsEntry e;
    e.name = name;
    e.dtype = safetensors_dtype(value["dtype"].get<std::string>(), at);
    STRATA_CHECK(value["shape"].size() <= Shape::kMaxDims, Checkpoint, at, ": shape ", value["shape"].dump(), " has ",
                 value["shape"].size(), " dimensions (at most ", Shape::kMaxDims, ")");
    std::uint64_t elements = 1;
    for (const auto& d : value["shape"]) {
      STRATA_CHECK(d.is_number_unsigned() && d.get<std::uint64_t>() <= (1ull << 40), Checkpoint, at,
                   ": shape entries must be non-negative integers, got ", value["shape"].dump());
      const std::uint64_t extent = d.get<std::uint64_t>();
      e.shape.push_back(std::int64_t(extent));
      // checked before multiplying: the product must not wrap around
      STRATA_CHECK(extent == 0 || elements <= (1ull << 40) / extent, Checkpoint, at, ": shape ", value["shape"].dump(),
                   " is too large");
      elements *= extent;
    }
    for (const auto& o : value["data_offsets"])
      STRATA_CHECK(o.is_number_unsigned(), Checkpoint, at, ": data_offsets must be non-negative integers");
    e.begin = value["data_offsets"][0].get<std::uint64_t>();
    e.end = value["data_offsets"][1].get<std::uint64_t>();
    STRATA_CHECK(e.begin <= e.end && e.end <= data_size, Checkpoint, at, ": data_offsets [", e.begin, ", ", e.end,
                 "] fall outside the data section of ", data_size, " bytes");
    STRATA_CHECK(e.end - e.begin == elements * dtype_size(e.dtype), Checkpoint, at, ": shape ", shape_string(e.shape),
                 " x ", dtype_size(e.dtype), " bytes = ", elements * dtype_size(e.dtype),
                 " bytes, but data_offsets span ", e.end - e.begin);
    ranges.emplace_back(e.begin, e.end, name);
    tensors.emplace(name, std::move(e));
  }
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 1; i < ranges.size(); ++i) {
    const auto& [begin, end, name] = ranges[i];
    const auto& [previous_begin, previous_end, previous_name] = ranges[i - 1];
    STRATA_CHECK(begin >= previous_end, Checkpoint, where, ": tensor ", name, " (bytes [", begin, ", ", end,
                 ")) overlaps tensor ", previous_name, " (bytes [", previous_begin, ", ", previous_end, "))");
  }
  return tensors;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  STRATA_CHECK(fd_ >= 0, Io, "cannot open ", path, ": ", std::strerror(errno));
  try {
    struct stat info {};
    STRATA_CHECK(::fstat(fd_, &info) == 0, Io, "cannot stat ", path);
    file_size_ = std::uint64_t(info.st_size);
    STRATA_CHECK(file_size_ >= 8, Checkpoint, path, ": ", file_size_, " bytes is too short for a safetensors file");
    unsigned char length_bytes[8];
    pread_all(fd_, length_bytes, 8, 0, path);
    std::uint64_t header_size = 0;
    for (int i = 7; i >= 0; --i) header_size = header_size << 8 | length_bytes[i];  // little-endian
    STRATA_CHECK(header_size <= kMaxHeader && header_size <= file_size_ - 8, Checkpoint, path, ": header length ",
                 header_size, " runs past the end of the file (", file_size_, " bytes)");
    std::string header(header_size, '\0');
    pread_all(fd_, header.data(), header_size, 8, path);
    data_start_ = 8 + header_size;
    tensors_ = parse_safetensors_header(header, file_size_ - data_start_, path);
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      data_start_(other.data_start_),
      file_size_(other.file_size_),
      tensors_(std::move(other.tensors_)) {}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  const auto it = tensors_.find(name);
  STRATA_CHECK(it != tensors_.end(), Checkpoint, path_, " has no tensor ", name);
  return it->second;
}

void SafetensorsFile::read_rows(const std::string& name, std::int64_t row_begin, std::int64_t row_end,
                                void* out) const {
  const SafetensorsEntry& e = entry(name);
  const std::int64_t rows = e.shape.empty() ? 1 : e.shape[0];
  STRATA_CHECK(0 <= row_begin && row_begin <= row_end && row_end <= rows, Internal, path_, ": rows [", row_begin, ", ",
               row_end, ") of ", name, " ", shape_string(e.shape));
  const std::uint64_t row_bytes = rows ? (e.end - e.begin) / std::uint64_t(rows) : 0;
  const std::uint64_t offset = data_start_ + e.begin + std::uint64_t(row_begin) * row_bytes;
  pread_all(fd_, out, std::size_t(row_end - row_begin) * row_bytes, offset, path_);
}

void SafetensorsFile::read_rows_f32(const std::string& name, std::int64_t row_begin, std::int64_t row_end,
                                    float* out) const {
  const SafetensorsEntry& e = entry(name);
  if (e.dtype == DType::F32) return read_rows(name, row_begin, row_end, out);
  const std::int64_t rows = e.shape.empty() ? 1 : e.shape[0];
  const std::size_t count = std::size_t(shape_numel(e.shape) / std::max<std::int64_t>(rows, 1)) *
                            std::size_t(std::max<std::int64_t>(row_end - row_begin, 0));
  std::vector<std::uint16_t> raw(count);
  read_rows(name, row_begin, row_end, raw.data());
  convert_to_f32(e.dtype, raw.data(), out, count);
}

SafetensorsModel::SafetensorsModel(const std::string& dir) : dir_(dir) {
  namespace fs = std::filesystem;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  std::vector<std::string> files;
  if (fs::exists(index)) {
    nlohmann::json j;
    try {
      std::ifstream in(index);
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw Error(ErrorKind::Checkpoint, cat(index.string(), ": not valid JSON (", e.what(), ")"));
    }
    STRATA_CHECK(j.contains("weight_map") && j["weight_map"].is_object(), Checkpoint, index.string(),
                 ": no \"weight_map\" object");
    for (const auto& [name, file] : j["weight_map"].items()) {
      STRATA_CHECK(file.is_string(), Checkpoint, index.string(), ": weight_map entry for ", name,
                   " is not a file name");
      if (std::find(files.begin(), files.end(), file.get<std::string>()) == files.end())
        files.push_back(file.get<std::string>());
    }
  } else {
    STRATA_CHECK(fs::exists(fs::path(dir) / "model.safetensors"), Checkpoint, dir,
                 " has neither model.safetensors nor model.safetensors.index.json");
    files.push_back("model.safetensors");
  }
  for (const auto& file : files) {
    files_.emplace_back((fs::path(dir) / file).string());
    for (const auto& [name, entry] : files_.back().tensors()) {
      const auto [it, inserted] = file_of_.emplace(name, files_.size() - 1);
      STRATA_CHECK(inserted, Checkpoint, "tensor ", name, " is in both ", files_[it->second].path(), " and ",
                   files_.back().path());
    }
  }
}

const SafetensorsFile& SafetensorsModel::file_for(const std::string& name) const {
  const auto it = file_of_.find(name);
  STRATA_CHECK(it != file_of_.end(), Checkpoint, dir_, ": the model has no tensor ", name);
  return files_[it->second];
}

std::vector<std::string> SafetensorsModel::names() const {
  std::vector<std::string> names;
  for (const auto& [name, index] : file_of_) names.push_back(name);
  return names;
}

}  // namespace strata
