// The checkpoint reader's own read paths (io/checkpoint.cpp) and its Fletcher32 (io/fletcher32.h), checked against
// HDF5 itself: format 1 (chunks pread in parallel, checksums HDF5 stored) and format 2 (contiguous datasets read or
// mapped in place, block sums beside them), each against what H5Dread returns for the same tensors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "io/checkpoint.h"
#include "io/fletcher32.h"
#include "runtime/base/error.h"
#include "tests/unit/error_of.h"

using namespace strata;
namespace fs = std::filesystem;

using strata::test::error_of;

namespace {

struct Case {
  std::string name;
  Shape shape;
  DType dtype;
};

// Several chunks with a partial edge chunk (bf16, f32), one chunk (f16, odd sizes), 1-D (f32).
const std::vector<Case> kCases = {{"big.bf16", {2100, 1024}, DType::BF16},
                                  {"big.f32", {1500, 700}, DType::F32},
                                  {"small.f16", {37, 71}, DType::F16},
                                  {"vector.f32", {1001}, DType::F32}};

fs::path fresh_dir(const std::string& tag) {
  const fs::path dir = fs::temp_directory_path() / ("strata_test_parallel_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::vector<float> random_values(const Shape& shape, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::vector<float> data(std::size_t(shape_numel(shape)));
  for (auto& x : data) x = normal(rng);
  return data;
}

// The HDF5 float type format 1 and 2 store `dtype` as (docs/checkpoint-format.md).
hid_t stored_type(DType dtype) {
  const hid_t type = H5Tcopy(H5T_IEEE_F32LE);
  if (dtype == DType::F32) return type;
  const bool bf16 = dtype == DType::BF16;
  H5Tset_fields(type, 15, bf16 ? 7 : 10, bf16 ? 8 : 5, 0, bf16 ? 7 : 10);
  H5Tset_size(type, 2);
  H5Tset_ebias(type, bf16 ? 127 : 15);
  return type;
}

// The slice attributes every strata dataset carries, for a whole tensor of `shape` (offset 0).
void write_whole_slice_attributes(hid_t set, const std::vector<std::int64_t>& shape) {
  const hsize_t rank = shape.size();
  const hid_t ints = H5Screate_simple(1, &rank, nullptr);
  const std::vector<std::int64_t> offset(shape.size(), 0);
  for (const auto& [attr, values] : {std::pair{"global_shape", &shape}, std::pair{"global_offset", &offset}}) {
    const hid_t a = H5Acreate2(set, attr, H5T_STD_I64LE, ints, H5P_DEFAULT, H5P_DEFAULT);
    EXPECT_GE(H5Awrite(a, H5T_NATIVE_INT64, values->data()), 0);
    H5Aclose(a);
  }
  H5Sclose(ints);
}

// A shard as strata's format 1 wrote them, with the HDF5 API directly: datasets chunked along rows (about 4 MiB a
// chunk) with HDF5's Fletcher32 filter. Format 2 readers still read these.
fs::path write_format1_shard(const std::string& tag) {
  const fs::path path = fresh_dir(tag) / "s.h5";
  const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  std::mt19937 rng(11);
  for (const Case& c : kCases) {
    const std::vector<float> data = random_values(c.shape, rng);
    std::vector<hsize_t> dims(c.shape.begin(), c.shape.end()), chunk = dims;
    const std::size_t row_bytes = std::size_t(shape_numel(c.shape) / c.shape[0]) * dtype_size(c.dtype);
    chunk[0] = std::clamp<hsize_t>((4u << 20) / row_bytes, 1, dims[0]);
    const hid_t space = H5Screate_simple(int(dims.size()), dims.data(), nullptr);
    const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, int(chunk.size()), chunk.data());
    H5Pset_fletcher32(dcpl);
    const hid_t type = stored_type(c.dtype);
    const hid_t set = H5Dcreate2(file, c.name.c_str(), type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    EXPECT_GE(H5Dwrite(set, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()), 0);  // HDF5 converts
    write_whole_slice_attributes(set, std::vector<std::int64_t>(c.shape.begin(), c.shape.end()));
    H5Dclose(set);
    H5Tclose(type);
    H5Pclose(dcpl);
    H5Sclose(space);
  }
  H5Fclose(file);
  return path;
}

// The same tensors written by strata's ShardWriter (format 2).
fs::path write_format2_shard(const std::string& tag) {
  const fs::path path = fresh_dir(tag) / "s.h5";
  ShardWriter w(path.string(), {{"format_version", 2}});
  std::mt19937 rng(11);
  for (const Case& c : kCases) {
    const std::vector<float> data = random_values(c.shape, rng);
    w.write(StoredTensor{c.name, c.shape, c.dtype, c.shape, Shape(c.shape.size(), 0), "replicated"}, data.data());
  }
  w.close();
  return path;
}

// What HDF5 itself reads for a dataset, converted to f32 by HDF5.
std::vector<float> h5dread_f32(const fs::path& path, const std::string& name) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t set = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  const hid_t space = H5Dget_space(set);
  std::vector<float> out(std::size_t(H5Sget_simple_extent_npoints(space)));
  EXPECT_GE(H5Dread(set, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), 0);
  H5Sclose(space);
  H5Dclose(set);
  H5Fclose(file);
  return out;
}

// Byte offset of a dataset's data in the file (contiguous datasets).
std::uint64_t data_offset(const fs::path& path, const std::string& name) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t set = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  const haddr_t at = H5Dget_offset(set);
  H5Dclose(set);
  H5Fclose(file);
  return at;
}

