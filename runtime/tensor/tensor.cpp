// Buffer/Tensor plumbing and host allocation.
#include "runtime/tensor/tensor.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "runtime/base/error.h"

namespace strata {

void Shape::too_many_dims(std::size_t count) {
  throw Error(ErrorKind::Internal, cat("a tensor shape of ", count, " dimensions (at most ", kMaxDims, ")"), __FILE__,
              __LINE__);
}

void Shape::no_dim(std::size_t i, std::size_t size) {
  throw Error(ErrorKind::Internal, cat("dimension ", i, " of a tensor shape of ", size), __FILE__, __LINE__);
}

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

namespace {

constexpr std::size_t kHugePage = std::size_t(2) << 20;

// `bytes` in a private anonymous mapping that starts on a huge-page boundary and ends with the page holding the last
// byte: transparent huge pages back every whole 2 MiB inside it and 4 KiB pages the rest, so nothing is rounded up
// (aligned_alloc's 2 MiB blocks rounded each buffer up to whole huge pages: a mixture-of-experts model's 3 MiB
// expert matrices took 4, a third more than the memory check counts).
Buffer huge_page_aligned(std::size_t bytes) {
  const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
  const std::size_t length = (bytes + page - 1) / page * page;
  void* region = mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED)
    throw Error(ErrorKind::Memory, cat("out of host memory allocating ", bytes, " bytes: ", std::strerror(errno)));
  char* start = static_cast<char*>(region);
  const std::uintptr_t address = reinterpret_cast<std::uintptr_t>(start);
  char* aligned = start + ((kHugePage - address % kHugePage) % kHugePage);
  const std::size_t head = std::size_t(aligned - start);  // the mapping's extra 2 MiB: before and after the buffer
  if (head > 0) munmap(start, head);
  munmap(aligned + length, kHugePage - head);
  madvise(aligned, length, MADV_HUGEPAGE);  // advice only: failure changes nothing
  return Buffer(aligned, bytes, MemoryKind::Host, [length](void* p) { munmap(p, length); });
}

}  // namespace

Buffer allocate_host(std::size_t bytes) {
  // Large buffers (weights, KV cache) on 2 MiB boundaries with transparent huge pages: 512x fewer page faults when
  // first touched (they dominated load time) and fewer TLB misses when streamed.
  if (bytes >= kHugePage) return huge_page_aligned(bytes);
  const std::size_t rounded = (bytes + 63) / 64 * 64;
  void* data = rounded ? std::aligned_alloc(64, rounded) : nullptr;
  if (rounded && !data) throw Error(ErrorKind::Memory, cat("out of host memory allocating ", bytes, " bytes"));
  return Buffer(data, bytes, MemoryKind::Host, [](void* p) { std::free(p); });
}

Buffer HostArena::allocate(std::size_t bytes) {
  const std::size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded > chunk_bytes_) return allocate_host(bytes);
  if (!current_ || current_->used + rounded > chunk_bytes_) {
    auto chunk = std::make_shared<Chunk>();
    chunk->memory = allocate_host(chunk_bytes_);  // pages only become memory when first written
    current_ = std::move(chunk);
  }
  void* data = static_cast<char*>(current_->memory.data()) + current_->used;
  current_->used += rounded;
  return Buffer(data, bytes, MemoryKind::Host, [chunk = current_](void*) {});
}

void* HostScratch::bytes(std::size_t bytes) {
  if (buffer_.bytes() < bytes) {
    buffer_ = Buffer{};  // the old pages go first: growth never holds both
    buffer_ = allocate_host((bytes + kHugePage - 1) / kHugePage * kHugePage);
  }
  return buffer_.data();
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
