// A tensor's dimensions, held inline. TensorViews are passed by value into every backend op and sliced or reshaped
// around each one; with a std::vector each copy was a heap allocation (about a thousand per decode step of the 100M
// model, malloc and free ~17% of a batch-1 q4_0 step's serial work), so forward() allocated after all.
#pragma once
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <vector>

namespace strata {

class Shape {
 public:
  // More than any tensor strata reads or makes (GGUF allows 4): readers check a file's ranks against it by name.
  static constexpr std::size_t kMaxDims = 8;

  using value_type = std::int64_t;
  using size_type = std::size_t;
  using difference_type = std::ptrdiff_t;
  using reference = std::int64_t&;
  using const_reference = const std::int64_t&;
  using iterator = std::int64_t*;
  using const_iterator = const std::int64_t*;

  Shape() = default;
  Shape(std::initializer_list<std::int64_t> dims) : Shape(dims.begin(), dims.end()) {}
  // `count` dimensions of `value` each (like std::vector's).
  Shape(std::size_t count, std::int64_t value) { resize(count, value); }
  template <std::input_iterator It>
  Shape(It first, It last) {
    assign(first, last);
  }
  Shape(const std::vector<std::int64_t>& dims) : Shape(dims.begin(), dims.end()) {}  // NOLINT: implicit, as before

  template <std::input_iterator It>
  void assign(It first, It last) {
    clear();
    for (; first != last; ++first) push_back(std::int64_t(*first));
  }
  void push_back(std::int64_t d) {
    if (size_ == kMaxDims) too_many_dims(size_ + 1);
    dims_[size_++] = d;
  }
  void resize(std::size_t count, std::int64_t value = 0) {
    if (count > kMaxDims) too_many_dims(count);
    for (std::size_t i = size_; i < count; ++i) dims_[i] = value;
    size_ = std::uint8_t(count);
  }
  void clear() { size_ = 0; }
  iterator insert(const_iterator at, std::int64_t d) {
    const std::size_t index = std::size_t(at - begin());
    push_back(d);
    std::rotate(begin() + index, end() - 1, end());
    return begin() + index;
  }
  iterator erase(const_iterator at) {
    const std::size_t index = std::size_t(at - begin());
    std::copy(begin() + index + 1, end(), begin() + index);
    --size_;
    return begin() + index;
  }

  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::int64_t& operator[](std::size_t i) { return dims_[i]; }
  std::int64_t operator[](std::size_t i) const { return dims_[i]; }
  std::int64_t at(std::size_t i) const {
    if (i >= size_) no_dim(i, size_);
    return dims_[i];
  }
  std::int64_t& front() { return dims_[0]; }
  std::int64_t front() const { return dims_[0]; }
  std::int64_t& back() { return dims_[size_ - 1]; }
  std::int64_t back() const { return dims_[size_ - 1]; }
  std::int64_t* data() { return dims_.data(); }
  const std::int64_t* data() const { return dims_.data(); }
  iterator begin() { return dims_.data(); }
  iterator end() { return dims_.data() + size_; }
  const_iterator begin() const { return dims_.data(); }
  const_iterator end() const { return dims_.data() + size_; }

  friend bool operator==(const Shape& a, const Shape& b) { return std::equal(a.begin(), a.end(), b.begin(), b.end()); }

 private:
  [[noreturn]] static void too_many_dims(std::size_t count);  // throw Error(Internal)
  [[noreturn]] static void no_dim(std::size_t i, std::size_t size);

  std::array<std::int64_t, kMaxDims> dims_{};
  std::uint8_t size_ = 0;
};

}  // namespace strata