std::vector<std::uint16_t> bf16_bits(const std::vector<float>& values) {
  std::vector<std::uint16_t> bits(values.size());
  convert_from_f32(DType::BF16, values.data(), bits.data(), values.size());
  return bits;
}

void flip_byte(const fs::path& path, std::uint64_t at) {
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  file.seekg(std::streamoff(at));
  char byte = 0;
  file.read(&byte, 1);
  byte ^= 0x10;
  file.seekp(std::streamoff(at));
  file.write(&byte, 1);
}

struct RawChunk {
  haddr_t address;
  std::vector<unsigned char> bytes;  // as stored: filtered data, then the 4-byte checksum
};

// Every stored chunk of a dataset, read raw (no filter applied) by HDF5.
std::vector<RawChunk> raw_chunks(const fs::path& path, const std::string& name) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t set = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  const hid_t space = H5Dget_space(set);
  hsize_t count = 0;
  EXPECT_GE(H5Dget_num_chunks(set, space, &count), 0);
  std::vector<RawChunk> chunks;
  for (hsize_t i = 0; i < count; ++i) {
    hsize_t offset[2] = {0, 0}, size = 0;
    unsigned mask = 0;
    RawChunk c;
    EXPECT_GE(H5Dget_chunk_info(set, space, i, offset, &mask, &c.address, &size), 0);
    EXPECT_EQ(mask, 0u);
    c.bytes.resize(size);
    std::uint32_t read_mask = 0;
    EXPECT_GE(H5Dread_chunk(set, H5P_DEFAULT, offset, &read_mask, c.bytes.data()), 0);
    chunks.push_back(std::move(c));
  }
  H5Sclose(space);
  H5Dclose(set);
  H5Fclose(file);
  return chunks;
}

std::uint32_t stored_sum(const std::vector<unsigned char>& chunk) {
  const unsigned char* s = chunk.data() + chunk.size() - 4;
  return std::uint32_t(s[0]) | std::uint32_t(s[1]) << 8 | std::uint32_t(s[2]) << 16 | std::uint32_t(s[3]) << 24;
}

}  // namespace

