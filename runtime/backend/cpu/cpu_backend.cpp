// The CPU backend: fp32 arithmetic everywhere, our own kernels for products (every size with AVX-512; up to 4
// tokens with AVX2, OpenBLAS above) and attention, run on the backend's own threads (cpu::Workers). Matrix weights are
// kept as the checkpoint stores them (f32, or bf16/f16: half the memory and half the bytes a decode step streams) and
// widened to f32 in cache-sized blocks as they are used, which gives exactly the results of f32 weights. It is the
// oracle the CUDA backend is tested against, so it stays plain.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "runtime/backend/backend.h"
#include "runtime/backend/cpu/kernels.h"
#include "runtime/backend/cpu/quant.h"
#include "runtime/backend/cpu/tiles.h"
#include "runtime/backend/host_candidates.h"
#include "runtime/backend/kv_blocks.h"
#include "runtime/base/error.h"
#include "runtime/base/sum_in_order.h"

namespace strata {
namespace {

void require_same_rows(const TensorView& a, const TensorView& b, const char* op) {
  STRATA_CHECK(a.rows() == b.rows(), Internal, op, ": row counts differ ", shape_string(a.shape), " vs ",
               shape_string(b.shape));
}

quant::Format quant_format(DType dtype) { return dtype == DType::Q8_0 ? quant::Format::Q8_0 : quant::Format::Q4_0; }

// Row-wise ops (RMSNorm, the gated MLPs) go over the threads from this many elements, where a batch makes the
// hand-over worth it (done alone, the other threads wait through them).
constexpr std::int64_t kParallelElements = 16384;

class CpuBackend final : public Backend {
 public:
  // The kernels are chosen once (STRATA_ROW_KERNEL / STRATA_QUANT_KERNEL read here, not on every product).
  CpuBackend(int threads, DType weights, DType kv)
      : weights_(weights),
        kv_(kv),
        row_kernel_(cpu::row_kernel_name()),
        quant_kernel_(quant::kernel_name()),
        row_kernel_tokens_(cpu::row_kernel_max_tokens(row_kernel_)),
        workers_(threads, cpu::team_for(weights)),
        item_parts_bytes_(item_parts_bytes()) {
    // OpenBLAS threads on the loops' OpenMP team, or runs single-threaded inside the backend's own threads: one team
    // of threads either way, never two spinning on the same cores.
    openblas_set_num_threads(workers_.openmp() ? workers_.size() : 1);
    // The rank's other OpenMP loops (the checkpoint reader's) keep to the rank's share of the cores too.
    if (threads > 0) omp_set_num_threads(threads);
  }
  std::string name() const override { return "cpu"; }
  DType weight_dtype() const override { return weights_; }
  DType kv_dtype() const override { return kv_; }

  Tensor allocate(Shape shape, DType dtype) override { return Tensor::host(std::move(shape), dtype); }

  void upload(const float* host, TensorView dst) override {
    // Quantizing on load (--quantize) costs ~5 ns a weight on one thread here: the rows go to all of them.
    if (is_quantized(dst.dtype) && dst.rows() > 1) {
      const std::int64_t cols = dst.row_elems();
      const std::size_t row_bytes = dtype_bytes(dst.dtype, cols);
      workers_.split(dst.rows(), [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t r = first; r < last; ++r)
          convert_from_f32(dst.dtype, host + r * cols, static_cast<char*>(dst.data) + std::size_t(r) * row_bytes,
                           std::size_t(cols));
      });
      return;
    }
    convert_from_f32(dst.dtype, host, dst.data, std::size_t(dst.numel()));
  }
  void download(TensorView src, float* host) override {
    STRATA_CHECK(src.layout == Layout::Rows, Internal, "download of an interleaved weight");
    convert_to_f32(src.dtype, src.data, host, std::size_t(src.numel()));
  }

  // Matrices whose kernel reads them interleaved by 16 rows (bf16 with the avx512bf16 kernel, quantized with the
  // AVX-512 VNNI one) are copied into that layout here, once: one after another in the weight arena's huge pages.
  Tensor prepare_weight(Tensor w) override {
    if (w.shape().size() != 2 || w.layout() != Layout::Rows) return w;
    const std::int64_t out = w.shape()[0], in = w.shape()[1];
    const bool bf16 = w.dtype() == DType::BF16 && cpu::interleaves_bf16(row_kernel_, in);
    if (!bf16 && !(is_quantized(w.dtype()) && quant::interleaves(quant_kernel_))) return w;
    Tensor interleaved(weight_arena_.allocate(w.bytes()), w.shape(), w.dtype(), Layout::Interleaved16);
    if (bf16)
      cpu::interleave_bf16_rows(workers_, static_cast<const std::uint16_t*>(w.view().data),
                                static_cast<std::uint16_t*>(interleaved.view().data), out, in);
    else
      quant::interleave_rows(workers_, quant_format(w.dtype()), w.view().data, interleaved.view().data, out, in);
    return interleaved;
  }

  void linear(TensorView x, TensorView w, TensorView bias, TensorView y) override {
    const std::int64_t tokens = x.rows(), in = x.row_elems(), out = w.rows();
    STRATA_CHECK(w.row_elems() == in && y.rows() == tokens && y.row_elems() == out, Internal, "linear: x ",
                 shape_string(x.shape), " w ", shape_string(w.shape), " y ", shape_string(y.shape));
    if (tokens == 0) return;
    if (is_quantized(w.dtype)) {  // llama.cpp's arithmetic at every batch size: the same numbers however batched
      quant::row_dot_products_with(workers_, quant_kernel_, x.f32(), w.data, quant_format(w.dtype), y.f32(), tokens,
                                   out, in, w.layout);
    } else if (tokens <= row_kernel_tokens_) {  // stream the weight once for all tokens (OpenBLAS is slower there)
      cpu::row_dot_products_with(workers_, row_kernel_, x.f32(), w.data, w.dtype, y.f32(), tokens, out, in, w.layout);
    } else {
      blas_gemm(x, w, y);
    }
    add_bias(bias, y);
  }

