// Buffers and tensors. A Buffer owns memory of one kind (host or device) and frees it through the allocator that
// made it; a Tensor is a Buffer plus shape and dtype; a TensorView is a non-owning window used by backend ops.
// Shapes are row-major, 64-bit. Weights and activation arenas are allocated at setup: forward() allocates nothing.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "runtime/base/dtype.h"
#include "runtime/tensor/shape.h"

namespace strata {

enum class MemoryKind : std::uint8_t { Host, Device };

std::int64_t shape_numel(const Shape& shape);
std::string shape_string(const Shape& shape);  // "[4096, 11008]"

// Move-only owner of one allocation. The deleter is called exactly once, never throws.
class Buffer {
 public:
  using Deleter = std::function<void(void*)>;
  Buffer() = default;
  Buffer(void* data, std::size_t bytes, MemoryKind kind, Deleter deleter)
      : data_(data), bytes_(bytes), kind_(kind), deleter_(std::move(deleter)) {}
  Buffer(Buffer&& other) noexcept { *this = std::move(other); }
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { release(); }

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  MemoryKind kind() const { return kind_; }

 private:
  void release() noexcept;
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  MemoryKind kind_ = MemoryKind::Host;
  Deleter deleter_;
};

// Host memory aligned to 64 bytes (cache line / AVX-512); from 2 MiB on, to 2 MiB, in transparent huge pages where
// the kernel gives them (madvise), and never more than a 4 KiB page beyond `bytes`.
Buffer allocate_host(std::size_t bytes);

// Host buffers packed one after another, 64-byte aligned, in chunks of allocate_host's huge-page memory: for many
// buffers that stay as long as each other (a model's weight matrices). Each in its own mapping, only the whole 2 MiB
// pages inside a buffer get huge pages: a 100M-parameter model's q8_0 matrices (0.1-3.3 MB each) lay 70% on 4 KiB
// pages (100% of a tp-2 rank's, whose matrices are half as large), and a quantized decode step took 1-6% longer
// for it here (docs/performance.md). A buffer larger than a chunk gets its own mapping; a chunk is unmapped when the
// arena and the last of its buffers are gone. Not thread-safe.
class HostArena {
 public:
  explicit HostArena(std::size_t chunk_bytes = std::size_t(64) << 20) : chunk_bytes_(chunk_bytes) {}
  Buffer allocate(std::size_t bytes);

 private:
  struct Chunk {
    Buffer memory;
    std::size_t used = 0;
  };
  std::size_t chunk_bytes_;
  std::shared_ptr<Chunk> current_;
};

// A grow-only working buffer for a kernel's per-call data (activations rounded or quantized once per product,
// attention's scores), in whole 2 MiB pages of allocate_host's huge-page memory, where the kernels' inner loops read
// it again and again: as a std::vector it lay on 4 KiB pages (a tp-2 rank's q8_0 prefill was 1-2% slower for it,
// docs/performance.md). Contents are not kept when it grows.
class HostScratch {
 public:
  template <typename T>
  T* get(std::size_t count) {
    return static_cast<T*>(bytes(count * sizeof(T)));
  }

 private:
  void* bytes(std::size_t bytes);
  Buffer buffer_;
};

struct TensorView {
  void* data = nullptr;
  Shape shape;
  DType dtype = DType::F32;
  MemoryKind kind = MemoryKind::Host;
  Layout layout = Layout::Rows;  // Interleaved16: a weight only Backend::linear and embedding read (see dtype.h)

  std::int64_t numel() const { return shape_numel(shape); }
  std::int64_t rows() const { return shape.empty() ? 0 : shape.front(); }
  // Elements per row: the product of the trailing dims (also for a tensor of zero rows, where numel() / rows()
  // would divide by zero).
  std::int64_t row_elems() const;
  float* f32() const;  // checks dtype == F32
  // Rows [begin, end) of the leading dimension, same trailing dims (row layout only, like reshaped).
  TensorView slice_rows(std::int64_t begin, std::int64_t end) const;
  // Same memory seen with another shape of the same element count.
  TensorView reshaped(Shape new_shape) const;
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(Buffer buffer, Shape shape, DType dtype, Layout layout = Layout::Rows);
  static Tensor host(Shape shape, DType dtype = DType::F32);

  TensorView view() const { return TensorView{buffer_.data(), shape_, dtype_, buffer_.kind(), layout_}; }
  Layout layout() const { return layout_; }
  const Shape& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  std::int64_t numel() const { return shape_numel(shape_); }
  std::size_t bytes() const { return dtype_bytes(dtype_, numel()); }
  float* f32() const { return view().f32(); }
  bool empty() const { return buffer_.data() == nullptr; }

 private:
  Buffer buffer_;
  Shape shape_;
  DType dtype_ = DType::F32;
  Layout layout_ = Layout::Rows;
};

}  // namespace strata