TEST(Fletcher32, EqualsTheSumHdf5StoredOnEveryChunk) {
  const fs::path path = write_format1_shard("sums");
  int chunks_seen = 0;
  for (const Case& c : kCases) {
    for (const RawChunk& chunk : raw_chunks(path, c.name)) {
      const std::uint32_t stored = stored_sum(chunk.bytes);
      EXPECT_EQ(fletcher32(chunk.bytes.data(), chunk.bytes.size() - 4), stored) << c.name;
      const std::uint32_t swapped = ((stored & 0x00ff00ffu) << 8) | ((stored >> 8) & 0x00ff00ffu);
      EXPECT_TRUE(fletcher32_matches(chunk.bytes.data(), chunk.bytes.size() - 4, swapped)) << c.name;
      EXPECT_FALSE(fletcher32_matches(chunk.bytes.data(), chunk.bytes.size() - 4, stored ^ 0x100u)) << c.name;
      ++chunks_seen;
    }
  }
  EXPECT_EQ(chunks_seen, 2 + 2 + 1 + 1);  // the multi-chunk cases really have several chunks
  fs::remove_all(path.parent_path());
}

TEST(Fletcher32, OddLengthAndLongInputFollowTheWordByWordDefinition) {
  // The definition as HDF5 documents it, one word at a time: an independent check of the block formula, including
  // sums large enough to wrap uint32 within a 360-word block and a trailing odd byte.
  auto reference = [](const unsigned char* p, std::size_t bytes) {
    std::uint32_t s1 = 0, s2 = 0;
    std::size_t words = bytes / 2;
    while (words > 0) {
      std::size_t n = std::min<std::size_t>(words, 360);
      words -= n;
      for (; n > 0; --n, p += 2) s2 += s1 += std::uint32_t(p[0]) << 8 | p[1];
      s1 = (s1 & 0xffff) + (s1 >> 16);
      s2 = (s2 & 0xffff) + (s2 >> 16);
    }
    if (bytes % 2) {
      s2 += s1 += std::uint32_t(*p) << 8;
      s1 = (s1 & 0xffff) + (s1 >> 16);
      s2 = (s2 & 0xffff) + (s2 >> 16);
    }
    s1 = (s1 & 0xffff) + (s1 >> 16);
    s2 = (s2 & 0xffff) + (s2 >> 16);
    return s2 << 16 | s1;
  };
  std::vector<unsigned char> data(10001, 0xff);  // all-ones words maximise the sums
  std::mt19937 rng(5);
  for (std::size_t i = 5000; i < data.size(); ++i) data[i] = static_cast<unsigned char>(rng());
  for (std::size_t bytes : {std::size_t(1), std::size_t(719), std::size_t(720), std::size_t(721), std::size_t(10001)}) {
    EXPECT_EQ(fletcher32(data.data(), bytes), reference(data.data(), bytes)) << bytes;
    EXPECT_EQ(fletcher32_portable(data.data(), bytes), reference(data.data(), bytes)) << bytes;
  }
}

TEST(Fletcher32, VectorPathEqualsPortablePath) {
  // fletcher32 takes the AVX2 path where the CPU has it; every length, alignment and all-ones data (the largest
  // lane sums) must give what the portable loop gives.
  std::vector<unsigned char> data(1 << 20);
  std::mt19937 rng(13);
  for (auto& b : data) b = static_cast<unsigned char>(rng());
  std::fill(data.begin(), data.begin() + 20000, 0xff);
  for (std::size_t bytes = 0; bytes < 1500; ++bytes)
    ASSERT_EQ(fletcher32(data.data(), bytes), fletcher32_portable(data.data(), bytes)) << bytes;
  for (int k = 0; k < 2000; ++k) {
    const std::size_t at = rng() % 100000, bytes = rng() % 300000;
    ASSERT_EQ(fletcher32(data.data() + at, bytes), fletcher32_portable(data.data() + at, bytes))
        << bytes << " bytes at " << at;
  }
#if defined(__x86_64__)
  std::printf("fletcher32 path on this CPU: %s\n", __builtin_cpu_supports("avx2") ? "AVX2" : "portable");
#endif
}

TEST(Fletcher32, InPiecesEqualsInOneGo) {
  std::vector<unsigned char> data(5000);
  std::mt19937 rng(9);
  for (auto& b : data) b = static_cast<unsigned char>(rng());
  for (const std::size_t split :
       {std::size_t(0), std::size_t(2), std::size_t(718), std::size_t(720), std::size_t(722), std::size_t(4000)}) {
    Fletcher32 sum;
    sum.update(data.data(), split);
    sum.update(data.data() + split, data.size() - split);
    EXPECT_EQ(sum.value(), fletcher32(data.data(), data.size())) << split;
  }
}