  // One parallel loop for all of them where the row kernels or the quantized ones compute them (the activations
  // quantized once, or rounded to bf16 once by the avx512bf16 kernel); OpenBLAS's products one after another.
  void linears(TensorView x, std::span<const TensorView> ws, std::span<const TensorView> biases,
               std::span<const TensorView> ys) override {
    const std::int64_t tokens = x.rows(), in = x.row_elems();
    const DType dtype = ws[0].dtype;
    const std::vector<cpu::Product> products = one_loop(x, ws, ys, is_quantized(dtype) || tokens <= row_kernel_tokens_);
    if (products.empty()) return Backend::linears(x, ws, biases, ys);
    if (is_quantized(dtype))
      quant::row_dot_products_many(workers_, quant_kernel_, x.f32(), quant_format(dtype), tokens, in, products);
    else
      cpu::row_dot_products_many(workers_, row_kernel_, x.f32(), dtype, tokens, in, products);
    for (std::size_t i = 0; i < ws.size(); ++i) add_bias(biases[i], ys[i]);
  }

  // The rows exchanged as the kernels read them (quantized, or rounded to bf16) where those kernels run; else x.
  void linears_of_shares(TensorView x, const RowShares& shares, std::span<const TensorView> ws,
                         std::span<const TensorView> biases, std::span<const TensorView> ys) override {
    const std::int64_t tokens = x.rows(), in = x.row_elems();
    const DType dtype = ws[0].dtype;
    const std::vector<cpu::Product> products = one_loop(
        x, ws, ys, is_quantized(dtype) || (tokens <= row_kernel_tokens_ && cpu::gathers_shares(row_kernel_, dtype)));
    if (products.empty()) return Backend::linears_of_shares(x, shares, ws, biases, ys);
    if (is_quantized(dtype))
      quant::shared_rows_dot_products(workers_, quant_kernel_, x.f32(), shares, quant_format(dtype), tokens, in,
                                      products);
    else
      cpu::shared_rows_dot_products(workers_, row_kernel_, x.f32(), shares, dtype, tokens, in, products);
    for (std::size_t i = 0; i < ws.size(); ++i) add_bias(biases[i], ys[i]);
  }

  std::size_t shared_rows_bytes(std::int64_t tokens, std::int64_t in, DType weights) const override {
    if (is_quantized(weights)) return quant::shared_rows_bytes(tokens, in);
    return cpu::shared_rows_bytes(row_kernel_, weights, tokens, in);
  }

  std::int64_t rows_in_one_pass() const override { return cpu::kTokenPass; }

  // The products of x by each weight as one loop's list, where `kernel_runs` them and they can share one (x not
  // empty, every weight ws[0]'s dtype, the shapes matching); else empty.
  static std::vector<cpu::Product> one_loop(TensorView x, std::span<const TensorView> ws,
                                            std::span<const TensorView> ys, bool kernel_runs) {
    bool shared = kernel_runs && x.rows() > 0;
    for (std::size_t i = 0; i < ws.size(); ++i)
      shared = shared && ws[i].dtype == ws[0].dtype && ws[i].row_elems() == x.row_elems() && ys[i].rows() == x.rows() &&
               ys[i].row_elems() == ws[i].rows();
    std::vector<cpu::Product> products;
    for (std::size_t i = 0; shared && i < ws.size(); ++i)
      products.push_back({ws[i].data, ws[i].layout, ys[i].f32(), ws[i].rows()});
    return products;
  }

  static void add_bias(TensorView bias, TensorView y) {
    if (!bias.data) return;
    const float* b = bias.f32();
    const std::int64_t out = y.row_elems();
    for (std::int64_t t = 0; t < y.rows(); ++t) {
      float* row = y.f32() + t * out;
      for (std::int64_t n = 0; n < out; ++n) row[n] += b[n];
    }
  }

