// The quantizers as a program, for tests/quant/test_ggml_blocks.py (which compares them with llama.cpp's):
//   quant_tool quantize FORMAT N IN.f32 OUT.bin      rows of N little-endian f32 -> blocks
//   quant_tool dequantize FORMAT N IN.bin OUT.f32    blocks -> rows of N f32
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "runtime/backend/cpu/quant.h"

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s quantize|dequantize q8_0|q4_0 N IN OUT\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  const auto format = strata::quant::parse_format(argv[2]);
  const std::int64_t n = std::stoll(argv[3]);
  std::ifstream in(argv[4], std::ios::binary);
  const std::vector<char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::size_t row = strata::quant::row_bytes(format, n), floats = std::size_t(n) * 4;
  std::vector<char> out;
  if (mode == "quantize") {
    for (std::size_t at = 0; at + floats <= data.size(); at += floats) {
      out.resize(out.size() + row);
      strata::quant::quantize_row(format, reinterpret_cast<const float*>(data.data() + at),
                                  out.data() + out.size() - row, n);
    }
  } else {
    for (std::size_t at = 0; at + row <= data.size(); at += row) {
      out.resize(out.size() + floats);
      strata::quant::dequantize_row(format, data.data() + at,
                                    reinterpret_cast<float*>(out.data() + out.size() - floats), n);
    }
  }
  std::ofstream(argv[5], std::ios::binary).write(out.data(), std::streamsize(out.size()));
  return 0;
}