TEST(Format1, ParallelChunkReadEqualsH5DreadBitForBit) {
  const fs::path path = write_format1_shard("equal");
  ShardReader reader(path.string());
  for (const Case& c : kCases) {
    const std::size_t count = std::size_t(shape_numel(c.shape));
    std::vector<float> parallel(count), h5dread(count, -1.0f);
    const std::size_t before = reader.parallel_reads();
    reader.read_f32(c.name, c.shape, parallel.data());
    EXPECT_EQ(reader.parallel_reads(), before + 1) << c.name << " did not take the parallel path";
    // read_region_f32 over every row is a plain H5Dread of the whole dataset (hyperslab path).
    reader.read_region_f32(c.name, 0, 0, c.shape[0], h5dread.data(), c.shape.size() == 2 ? c.shape[1] : 1);
    EXPECT_EQ(std::memcmp(parallel.data(), h5dread.data(), count * sizeof(float)), 0) << c.name;
    // Read as stored (rows straight into the destination, tail apart), then widened here: the same values.
    std::vector<char> as_stored(count * dtype_size(c.dtype));
    reader.read(c.name, c.shape, c.dtype, as_stored.data());
    EXPECT_EQ(reader.parallel_reads(), before + 2) << c.name;
    std::vector<float> widened(count);
    convert_to_f32(c.dtype, as_stored.data(), widened.data(), count);
    EXPECT_EQ(std::memcmp(widened.data(), h5dread.data(), count * sizeof(float)), 0) << c.name;
  }
  fs::remove_all(path.parent_path());
}

TEST(Format1, FlippedByteIsDetected) {
  const fs::path path = write_format1_shard("flip");
  const std::vector<RawChunk> chunks = raw_chunks(path, "big.bf16");
  ASSERT_EQ(chunks.size(), 2u);
  {
    ShardReader reader(path.string());
    std::vector<float> out(2100 * 1024);
    reader.read_f32("big.bf16", {2100, 1024}, out.data());
    ASSERT_EQ(reader.parallel_reads(), 1u);  // intact: read by the parallel path, which the flip leaves in use
  }
  // A data byte of the second (partial edge) chunk, then a byte of the first chunk's stored checksum.
  for (const std::uint64_t at : {chunks[1].address + 1000, chunks[0].address + chunks[0].bytes.size() - 2}) {
    flip_byte(path, at);
    ShardReader reader(path.string());
    std::vector<float> out(2100 * 1024);
    for (const DType dtype : {DType::F32, DType::BF16}) {  // through the staging buffer, and straight into `out`
      const std::string message = error_of([&] { reader.read("big.bf16", {2100, 1024}, dtype, out.data()); });
      EXPECT_NE(message.find("checksum mismatch: shard " + path.string() + ", tensor big.bf16 is corrupt"),
                std::string::npos)
          << dtype_name(dtype) << ": " << message;
    }
  }
  fs::remove_all(path.parent_path());
}