  // The products OpenBLAS computes (more tokens than the row kernel takes: AVX2 machines). 16-bit weights kGemmRows
  // rows at a time, widened by all threads into a reused f32 scratch (no f32 copy of the whole weight ever exists).
  // OpenBLAS runs threaded on the same OpenMP team as the loops (Team::OpenMP, chosen for exactly this case), or
  // else single-threaded on each thread's share of the rows.
  void blas_gemm(TensorView x, TensorView w, TensorView y) {
    STRATA_CHECK(w.layout == Layout::Rows, Internal, "blas_gemm on an interleaved weight");
    constexpr std::int64_t kGemmRows = 256;
    const std::int64_t tokens = x.rows(), in = x.row_elems(), out = w.rows();
    const bool f32 = w.dtype == DType::F32;
    const auto* bytes = static_cast<const char*>(w.data);
    const std::size_t row_bytes = std::size_t(in) * dtype_size(w.dtype);
    if (!f32 && gemm_scratch_.size() < std::size_t(kGemmRows * in)) gemm_scratch_.resize(std::size_t(kGemmRows * in));
    const std::int64_t step = f32 ? out : kGemmRows;  // f32 weights need no scratch: one product
    for (std::int64_t first = 0; first < out; first += step) {
      const std::int64_t rows = std::min(step, out - first);
      const float* w32 = f32 ? w.f32() : gemm_scratch_.data();
      if (!f32)
        workers_.split(rows, [&](std::int64_t begin, std::int64_t end) {
          cpu::widen(w.dtype, bytes + std::size_t(first + begin) * row_bytes, gemm_scratch_.data() + begin * in,
                     (end - begin) * in);
        });
      auto sgemm = [&](std::int64_t r0, std::int64_t r1) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(tokens), int(r1 - r0), int(in), 1.0f, x.f32(), int(in),
                    w32 + r0 * in, int(in), 0.0f, y.f32() + first + r0, int(out));
      };
      if (workers_.openmp())
        sgemm(0, rows);
      else
        workers_.split(rows, sgemm);
    }
  }

  void rms_norm(TensorView x, TensorView weight, float eps, TensorView y) override {
    require_same_rows(x, y, "rms_norm");
    const std::int64_t width = x.row_elems();
    rows_over_workers(x.rows(), width, [&](std::int64_t t) {
      norm_row(x.f32() + t * width, weight.f32(), eps, y.f32() + t * width, width);
    });
  }

  static void norm_row(const float* in, const float* w, float eps, float* o, std::int64_t width) {
    const double sum = cpu::sum_of_squares(in, width);
    const float inv = float(1.0 / std::sqrt(sum / double(width) + double(eps)));
    for (std::int64_t i = 0; i < width; ++i) o[i] = in[i] * inv * w[i];
  }

  // row(t) for t < rows, over the workers when there are enough elements to share (kParallelElements).
  template <typename Row>
  void rows_over_workers(std::int64_t rows, std::int64_t width, Row row) {
    auto some = [&](std::int64_t first, std::int64_t last) {
      for (std::int64_t t = first; t < last; ++t) row(t);
    };
    if (rows * width >= kParallelElements)
      workers_.split(rows, some);
    else
      some(0, rows);
  }

  // add then rms_norm, row by row in one pass (and over the threads, where the separate add ran on one): the same
  // operations per element, so bit-identical to the unfused ops (the oracle stays simple).
  void rms_norm_residual(TensorView residual, TensorView x, TensorView weight, float eps, TensorView y) override {
    require_same_rows(residual, x, "rms_norm_residual");
    require_same_rows(residual, y, "rms_norm_residual");
    const std::int64_t width = residual.row_elems();
    STRATA_CHECK(x.row_elems() == width && y.row_elems() == width, Internal,
                 "rms_norm_residual: ", shape_string(residual.shape), " + ", shape_string(x.shape), " -> ",
                 shape_string(y.shape));
    rows_over_workers(residual.rows(), width, [&](std::int64_t t) {
      float* r = residual.f32() + t * width;
      const float* in = x.f32() + t * width;
      for (std::int64_t i = 0; i < width; ++i) r[i] += in[i];
      norm_row(r, weight.f32(), eps, y.f32() + t * width, width);
    });
  }

  // The sum of the parts in the same order as sum_in_order, one row at a time, straight into the residual.
  void rms_norm_residual_of_sum(TensorView residual, std::span<const float* const> parts, TensorView weight, float eps,
                                TensorView y) override {
    require_same_rows(residual, y, "rms_norm_residual_of_sum");
    const std::int64_t width = residual.row_elems();
    rows_over_workers(residual.rows(), width, [&](std::int64_t t) {
      float* r = residual.f32() + t * width;
      add_row_sum(r, parts, t * width, width);
      norm_row(r, weight.f32(), eps, y.f32() + t * width, width);
    });
  }

  void add_sum(TensorView residual, std::span<const float* const> parts) override {
    const std::int64_t width = residual.row_elems();
    rows_over_workers(residual.rows(), width,
                      [&](std::int64_t t) { add_row_sum(residual.f32() + t * width, parts, t * width, width); });
  }

  // r[i] += (parts[0][at + i] + parts[1][at + i]) + ..., i < width.
  static void add_row_sum(float* r, std::span<const float* const> parts, std::int64_t at, std::int64_t width) {
    const float* first = parts[0] + at;
    if (parts.size() == 1) {
      for (std::int64_t i = 0; i < width; ++i) r[i] += first[i];
      return;
    }
    const float* second = parts[1] + at;
    if (parts.size() == 2) {
      for (std::int64_t i = 0; i < width; ++i) r[i] += first[i] + second[i];
      return;
    }
    thread_local std::vector<const float*> rows;  // each part's row
    thread_local std::vector<float> sum;
    rows.clear();
    for (const float* part : parts) rows.push_back(part + at);
    sum.resize(std::size_t(width));
    sum_in_order(rows, width, sum.data());
    for (std::int64_t i = 0; i < width; ++i) r[i] += sum[std::size_t(i)];
  }

  void add(TensorView y, TensorView x) override {
    STRATA_CHECK(y.numel() == x.numel(), Internal, "add: ", shape_string(y.shape), " vs ", shape_string(x.shape));
    float* out = y.f32();
    const float* in = x.f32();
    const std::int64_t n = y.numel();  // once: the stores through out may alias the shape for all the compiler knows
    for (std::int64_t i = 0; i < n; ++i) out[i] += in[i];
  }

  void rope(TensorView x, std::span<const std::int32_t> positions, const RopeParams& params) override {
    const std::int64_t tokens = x.rows(), dim = params.head_dim, heads = x.row_elems() / dim, half = dim / 2;
    STRATA_CHECK(std::int64_t(positions.size()) == tokens, Internal, "rope: ", positions.size(), " positions for ",
                 tokens, " tokens");
    STRATA_CHECK(std::int64_t(params.inv_freq.size()) == half, Internal, "rope: ", params.inv_freq.size(),
                 " frequencies for head_dim ", dim);
    const RopeTables& tables = rope_tables(positions, params.inv_freq);
    rows_over_workers(tokens, heads * dim, [&](std::int64_t t) {
      const float* cos_table = tables.cos.data() + t * half;
      const float* sin_table = tables.sin.data() + t * half;
      for (std::int64_t h = 0; h < heads; ++h) {
        float* v = x.f32() + (t * heads + h) * dim;
        for (std::int64_t i = 0; i < half; ++i) {  // rotate-half: pairs (i, i + dim/2)
          const float a = v[i], b = v[i + half];
          v[i] = a * cos_table[i] - b * sin_table[i];
          v[i + half] = b * cos_table[i] + a * sin_table[i];
        }
      }
    });
  }

  // cos and sin of position x frequency for every token of a step, [tokens, head_dim / 2] each: every layer rotates
  // q and k by the same angles, so they are computed once per step (or whenever the positions or frequencies
  // change: a long-rope model's two sets, a slice of the step) instead of 2 x layers times (sincos in double was a
  // few percent of a batch-16 decode step on one thread).
  struct RopeTables {
    std::vector<std::int32_t> positions;
    std::vector<float> inv_freq, cos, sin;
  };
  const RopeTables& rope_tables(std::span<const std::int32_t> positions, const std::vector<float>& inv_freq) {
    RopeTables& r = rope_tables_;
    if (std::equal(positions.begin(), positions.end(), r.positions.begin(), r.positions.end()) &&
        r.inv_freq == inv_freq)
      return r;
    const std::size_t half = inv_freq.size();
    r.positions.assign(positions.begin(), positions.end());
    r.inv_freq = inv_freq;
    r.cos.resize(positions.size() * half);
    r.sin.resize(positions.size() * half);
    for (std::size_t t = 0; t < positions.size(); ++t)
      for (std::size_t i = 0; i < half; ++i) {
        const double angle = double(positions[t]) * double(inv_freq[i]);
        r.cos[t * half + i] = float(std::cos(angle));
        r.sin[t * half + i] = float(std::sin(angle));
      }
    return r;
  }

  void swiglu(TensorView gate_up, TensorView out) override {
    gated_rows(gate_up, out, "swiglu",
               [](const float* gate, const float* up, float* o, std::int64_t n) { cpu::silu_times(gate, up, o, n); });
  }

  void swiglu_linear(TensorView gate_up, TensorView act, TensorView w, TensorView y) override {
    const std::int64_t tokens = gate_up.rows(), in = act.row_elems(), out = w.rows();
    STRATA_CHECK(gate_up.row_elems() == 2 * in && act.rows() == tokens && w.row_elems() == in && y.rows() == tokens &&
                     y.row_elems() == out,
                 Internal, "swiglu_linear: gate_up ", shape_string(gate_up.shape), " act ", shape_string(act.shape),
                 " w ", shape_string(w.shape), " y ", shape_string(y.shape));
    const cpu::Product product{w.data, w.layout, y.f32(), out};
    const cpu::RowMaker swiglu = [&](std::int64_t t, float* scratch) {
      const float* gate = gate_up.f32() + t * 2 * in;
      cpu::silu_times(gate, gate + in, scratch, in);
      return static_cast<const float*>(scratch);
    };
    if (!made_rows_products(swiglu, w.dtype, tokens, in, {&product, 1})) Backend::swiglu_linear(gate_up, act, w, y);
  }

  // The products of rows made by `make`, where the kernels round (avx512bf16) or quantize them: whether it did.
  bool made_rows_products(const cpu::RowMaker& make, DType dtype, std::int64_t tokens, std::int64_t in,
                          std::span<const cpu::Product> products) {
    if (tokens <= 0) return false;
    if (is_quantized(dtype)) {
      quant::made_rows_dot_products(workers_, quant_kernel_, make, quant_format(dtype), tokens, in, products);
      return true;
    }
    return tokens <= row_kernel_tokens_ &&
           cpu::made_rows_dot_products(workers_, row_kernel_, make, dtype, tokens, in, products);
  }

  void geglu(TensorView gate_up, TensorView out) override {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    gated(gate_up, out, "geglu",
          [k](float g) { return 0.5f * g * (1.0f + std::tanh(k * (g + 0.044715f * g * g * g))); });
  }

  // out[t, i] = activation(gate_up[t, i]) * gate_up[t, width + i]: the gated MLPs (SwiGLU, GeGLU).
  template <typename Activation>
  void gated(TensorView gate_up, TensorView out, const char* op, Activation activation) {
    gated_rows(gate_up, out, op, [&](const float* gate, const float* up, float* o, std::int64_t n) {
      for (std::int64_t i = 0; i < n; ++i) o[i] = activation(gate[i]) * up[i];
    });
  }

  // row(gate, up, out, width) for every token's row of gate_up [T, 2 x width] and out [T, width].
  template <typename Row>
  void gated_rows(TensorView gate_up, TensorView out, const char* op, Row row) {
    require_same_rows(gate_up, out, op);
    const std::int64_t width = out.row_elems();
    STRATA_CHECK(gate_up.row_elems() == 2 * width, Internal, op, ": gate_up ", shape_string(gate_up.shape), " out ",
                 shape_string(out.shape));
    rows_over_workers(out.rows(), width, [&](std::int64_t t) {
      const float* gate = gate_up.f32() + t * 2 * width;
      row(gate, gate + width, out.f32() + t * width, width);
    });
  }

  void scale(TensorView x, float factor) override {
    float* v = x.f32();
    const std::int64_t n = x.numel();
    for (std::int64_t i = 0; i < n; ++i) v[i] *= factor;
  }

  void softcap(TensorView x, float cap) override {
    float* v = x.f32();
    const std::int64_t n = x.numel();
    for (std::int64_t i = 0; i < n; ++i) v[i] = cap * std::tanh(v[i] / cap);
  }

  void fill_zero(TensorView x) override { std::memset(x.data, 0, dtype_bytes(x.dtype, x.numel())); }

  void scatter_add_rows(TensorView src, std::span<const std::int32_t> rows, std::span<const float> weights,
                        TensorView dst) override {
    const std::int64_t width = dst.row_elems();
    STRATA_CHECK(src.row_elems() == width && src.rows() >= std::int64_t(rows.size()) && weights.size() == rows.size(),
                 Internal, "scatter_add_rows: src ", shape_string(src.shape), " dst ", shape_string(dst.shape), " for ",
                 rows.size(), " rows");
    for (std::size_t i = 0; i < rows.size(); ++i) {
      STRATA_CHECK(rows[i] >= 0 && rows[i] < dst.rows(), Internal, "scatter_add_rows: row ", rows[i], " outside ",
                   shape_string(dst.shape));
      cpu::axpy(weights[i], src.f32() + std::int64_t(i) * width, dst.f32() + std::int64_t(rows[i]) * width, width);
    }
  }

  void embedding(std::span<const std::int32_t> ids, TensorView table, std::int64_t vocab_offset,
                 TensorView out) override {
    const std::int64_t width = table.row_elems(), local_vocab = table.rows();
    for (std::size_t t = 0; t < ids.size(); ++t) {
      float* o = out.f32() + std::int64_t(t) * width;
      const std::int64_t row = ids[t] - vocab_offset;
      if (row >= 0 && row < local_vocab && table.layout == Layout::Interleaved16 && table.dtype == DType::BF16)
        cpu::widen_interleaved_bf16_row(static_cast<const std::uint16_t*>(table.data), row, local_vocab, width, o);
      else if (row >= 0 && row < local_vocab && table.layout == Layout::Interleaved16)
        quant::dequantize_interleaved_row(quant_format(table.dtype), table.data, row, local_vocab, width, o);
      else if (row >= 0 && row < local_vocab && is_quantized(table.dtype))
        convert_to_f32(table.dtype, static_cast<const char*>(table.data) + dtype_bytes(table.dtype, row * width), o,
                       std::size_t(width));
      else if (row >= 0 && row < local_vocab)
        cpu::widen(table.dtype,
                   static_cast<const char*>(table.data) + std::size_t(row * width) * dtype_size(table.dtype), o, width);
      else
        std::memset(o, 0, std::size_t(width) * 4);
    }
  }

  // This backend's blocks are head-major, [kv_heads, block_size, head_dim] (the rows of one KV head side by side,
  // see head_row): attention then reads each head's keys and values as one contiguous run per block. A token's k
  // and v rows are split by head here.
  void kv_store(std::span<const SeqChunk> chunks, std::span<const std::int32_t> block_table, TensorView k, TensorView v,
                TensorView k_cache, TensorView v_cache) override {
    const KvBlocks blocks(k_cache, block_table);
    const std::int64_t kv_heads = k_cache.shape[2], dim = k_cache.shape[3];
    STRATA_CHECK(k.row_elems() == kv_heads * dim && v.row_elems() == kv_heads * dim, Internal, "kv_store: k ",
                 shape_string(k.shape), " for a cache of ", shape_string(k_cache.shape));
    const std::size_t elem = dtype_size(k_cache.dtype);  // f32, or f16 rounded to nearest even
    const auto& tokens = step_tokens(chunks, blocks);
    // Over the threads for a prefill's many tokens (on the caller alone it left the others waiting for ~1% of a
    // 128-token prefill); where several rows are beyond f16's range, the error names one of them.
    rows_over_workers(std::int64_t(tokens.size()), 2 * kv_heads * dim, [&](std::int64_t n) {
      const auto [index, i] = tokens[std::size_t(n)];
      const SeqChunk& c = chunks[std::size_t(index)];
      const std::int64_t from = (std::int64_t(c.token_offset) + i) * kv_heads * dim;
      if (k_cache.dtype == DType::F16) {
        check_f16_range(k.f32() + from, kv_heads * dim, "key", c.start_pos + i);
        check_f16_range(v.f32() + from, kv_heads * dim, "value", c.start_pos + i);
      }
      for (std::int64_t h = 0; h < kv_heads; ++h) {
        const std::size_t at = std::size_t(head_row(blocks, kv_heads, c, c.start_pos + i, h) * dim) * elem;
        cpu::narrow(k_cache.dtype, k.f32() + from + h * dim, static_cast<char*>(k_cache.data) + at, dim);
        cpu::narrow(v_cache.dtype, v.f32() + from + h * dim, static_cast<char*>(v_cache.data) + at, dim);
      }
    });
  }

  // The step's tokens as (chunk, token within it), each chunk checked against the block table (kv_store's and
  // attention's work items; kept in a member: no allocation a layer).
  const std::vector<std::pair<std::int32_t, std::int32_t>>& step_tokens(std::span<const SeqChunk> chunks,
                                                                        const KvBlocks& blocks) {
    step_tokens_.clear();
    for (std::size_t c = 0; c < chunks.size(); ++c) {
      blocks.check(chunks[c]);
      for (std::int32_t i = 0; i < chunks[c].n_tokens; ++i) step_tokens_.emplace_back(std::int32_t(c), i);
    }
    return step_tokens_;
  }

  // An f16 cache holds magnitudes up to 65504; a larger key or value would become infinite and every later score
  // of its sequence NaN, a wrong answer without an error. Such a model needs the f32 cache: say so instead.
  static void check_f16_range(const float* x, std::int64_t n, const char* what, std::int64_t pos) {
    bool beyond = false;
    for (std::int64_t j = 0; j < n; ++j) beyond |= std::fabs(x[j]) >= kF16Overflow;
    if (!beyond) return;
    float largest = 0;
    for (std::int64_t j = 0; j < n; ++j) largest = std::max(largest, std::fabs(x[j]));
    throw Error(ErrorKind::Config, cat("KV cache (f16): a ", what, " of magnitude ", largest, " at position ", pos,
                                       " is beyond f16's range (65504); run with --kv-cache-dtype f32"));
  }
  static constexpr float kF16Overflow = 65520.0f;  // the least magnitude that rounds to infinity in f16

  // The cache row (of head_dim elements) that holds KV head `head` at position `pos` of the chunk's sequence: its
  // block's rows of that head, then the position within the block.
  static std::int64_t head_row(const KvBlocks& blocks, std::int64_t kv_heads, const SeqChunk& c, std::int32_t pos,
                               std::int64_t head) {
    return (blocks.block_of(c, pos) * kv_heads + head) * blocks.size + pos % blocks.size;
  }

  void attention(std::span<const SeqChunk> chunks, std::span<const std::int32_t> block_table, TensorView q,
                 TensorView k_cache, TensorView v_cache, const AttentionParams& params, TensorView out) override {
    const KvBlocks blocks(k_cache, block_table);
    const auto& tokens = step_tokens(chunks, blocks);
    if (k_cache.dtype == DType::F16) return attend<cpu::Half>(chunks, blocks, tokens, q, k_cache, v_cache, params, out);
    STRATA_CHECK(k_cache.dtype == DType::F32, Internal, "attention: KV cache of ", dtype_name(k_cache.dtype));
    attend<float>(chunks, blocks, tokens, q, k_cache, v_cache, params, out);
  }

  // What one token of the step sees: the positions [first, visible) of its sequence, cut into segments at the
  // multiples of kSegment.
  struct Seen {
    const SeqChunk* chunk;
    std::int64_t row, first, visible;  // row: the token's row of q and out
    std::int64_t segments() const { return (visible - 1) / kSegment - first / kSegment + 1; }
    std::int64_t segment_begin(std::int64_t k) const { return std::max(first, (first / kSegment + k) * kSegment); }
    std::int64_t segment_end(std::int64_t k) const { return std::min(visible, (first / kSegment + k + 1) * kSegment); }
  };

  // attention() for caches of K (f32, or cpu::Half: an f16 cache, read at half the bytes by kernels whose arithmetic
  // is that of an f32 cache holding the same values).
  //   The query heads sharing a KV head go through its cached positions together, a run of them at a time, so each
  // key and value is read from memory once for the group (from L1 for the group's other heads); every head's
  // arithmetic is the same as alone. A token that sees one segment gets its softmax and weighted sums in one pass; one
  // that sees more gets a part per segment (its largest score, its sum of exponentials, its sums weighted by them),
  // merged by cpu::merge_softmax_parts. The cut depends on the positions alone, so a token's bits do not depend on
  // its batch or on the threads. Work items: tokens, each through its KV heads (all of them, or over long contexts as
  // many as bound its scratch) and its segments in turn, where there are enough tokens for the threads (each item
  // then reads its blocks' bytes in order: see attend_segment); else
  // segments of every KV head, where there are enough of them (a decode step of a few sequences over long contexts);
  // else (token, KV head) pairs, where there are enough; else each (pair, segment) is an item. After segments, a
  // second loop merges: a pair alone had kept one thread busy while the others waited.
  template <typename K>
  void attend(std::span<const SeqChunk> chunks, const KvBlocks& blocks,
              const std::vector<std::pair<std::int32_t, std::int32_t>>& tokens, TensorView q, TensorView k_cache,
              TensorView v_cache, const AttentionParams& params, TensorView out) {
    const std::int64_t kv_heads = k_cache.shape[2], dim = k_cache.shape[3];
    const std::int64_t q_heads = q.row_elems() / dim, group = q_heads / kv_heads;
    const std::int64_t pairs = std::int64_t(tokens.size()) * kv_heads;
    if (pairs == 0) return;
    const auto seen = [&](std::int64_t pair) {
      const auto [c, i] = tokens[std::size_t(pair / kv_heads)];
      const SeqChunk& chunk = chunks[std::size_t(c)];
      const std::int64_t visible = chunk.start_pos + i + 1;  // causal: keys 0..pos
      const std::int64_t first = params.window > 0 ? std::max<std::int64_t>(0, visible - params.window) : 0;
      return Seen{&chunk, chunk.token_offset + i, first, visible};
    };
    std::int64_t segments = 1, longest = 0;  // the most segments, and positions, a token sees
    std::int64_t token_segments = 0;         // all tokens' segments
    for (std::int64_t pair = 0; pair < pairs; pair += kv_heads) {
      const Seen s = seen(pair);
      segments = std::max(segments, s.segments());
      longest = std::max(longest, s.visible - s.first);
      token_segments += s.segments();
    }
    // Scratch: per thread the scores of one segment (of an item's heads) and room for the merge's exponentials; the
    // segments' parts, per thread (by tokens or pairs) or per pair (by segments). Kept between calls up to
    // kKeptScratchBytes (a fresh vector per layer, zeroed and freed, showed in a batch-1 q4_0 decode step's profile
    // outside the loops, with malloc_consolidate); a larger one (long contexts, many threads) for the call only: the
    // memory plan counts no such buffer.
    const std::int64_t token_count = std::int64_t(tokens.size());
    const bool by_tokens = token_count >= kTokensPerThread * workers_.size();
    const bool whole_segments = !by_tokens && token_segments >= kTokensPerThread * workers_.size();
    const bool by_pairs = !by_tokens && !whole_segments && pairs >= kPairsPerThread * workers_.size();
    const std::int64_t part_floats = segments * group * (2 + dim);   // one pair's softmax parts (attend_segment)
    const std::int64_t parts_size = segments > 1 ? part_floats : 0;  // one pair's scratch for them
    // KV heads an item goes through (attend_segment): all of them, where there are enough items for the threads; by
    // tokens, as many as keep a thread's softmax parts (long contexts) within item_parts_bytes_.
    const std::int64_t item_heads =
        by_tokens ? std::clamp<std::int64_t>(item_parts_bytes_ / std::max<std::int64_t>(1, parts_size * 4), 1, kv_heads)
        : whole_segments ? kv_heads
                         : 1;
    // One segment's scores, every head of an item.
    const std::int64_t score_floats = item_heads * group * std::min(kSegment, longest);
    const std::int64_t per_thread = score_floats + segments + (by_pairs || by_tokens ? item_heads * parts_size : 0);
    const std::size_t scratch =
        std::size_t(workers_.size() * per_thread + (by_pairs || by_tokens ? 0 : pairs * parts_size));
    std::unique_ptr<float[]> this_call;  // not zeroed: every score and part is written before it is read
    float* buffer = nullptr;
    if (scratch * sizeof(float) <= kKeptScratchBytes) {
      buffer = attention_scratch_.get<float>(scratch);
    } else {
      this_call.reset(new float[scratch]);
      buffer = this_call.get();
    }
    const auto thread_scratch = [&](int thread) { return buffer + thread * per_thread; };
    const auto parts_of = [&](int thread, std::int64_t pair) {
      return by_pairs || by_tokens ? thread_scratch(thread) + score_floats + segments
                                   : buffer + workers_.size() * per_thread + pair * parts_size;
    };
    const auto *keys = static_cast<const K*>(k_cache.data), *values = static_cast<const K*>(v_cache.data);
    const AttendInputs<K> in{blocks, q, out, keys, values, params, kv_heads, dim, group, segments, part_floats};
    const auto merge = [&](int thread, std::int64_t pair, const Seen& s, const float* parts) {
      float* o = out.f32() + (s.row * q_heads + pair % kv_heads * group) * dim;
      float* scale = thread_scratch(thread) + score_floats;
      for (std::int64_t g = 0; g < group; ++g)
        cpu::merge_softmax_parts(s.segments(), parts + g * segments, parts + (group + g) * segments,
                                 parts + 2 * group * segments + g * dim, group * dim, dim, scale, o + g * dim);
    };
    if (by_tokens) {
      const std::int64_t per_token = (kv_heads + item_heads - 1) / item_heads;  // items
      workers_.share(token_count * per_token, 1, [&](int thread, std::int64_t item) {
        const std::int64_t first = item / per_token * kv_heads + item % per_token * item_heads;  // its first pair
        const std::int64_t heads = std::min(item_heads, kv_heads - first % kv_heads);
        const Seen s = seen(first);
        float* parts = parts_of(thread, first);
        for (std::int64_t k = 0; k < s.segments(); ++k)
          attend_segment(in, s, first % kv_heads, heads, k, k + 1 < s.segments(), thread_scratch(thread), parts);
        if (s.segments() > 1)
          for (std::int64_t h = 0; h < heads; ++h) merge(thread, first + h, s, parts + h * parts_size);
      });
      return;
    }
    if (by_pairs) {
      workers_.share(pairs, 2, [&](int thread, std::int64_t pair) {
        const Seen s = seen(pair);
        for (std::int64_t k = 0; k < s.segments(); ++k)
          attend_segment(in, s, pair % kv_heads, 1, k, k + 1 < s.segments(), thread_scratch(thread),
                         parts_of(thread, pair));
        if (s.segments() > 1) merge(thread, pair, s, parts_of(thread, pair));
      });
      return;
    }
    // By segments: each thread a contiguous share of the (pair, segment) items (or, every KV head in each, the
    // (token, segment) items), so that it goes on from a segment to the next of the same pair, whose first keys it
    // requests while finishing the one before (handed out one at a time, every segment started cold).
    segment_items_.clear();
    for (std::int64_t pair = 0; pair < pairs; pair += item_heads)
      for (std::int64_t k = 0; k < seen(pair).segments(); ++k) segment_items_.emplace_back(pair, k);
    const std::int64_t items = std::int64_t(segment_items_.size()), threads = workers_.size();
    workers_.run([&](int thread) {
      const std::int64_t end = items * (thread + 1) / threads;
      for (std::int64_t i = items * thread / threads; i < end; ++i) {
        const auto [pair, k] = segment_items_[std::size_t(i)];
        const bool next = i + 1 < end && segment_items_[std::size_t(i + 1)].first == pair;
        attend_segment(in, seen(pair), pair % kv_heads, item_heads, k, next, thread_scratch(thread),
                       parts_of(thread, pair));
      }
    });
    if (segments > 1)
      workers_.share(pairs, 1, [&](int thread, std::int64_t pair) {
        const Seen s = seen(pair);
        if (s.segments() > 1) merge(thread, pair, s, parts_of(thread, pair));
      });
  }

  // What attend_segment reads and writes, for every segment of a call.
  template <typename K>
  struct AttendInputs {
    const KvBlocks& blocks;
    TensorView q, out;
    const K *keys, *values;
    const AttentionParams& params;
    std::int64_t kv_heads, dim, group, segments;  // segments: the parts' stride (the most any token sees)
    std::int64_t part_floats;                     // one KV head's parts: segments * group * (2 + dim)
  };

  // Segment k of what token s sees, for the query heads of KV heads first_head .. first_head + heads - 1: their
  // scores, then (the segment is all the token sees) the softmax and weighted sums straight into the output, or else
  // the segment's part, for KV head h at parts + (h - first_head) * (segments group (2 + dim)): per query head of its
  // group its largest score (at [g * segments + k]), the sum of exp(score - largest) (at [(group + g) * segments +
  // k]) and the sums weighted by those exponentials (dim floats at [2 group segments + (k group + g) dim]).
  //   Several KV heads go through each block together, head by head: a block holds its heads' rows one after
  // another, so the loops then read its bytes in order, one stream through the sequence's blocks that the hardware
  // prefetchers follow, where a head at a time read a run of a few KiB out of every block (the same bytes of a
  // decode step at batch 16 took about twice as long; docs/performance.md). Each head's arithmetic is the same either
  // way.
  template <typename K>
  static void attend_segment(const AttendInputs<K>& in, const Seen& s, std::int64_t first_head, std::int64_t heads,
                             std::int64_t k, bool request_next, float* scores, float* parts) {
    const KvBlocks& blocks = in.blocks;
    const SeqChunk& chunk = *s.chunk;
    const std::int64_t dim = in.dim, group = in.group, q_heads = in.kv_heads * group;
    const std::int64_t b = s.segment_begin(k), e = s.segment_end(k), len = e - b;
    // The groups' query heads, one after another (KV head first_head's first).
    const float* qv = in.q.f32() + (s.row * q_heads + first_head * group) * dim;
    // Block by block: each block holds block_size consecutive positions of the sequence, anywhere in the pool.
    const auto rows_at = [&](const K* cache, std::int64_t j, std::int64_t h) {
      return cache + head_row(blocks, in.kv_heads, chunk, std::int32_t(j), first_head + h) * dim;
    };
    const auto run_at = [&](std::int64_t j) { return std::min(e - j, blocks.size - j % blocks.size); };
    // Memory requests run kFetchAhead blocks ahead of the arithmetic, through the keys, on into the values and
    // (request_next: this thread goes on to the next segment) into the next segment's first keys: step u of the
    // segment's 2n cold positions is key u, then value u - n, then key e + u - 2n (m of them). One block ahead
    // measured 5-15% slower than two; three or four were level with two. Only the positions before the chunk's are
    // requested: the chunk's own were stored by kv_store just before this loop and are in cache (a 128-token prefill
    // 1-2% faster without requesting them again for every token). A run's heads are requested one at a time, one
    // before each head's arithmetic (`units`), the rest before the last head's: all of a block's heads at once (8 KiB
    // for 4 heads) came in a burst that the misses' queue did not take, and a decode step at batch 16 or 64 took
    // 5-8% longer (in-process A/B; attention alone 20-25%).
    const std::int64_t cold_end = std::min<std::int64_t>(s.visible, chunk.start_pos);
    const std::int64_t n = std::max<std::int64_t>(0, std::min(e, cold_end) - b);
    const std::int64_t m = request_next ? std::clamp<std::int64_t>(cold_end - e, 0, kFetchAhead * blocks.size) : 0;
    std::int64_t requested = 0, heads_requested = 0;  // whole positions; heads of the next position's run
    const auto request_until = [&](std::int64_t u, std::int64_t units) {
      for (u = std::min(u, 2 * n + m); requested < u && units > 0; --units) {
        std::int64_t j, run;
        const K* cache = in.keys;
        if (requested < 2 * n) {
          j = b + requested % n;
          run = std::min(run_at(j), b + n - j);
          if (requested >= n) cache = in.values;
        } else {
          j = e + requested - 2 * n;
          run = std::min(blocks.size - j % blocks.size, e + m - j);
        }
        prefetch(rows_at(cache, j, heads_requested), run * dim);
        if (++heads_requested == heads) {
          heads_requested = 0;
          requested += run;
        }
      }
    };
    const auto units_before = [&](std::int64_t h) {
      return h + 1 < heads ? 1 : std::numeric_limits<std::int64_t>::max();
    };
    for (std::int64_t j = b; j < e;) {
      const std::int64_t run = run_at(j), ahead = j + run + kFetchAhead * blocks.size;  // the position to reach
      const std::int64_t target = ahead < e ? std::min(ahead - b, n) : n + ahead - e;
      for (std::int64_t h = 0; h < heads; ++h) {
        request_until(target, units_before(h));
        cpu::group_dots(qv + h * group * dim, group, rows_at(in.keys, j, h), dim, run, dim,
                        scores + h * group * len + (j - b), len);
      }
      j += run;
    }
    const bool whole = s.segments() == 1;
    const std::int64_t part_floats = in.part_floats;
    const auto out_of = [&](std::int64_t h) {
      return whole ? in.out.f32() + (s.row * q_heads + (first_head + h) * group) * dim
                   : parts + h * part_floats + 2 * group * in.segments + k * group * dim;
    };
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t g = 0; g < group; ++g) {
        float* row = scores + (h * group + g) * len;
        const float largest = scaled_max(row, len, in.params);
        const float sum = cpu::exp_and_sum(row, len, largest);
        if (whole) {
          cpu::divide_by(row, len, sum);  // the weights themselves
        } else {
          parts[h * part_floats + g * in.segments + k] = largest;
          parts[h * part_floats + (group + g) * in.segments + k] = sum;
        }
      }
    for (std::int64_t h = 0; h < heads; ++h) std::memset(out_of(h), 0, std::size_t(group * dim) * 4);
    for (std::int64_t j = b; j < e;) {
      const std::int64_t run = run_at(j);
      const std::int64_t target = n + j - b + run + kFetchAhead * blocks.size;
      for (std::int64_t h = 0; h < heads; ++h) {
        request_until(target, units_before(h));
        cpu::weighted_sums(scores + h * group * len + (j - b), len, group, rows_at(in.values, j, h), dim, run, dim,
                           out_of(h));
      }
      j += run;
    }
  }

  // Positions a softmax part covers (see attend): long contexts cut into parts that run on different threads.
  static constexpr std::int64_t kSegment = 256;
  // By tokens (each through its KV heads) where there are at least this many per thread; else by (token, KV head)
  // pairs where there are at least this many (see attend).
  static constexpr std::int64_t kTokensPerThread = 2;
  static constexpr std::int64_t kPairsPerThread = 2;
  static constexpr std::size_t kKeptScratchBytes = std::size_t(1) << 20;
  // A thread's softmax parts of an item by tokens at most (its KV heads are fewer where a token's would pass it): 256
  // KiB, or STRATA_ATTENTION_ITEM_PARTS_BYTES (tests: items of fewer heads on small shapes).
  static std::int64_t item_parts_bytes() {
    const char* forced = std::getenv("STRATA_ATTENTION_ITEM_PARTS_BYTES");
    if (!forced || !*forced) return std::int64_t(256) << 10;
    std::int64_t bytes = 0;
    const char* end = forced + std::strlen(forced);
    const auto [stop, error] = std::from_chars(forced, end, bytes);
    STRATA_CHECK(error == std::errc() && stop == end && bytes >= 1, Config, "STRATA_ATTENTION_ITEM_PARTS_BYTES='",
                 forced, "': expected a whole number of bytes >= 1");
    return bytes;
  }

  // A sequence's blocks lie anywhere in the pool, a few KiB each: the hardware prefetchers do not follow them, and
  // the score and sum loops stalled on every block's first rows (batch-16 decode at 160 positions: attention 25-35%
  // faster with these requests).
  static constexpr std::int64_t kFetchAhead = 2;
  template <typename K>
  static void prefetch(const K* rows, std::int64_t count) {
    const auto* bytes = reinterpret_cast<const char*>(rows);
    for (std::int64_t b = 0; b < count * std::int64_t(sizeof(K)); b += 64) __builtin_prefetch(bytes + b);
  }

  // Scores -> scaled (and soft-capped) in place; returns the largest.
  static float scaled_max(float* scores, std::int64_t n, const AttentionParams& params) {
    if (params.softcap <= 0) return cpu::scale_and_max(scores, n, params.scale);
    float largest = -INFINITY;
    for (std::int64_t j = 0; j < n; ++j) {
      scores[j] = params.softcap * std::tanh(scores[j] * params.scale / params.softcap);
      largest = std::max(largest, scores[j]);
    }
    return largest;
  }

  void gather_rows(TensorView src, std::span<const std::int32_t> rows, TensorView dst) override {
    const std::size_t bytes = std::size_t(src.row_elems()) * dtype_size(src.dtype);
    for (std::size_t i = 0; i < rows.size(); ++i)
      std::memcpy(static_cast<char*>(dst.data) + i * bytes, static_cast<const char*>(src.data) + rows[i] * bytes,
                  bytes);
  }

  void sample_candidates(TensorView logits, std::int64_t vocab_offset, std::span<const CandidateRequest> requests,
                         std::span<const std::int64_t> offsets, SampleCandidate* out) override {
    STRATA_CHECK(std::int64_t(requests.size()) <= logits.rows() && offsets.size() >= requests.size(), Internal,
                 "sample_candidates: ", requests.size(), " requests for ", shape_string(logits.shape));
    const std::int64_t vocab = logits.row_elems(), rows = std::int64_t(requests.size());
    const auto candidates = [&](int, std::int64_t i) {
      const float* row = logits.f32() + i * vocab;
      const CandidateRequest& r = requests[std::size_t(i)];
      SampleCandidate* o = out + offsets[std::size_t(i)];
      if (r.mode != CandidateMode::Greedy || vocab == 0) return host_candidates(row, vocab, vocab_offset, r, o);
      const std::int64_t best = cpu::greedy_index(row, vocab);
      *o = SampleCandidate{finite_or_lowest(row[best]), std::int32_t(vocab_offset + best)};
    };
    // Rows over the threads, one at a time to whichever is free (a Gumbel row, a hash and two logarithms per logit,
    // costs far more than a greedy one): a batch's rows on one thread, while the other waited, were 2-3% of a
    // batched decode step.
    if (rows > 1 && rows * vocab >= kParallelElements)
      workers_.share(rows, 1, candidates);
    else
      for (std::int64_t i = 0; i < rows; ++i) candidates(0, i);
  }

 private:
  DType weights_, kv_;
  std::string row_kernel_, quant_kernel_;  // cpu::row_kernels() / quant::available_kernels() names
  std::int64_t row_kernel_tokens_;         // products of up to this many tokens use the row kernel
  std::vector<float> gemm_scratch_;        // blas_gemm's widened rows, reused across calls
  cpu::Workers workers_;                   // every parallel loop of the kernels
  HostArena weight_arena_;                 // the matrices prepare_weight copies (see HostArena)
  RopeTables rope_tables_;                 // the last step's angles (rope_tables)
  std::vector<std::pair<std::int32_t, std::int32_t>> step_tokens_;    // step_tokens' list
  std::vector<std::pair<std::int64_t, std::int64_t>> segment_items_;  // attend's (pair, segment) items
  const std::int64_t item_parts_bytes_;                               // see item_parts_bytes
  HostScratch attention_scratch_;  // attend's scores and softmax parts (see attend), kept between calls
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads, DType weights, DType kv) {
  STRATA_CHECK(weights == DType::F32 || weights == DType::BF16 || weights == DType::F16 || is_quantized(weights),
               Internal, "cpu backend: unsupported weight dtype");
  STRATA_CHECK(kv == DType::F32 || kv == DType::F16, Internal, "cpu backend: unsupported KV-cache dtype ",
               dtype_name(kv));
  return std::make_unique<CpuBackend>(threads, weights, kv);
}

}  // namespace strata
