// Buffer/Tensor plumbing and host allocation.
#include "runtime/tensor/tensor.h"

#include <sys/mman.h>

#include <cstdlib>
#include <new>

#include "runtime/base/error.h"

namespace strata {

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string shape_string(const Shape& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = other.data_;
    bytes_ = other.bytes_;
    kind_ = other.kind_;
    deleter_ = std::move(other.deleter_);
    other.data_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

void Buffer::release() noexcept {
  if (data_ && deleter_) deleter_(data_);
  data_ = nullptr;
}

Buffer allocate_host(std::size_t bytes) {
  // Large buffers (weights, KV cache) on 2 MiB boundaries with transparent huge pages: 512x fewer page faults when
  // first touched (they dominated load time) and fewer TLB misses when streamed. From 1 MiB on (a 100M model's
  // attention matrices, 0.4-1.2 MB, were a fifth of its weights in 4 KiB pages; rounding them up to 2 MiB costs
  // less than they hold, and batch-16 decode measured 2-3% faster).
  constexpr std::size_t kHuge = std::size_t(2) << 20;
  const std::size_t alignment = bytes >= kHuge / 2 ? kHuge : 64;
  const std::size_t rounded = (bytes + alignment - 1) / alignment * alignment;
  void* data = rounded ? std::aligned_alloc(alignment, rounded) : nullptr;
  if (rounded && !data) throw Error(ErrorKind::Memory, cat("out of host memory allocating ", bytes, " bytes"));
  if (alignment == kHuge) madvise(data, rounded, MADV_HUGEPAGE);  // advice only: failure changes nothing
  return Buffer(data, bytes, MemoryKind::Host, [](void* p) { std::free(p); });
}

float* TensorView::f32() const {
  STRATA_CHECK(dtype == DType::F32, Internal, "expected an f32 tensor, got ", dtype_name(dtype));
  return static_cast<float*>(data);
}

TensorView TensorView::slice_rows(std::int64_t begin, std::int64_t end) const {
  STRATA_CHECK(!shape.empty() && begin >= 0 && begin <= end && end <= shape.front(), Internal, "row slice [", begin,
               ", ", end, ") outside ", shape_string(shape));
  STRATA_CHECK(layout == Layout::Rows, Internal, "row slice of an interleaved weight ", shape_string(shape));
  TensorView out = *this;
  out.shape[0] = end - begin;
  out.data = static_cast<char*>(data) + dtype_bytes(dtype, begin * row_elems());
  return out;
}

std::int64_t TensorView::row_elems() const {
  if (shape.empty()) return 0;
  std::int64_t n = 1;
  for (std::size_t d = 1; d < shape.size(); ++d) n *= shape[d];
  return n;
}

TensorView TensorView::reshaped(Shape new_shape) const {
  STRATA_CHECK(shape_numel(new_shape) == numel(), Internal, "cannot view ", shape_string(shape), " as ",
               shape_string(new_shape));
  STRATA_CHECK(layout == Layout::Rows, Internal, "reshape of an interleaved weight ", shape_string(shape));
  TensorView out = *this;
  out.shape = std::move(new_shape);
  return out;
}

Tensor::Tensor(Buffer buffer, Shape shape, DType dtype, Layout layout)
    : buffer_(std::move(buffer)), shape_(std::move(shape)), dtype_(dtype), layout_(layout) {
  STRATA_CHECK(buffer_.bytes() >= bytes(), Internal, "buffer of ", buffer_.bytes(), " bytes too small for ",
               shape_string(shape_));
}

Tensor Tensor::host(Shape shape, DType dtype) {
  const std::size_t bytes = dtype_bytes(dtype, shape_numel(shape));
  return Tensor(allocate_host(bytes), std::move(shape), dtype);
}

}  // namespace strata