TEST(OtherWriters, UnchecksummedContiguousFallsBackToH5Dread) {
  // A contiguous dataset without a checksum (not how strata writes): read through H5Dread, same values.
  const fs::path dir = fs::temp_directory_path() / ("strata_test_parallel_plain_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path path = dir / "plain.h5";
  std::vector<float> data(12 * 5);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = 0.25f * float(i) - 3.0f;
  {
    const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    const hsize_t dims[2] = {12, 5};
    const hid_t space = H5Screate_simple(2, dims, nullptr);
    const hid_t set = H5Dcreate2(file, "plain", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(H5Dwrite(set, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()), 0);
    write_whole_slice_attributes(set, {12, 5});
    H5Dclose(set);
    H5Sclose(space);
    H5Fclose(file);
  }
  ShardReader reader(path.string());
  std::vector<float> out(data.size());
  reader.read_f32("plain", {12, 5}, out.data());
  EXPECT_EQ(reader.parallel_reads(), 0u);
  EXPECT_EQ(out, data);
  fs::remove_all(dir);
}

TEST(OtherWriters, SliceAttributesOfTooManyDimensionsAreNamed) {
  // A dataset whose global_shape attribute has more entries than a Shape holds: refused naming the shard, the
  // tensor and the attribute (not an Internal error from inside the JSON conversion).
  const fs::path dir = fresh_dir("rank");
  const fs::path path = dir / "rank.h5";
  {
    const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    const hsize_t dims[1] = {2};
    const hid_t space = H5Screate_simple(1, dims, nullptr);
    const hid_t set = H5Dcreate2(file, "deep", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const float data[2] = {1, 2};
    ASSERT_GE(H5Dwrite(set, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), 0);
    write_whole_slice_attributes(set, {1, 1, 1, 1, 1, 1, 1, 1, 2});
    H5Dclose(set);
    H5Sclose(space);
    H5Fclose(file);
  }
  ShardReader reader(path.string());
  std::vector<float> out(2);
  const std::string message = error_of([&] { reader.read_f32("deep", {2}, out.data()); });
  EXPECT_NE(message.find("tensor deep: attribute 'global_shape' has 9 dimensions (at most 8)"), std::string::npos)
      << message;
  EXPECT_NE(message.find(path.string()), std::string::npos) << message;
  fs::remove_all(dir);
}

TEST(Format2, ReadsEqualH5DreadBitForBit) {
  const fs::path path = write_format2_shard("f2equal");
  for (const bool map : {true, false}) {  // through the mapping, and with pread (--no-mmap)
    SCOPED_TRACE(map ? "mapped" : "pread");
    ShardReader reader(path.string(), map);
    for (const Case& c : kCases) {
      const std::size_t count = std::size_t(shape_numel(c.shape));
      const std::vector<float> expected = h5dread_f32(path, c.name);
      std::vector<float> f32(count, -1.0f);
      const std::size_t before = reader.parallel_reads();
      reader.read_f32(c.name, c.shape, f32.data());
      EXPECT_EQ(reader.parallel_reads(), before + 1) << c.name << " did not take the mapped path";
      EXPECT_EQ(std::memcmp(f32.data(), expected.data(), count * sizeof(float)), 0) << c.name;
      std::vector<char> as_stored(count * dtype_size(c.dtype));
      reader.read(c.name, c.shape, c.dtype, as_stored.data());
      std::vector<float> widened(count);
      convert_to_f32(c.dtype, as_stored.data(), widened.data(), count);
      EXPECT_EQ(std::memcmp(widened.data(), expected.data(), count * sizeof(float)), 0) << c.name;
      // Regions (what resharding reads): some rows, and for matrices some columns, placed with a row stride.
      const std::int64_t rows = c.shape[0], cols = c.shape.size() == 2 ? c.shape[1] : 1;
      const std::int64_t r0 = rows / 3, r1 = rows - rows / 4;
      std::vector<float> region(std::size_t((r1 - r0) * cols), -1.0f);
      reader.read_region_f32(c.name, 0, r0, r1, region.data(), cols);
      EXPECT_TRUE(std::equal(region.begin(), region.end(), expected.begin() + r0 * cols)) << c.name << " rows";
      if (c.shape.size() == 2) {
        const std::int64_t c0 = cols / 5, c1 = cols / 2, stride = c1 - c0 + 3;  // wider than the block: gaps stay
        std::vector<float> block(std::size_t(rows * stride), -7.0f);
        reader.read_region_f32(c.name, 1, c0, c1, block.data(), stride);
        for (std::int64_t r = 0; r < rows; ++r) {
          for (std::int64_t k = c0; k < c1; ++k)
            ASSERT_EQ(block[std::size_t(r * stride + k - c0)], expected[std::size_t(r * cols + k)]) << c.name;
          ASSERT_EQ(block[std::size_t(r * stride + c1 - c0)], -7.0f) << c.name << ": wrote past the region";
        }
      }
    }
  }
  fs::remove_all(path.parent_path());
}

TEST(Format2, MapServesTheStoredBytesInPlaceAndOutlivesTheReader) {
  const fs::path path = write_format2_shard("f2map");
  std::optional<MappedBytes> mapped;
  std::vector<char> stored(2100 * 1024 * 2);
  {
    ShardReader reader(path.string());
    reader.read("big.bf16", {2100, 1024}, DType::BF16, stored.data());
    mapped = reader.map({"big.bf16"}, {{2100, 1024}}, DType::BF16);
    ASSERT_TRUE(mapped.has_value());
    EXPECT_FALSE(reader.map({"big.bf16"}, {{2100, 1024}}, DType::F32).has_value()) << "stored bf16, asked f32";
    EXPECT_NE(error_of([&] {
                reader.map({"big.bf16"}, {{2100, 1000}}, DType::BF16);
              }).find("has shape [2100, 1024]"),
              std::string::npos);
  }
  ASSERT_EQ(mapped->bytes, stored.size());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(mapped->data) % 64, 0u) << "data not aligned to a cache line";
  const char* begin = mapped->mapping->data();
  EXPECT_EQ(static_cast<const char*>(mapped->data) - begin, std::ptrdiff_t(data_offset(path, "big.bf16")))
      << "not the file's own bytes";
  EXPECT_EQ(std::memcmp(mapped->data, stored.data(), stored.size()), 0);  // the reader is gone, the mapping is not
  fs::remove_all(path.parent_path());
}

TEST(Format2, AdjacentTensorsMapAsOneBlockInTheirOrderOnly) {
  const fs::path path = fresh_dir("f2pair") / "s.h5";
  std::mt19937 rng(3);
  const std::vector<float> gate = random_values({96, 64}, rng), up = random_values({96, 64}, rng),
                           other = random_values({64, 96}, rng);
  {
    ShardWriter w(path.string(), {{"format_version", 2}});
    w.write_adjacent({StoredTensor{"gate", {96, 64}, DType::BF16, {96, 64}, {0, 0}, "rows"},
                      StoredTensor{"up", {96, 64}, DType::BF16, {96, 64}, {0, 0}, "rows"}},
                     {bf16_bits(gate).data(), bf16_bits(up).data()});
    w.write(StoredTensor{"other", {64, 96}, DType::BF16, {64, 96}, {0, 0}, "cols"}, other.data());
    w.close();
  }
  ShardReader reader(path.string());
  const std::optional<MappedBytes> pair = reader.map({"gate", "up"}, {{96, 64}, {96, 64}}, DType::BF16);
  ASSERT_TRUE(pair.has_value()) << "gate and up not back to back";
  ASSERT_EQ(pair->bytes, 2u * 96 * 64 * 2);
  std::vector<char> expected(pair->bytes);
  reader.read("gate", {96, 64}, DType::BF16, expected.data());
  reader.read("up", {96, 64}, DType::BF16, expected.data() + expected.size() / 2);
  EXPECT_EQ(std::memcmp(pair->data, expected.data(), expected.size()), 0);
  EXPECT_FALSE(reader.map({"up", "gate"}, {{96, 64}, {96, 64}}, DType::BF16).has_value()) << "wrong order mapped";
  EXPECT_FALSE(reader.map({"gate", "other"}, {{96, 64}, {64, 96}}, DType::BF16).has_value()) << "not adjacent";
  fs::remove_all(path.parent_path());
}

TEST(Format2, FlippedByteIsDetectedByEveryPath) {
  const fs::path path = write_format2_shard("f2flip");
  // big.bf16 is 4300800 bytes: 17 blocks of 256 KiB. Flip a byte of the 13th.
  const std::uint64_t at = data_offset(path, "big.bf16") + 3 * (1u << 20) + 12345;
  flip_byte(path, at);
  const std::string expected = "checksum mismatch: shard " + path.string() +
                               ", tensor big.bf16 is corrupt (Fletcher32 check failed for bytes 3145728-3407871";
  for (const bool map : {true, false}) {  // through the mapping, and with pread (--no-mmap)
    SCOPED_TRACE(map ? "mapped" : "pread");
    ShardReader reader(path.string(), map);
    std::vector<float> out(2100 * 1024);
    for (const DType dtype : {DType::F32, DType::BF16}) {
      const std::string message = error_of([&] { reader.read("big.bf16", {2100, 1024}, dtype, out.data()); });
      EXPECT_NE(message.find(expected), std::string::npos) << dtype_name(dtype) << ": " << message;
    }
    if (map)
      EXPECT_NE(error_of([&] {
                  reader.map({"big.bf16"}, {{2100, 1024}}, DType::BF16);
                }).find(expected),
                std::string::npos);
    else
      EXPECT_FALSE(reader.map({"big.bf16"}, {{2100, 1024}}, DType::BF16).has_value()) << "mapped with map = false";
    const std::string region = error_of([&] { reader.read_region_f32("big.bf16", 0, 1600, 2100, out.data(), 1024); });
    EXPECT_NE(region.find(expected), std::string::npos) << region;
    // Rows before the damaged block are still served: only the blocks a region touches are checked.
    EXPECT_EQ(error_of([&] { reader.read_region_f32("big.bf16", 0, 0, 500, out.data(), 1024); }), "");
  }
  fs::remove_all(path.parent_path());
}

TEST(Format2, TruncatedShardIsNamed) {
  const fs::path path = write_format2_shard("f2trunc");
  fs::resize_file(path, data_offset(path, "big.f32") + 1000);  // cut inside a tensor's data
  for (const bool map : {true, false}) {
    const std::string message = error_of([&] {
      ShardReader reader(path.string(), map);
      std::vector<float> out(1500 * 700);
      reader.read_f32("big.f32", {1500, 700}, out.data());
    });
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    EXPECT_NE(message.find("truncated"), std::string::npos) << message;
  }
  fs::remove_all(path.parent_path());
}

TEST(Format2, ShardTruncatedAfterOpeningIsNamedWithoutMapping) {
  // HDF5 notices a short file when opening it; one cut while a rank reads it is the pread's to report (--no-mmap).
  const fs::path path = write_format2_shard("f2cut");
  ShardReader reader(path.string(), /*map=*/false);
  fs::resize_file(path, data_offset(path, "big.f32") + 1000);
  std::vector<float> out(1500 * 700);
  const std::string message = error_of([&] { reader.read_f32("big.f32", {1500, 700}, out.data()); });
  EXPECT_NE(message.find("cannot read shard " + path.string() + ", tensor big.f32: unexpected end of file"),
            std::string::npos)
      << message;
  fs::remove_all(path.parent_path());
}

TEST(Format2, PairsStayBackToBackWhileMetadataGrows) {
  // A model's worth of tensors with their attributes: HDF5 allocates file space for new metadata lazily, at times of
  // its own choosing as the file grows, and none of it may land between the two tensors of a pair (the writer
  // flushes the pair's metadata before writing its data).
  const fs::path path = fresh_dir("f2many") / "s.h5";
  std::mt19937 rng(4);
  const std::vector<float> norm = random_values({512}, rng), square = random_values({512, 512}, rng),
                           half = random_values({1024, 512}, rng), down = random_values({512, 1024}, rng);
  const std::vector<std::uint16_t> half_bits = bf16_bits(half);
  constexpr int kLayers = 24;
  {
    ShardWriter w(path.string(), {{"format_version", 2}});
    auto one = [&](const std::string& name, const Shape& shape, const std::vector<float>& data) {
      w.write(StoredTensor{name, shape, DType::BF16, shape, Shape(shape.size(), 0), "replicated"}, data.data());
    };
    for (int l = 0; l < kLayers; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      one(p + "input_norm", {512}, norm);
      for (const char* proj : {"q", "k", "v", "o"}) one(p + proj, {512, 512}, square);
      one(p + "post_norm", {512}, norm);
      w.write_adjacent({StoredTensor{p + "gate", {1024, 512}, DType::BF16, {1024, 512}, {0, 0}, "rows"},
                        StoredTensor{p + "up", {1024, 512}, DType::BF16, {1024, 512}, {0, 0}, "rows"}},
                       {half_bits.data(), half_bits.data()});
      one(p + "down", {512, 1024}, down);
    }
    w.close();
  }
  ShardReader reader(path.string());
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    EXPECT_TRUE(reader.map({p + "gate", p + "up"}, {{1024, 512}, {1024, 512}}, DType::BF16).has_value())
        << "layer " << l << ": gate and up not back to back";
  }
  fs::remove_all(path.parent_path());
}

TEST(Format2DeathTest, OtherBusErrorsAreNotBlamedOnShards) {
  // A SIGBUS outside any mapping (sent, or a fault elsewhere) keeps the behaviour it had before a shard was mapped.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const fs::path path = write_format2_shard("f2otherbus");
  EXPECT_EXIT(
      {
        ShardReader reader(path.string());
        ASSERT_TRUE(reader.map({"big.bf16"}, {{2100, 1024}}, DType::BF16).has_value());
        std::raise(SIGBUS);
      },
      testing::KilledBySignal(SIGBUS), testing::Not(testing::HasSubstr("checkpoint shard")));
  fs::remove_all(path.parent_path());
}

TEST(Format2DeathTest, ShardTruncatedUnderItsMappingSaysSoBeforeDying) {
  // A mapped page past a new end of file faults with SIGBUS: the rank prints what happened and dies of the signal.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const fs::path path = write_format2_shard("f2bus");
  EXPECT_EXIT(
      {
        ShardReader reader(path.string());
        const std::optional<MappedBytes> mapped = reader.map({"big.bf16"}, {{2100, 1024}}, DType::BF16);
        fs::resize_file(path, 4096);  // what rewriting the shard in place would do
        volatile char touched = static_cast<const char*>(mapped->data)[mapped->bytes - 1];
        (void)touched;
      },
      testing::KilledBySignal(SIGBUS), "bus error \\(SIGBUS\\) reading a checkpoint shard.*--no-mmap");
  fs::remove_all(path.parent_path());
}

TEST(Format2, FileWithAUserBlockIsReadAtTheRightPlace) {
  // h5jam, or h5py's userblock_size, put bytes before HDF5's own; H5Dget_offset already counts them.
  const fs::path path = fresh_dir("f2userblock") / "s.h5";
  std::mt19937 rng(8);
  const std::vector<float> values = random_values({300, 40}, rng);
  {
    const hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    ASSERT_GE(H5Pset_userblock(fcpl, 4096), 0);
    const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl, H5P_DEFAULT);
    const hsize_t dims[2] = {300, 40};
    const hid_t space = H5Screate_simple(2, dims, nullptr);
    const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_layout(dcpl, H5D_CONTIGUOUS);
    const hid_t set = H5Dcreate2(file, "t", H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    ASSERT_GE(H5Dwrite(set, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
    write_whole_slice_attributes(set, {300, 40});
    const hsize_t one = 1;
    const hid_t single = H5Screate_simple(1, &one, nullptr);
    const std::int64_t block = 1 << 18;
    const hid_t scalar = H5Screate(H5S_SCALAR);
    const hid_t b = H5Acreate2(set, "fletcher32_block_bytes", H5T_STD_I64LE, scalar, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(H5Awrite(b, H5T_NATIVE_INT64, &block), 0);
    const std::uint32_t sum = fletcher32(values.data(), values.size() * 4);  // 48000 bytes: one block
    const hid_t s = H5Acreate2(set, "fletcher32", H5T_STD_U32LE, single, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(H5Awrite(s, H5T_NATIVE_UINT32, &sum), 0);
    for (const hid_t id : {b, s}) H5Aclose(id);
    for (const hid_t id : {single, scalar, space}) H5Sclose(id);
    H5Dclose(set);
    H5Pclose(dcpl);
    H5Fclose(file);
    H5Pclose(fcpl);
  }
  ShardReader reader(path.string());
  std::vector<float> out(values.size());
  reader.read_f32("t", {300, 40}, out.data());
  EXPECT_EQ(out, values);
  const std::optional<MappedBytes> mapped = reader.map({"t"}, {{300, 40}}, DType::F32);
  ASSERT_TRUE(mapped.has_value());
  EXPECT_EQ(std::memcmp(mapped->data, values.data(), values.size() * 4), 0);
  fs::remove_all(path.parent_path());
}
