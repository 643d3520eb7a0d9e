// Hugging Face safetensors files, read without trusting them: the header length, every dtype, shape and byte range
// are checked against the file before any data is read (errors name the file and the tensor). Tensors are read on
// demand with pread, so a reader holds at most the tensor (or rows of it) being read.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/base/dtype.h"
#include "runtime/tensor/tensor.h"

namespace strata {

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  std::uint64_t begin = 0, end = 0;  // byte range inside the data section
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // parses and validates the header
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(SafetensorsFile&&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, SafetensorsEntry>& tensors() const { return tensors_; }
  const SafetensorsEntry& entry(const std::string& name) const;
  // Rows [row_begin, row_end) of the tensor (its first dimension), converted to f32.
  void read_rows_f32(const std::string& name, std::int64_t row_begin, std::int64_t row_end, float* out) const;
  // The same rows as stored (entry(name).dtype), byte for byte.
  void read_rows(const std::string& name, std::int64_t row_begin, std::int64_t row_end, void* out) const;

 private:
  std::string path_;
  int fd_ = -1;
  std::uint64_t data_start_ = 0, file_size_ = 0;
  std::map<std::string, SafetensorsEntry> tensors_;
};

// Parses a safetensors header (the JSON after the 8-byte length) against a data section of `data_size` bytes.
// Exposed for the fuzzer and tests; throws Error(Checkpoint) naming `where` and the tensor.
std::map<std::string, SafetensorsEntry> parse_safetensors_header(const std::string& header, std::uint64_t data_size,
                                                                 const std::string& where);

// A Hugging Face model folder's weights: model.safetensors, or the shards listed by model.safetensors.index.json.
class SafetensorsModel {
 public:
  explicit SafetensorsModel(const std::string& dir);
  bool contains(const std::string& name) const { return file_of_.count(name) > 0; }
  const SafetensorsFile& file_for(const std::string& name) const;  // throws naming the tensor when absent
  std::vector<std::string> names() const;

 private:
  std::vector<SafetensorsFile> files_;
  std::map<std::string, std::size_t> file_of_;
  std::string dir_;
};

}  // namespace strata
