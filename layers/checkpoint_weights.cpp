// Checkpoint weight source and random checkpoint writer.
#include "layers/checkpoint_weights.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>

#include "runtime/base/error.h"

namespace strata {

CheckpointWeightSource::CheckpointWeightSource(const std::string& dir, const Manifest& manifest, const ShardPlan& plan,
                                               bool map_weights)
    : dir_(dir), manifest_(manifest), target_(plan.coordinates()), map_weights_(map_weights) {
  const int tp = manifest.tensor_parallel_size, pp = manifest.pipeline_parallel_size;
  for (int p = 0; p < pp; ++p)
    for (int t = 0; t < tp; ++t) source_plans_.emplace_back(plan.config(), StageCoordinates{tp, t, pp, p});
  for (int p = 0; p < pp; ++p)
    for (const auto& spec : source_plan(p, 0).tensors()) source_stage_.emplace(spec.name, p);  // first stage wins
}

const ShardPlan& CheckpointWeightSource::source_plan(int pp_rank, int tp_rank) const {
  return source_plans_[std::size_t(pp_rank * manifest_.tensor_parallel_size + tp_rank)];
}

ShardReader& CheckpointWeightSource::shard(int pp_rank, int tp_rank) {
  const auto key = std::make_pair(pp_rank, tp_rank);
  if (auto it = readers_.find(key); it != readers_.end()) return it->second;
  ShardReader reader((std::filesystem::path(dir_) / manifest_.shard(pp_rank, tp_rank).file).string(), map_weights_);
  const nlohmann::json attrs = reader.attributes();
  auto attr = [&](const char* k) {
    return attrs.contains(k) && attrs[k].is_number_integer() ? attrs[k].get<int>() : -1;
  };
  STRATA_CHECK(attr("pp_rank") == pp_rank && attr("tp_rank") == tp_rank &&
                   attr("tensor_parallel_size") == manifest_.tensor_parallel_size &&
                   attr("pipeline_parallel_size") == manifest_.pipeline_parallel_size,
               Checkpoint, "shard ", reader.path(), " says it is pp rank ", attr("pp_rank"), " tp rank ",
               attr("tp_rank"), " of ", attr("pipeline_parallel_size"), " x ", attr("tensor_parallel_size"),
               " but the manifest lists it as pp rank ", pp_rank, " tp rank ", tp_rank, " of ",
               manifest_.pipeline_parallel_size, " x ", manifest_.tensor_parallel_size);
  opened_.push_back(reader.path());
  return readers_.emplace(key, std::move(reader)).first->second;
}

bool CheckpointWeightSource::read_stored(const TensorSpec& spec, DType dtype, void* out) {
  return read_as(spec, dtype, out);
}

void CheckpointWeightSource::read(const TensorSpec& spec, float* out) { read_as(spec, DType::F32, out); }

namespace {

// How `reader` describes its slice of spec.name, checked to sit where the format puts source rank's slice.
StoredTensor described_slice(const ShardReader& reader, const TensorSpec& spec, const TensorSpec& source) {
  const StoredTensor stored = reader.describe(spec.name);
  STRATA_CHECK(stored.global_shape == spec.global_shape && stored.global_offset == source.global_offset(), Checkpoint,
               "shard ", reader.path(), ": tensor ", spec.name, " is the slice at ", shape_string(stored.global_offset),
               " of ", shape_string(stored.global_shape), " but the format puts that shard's slice at ",
               shape_string(source.global_offset()), " of ", shape_string(spec.global_shape),
               " (shard files swapped or mislabelled?)");
  return stored;
}

}  // namespace

int CheckpointWeightSource::source_stage(const std::string& name) const {
  const auto stage = source_stage_.find(name);
  STRATA_CHECK(stage != source_stage_.end(), Checkpoint, "checkpoint ", dir_, " has no stage holding tensor ", name);
  return stage->second;
}

// Every source rank of the stage stores a replicated tensor: take it from the shard that also holds this rank's
// split slices.
ShardReader& CheckpointWeightSource::replicated_shard(int stage) {
  return shard(stage, target_.tp_rank * manifest_.tensor_parallel_size / target_.tp);
}

ShardReader* CheckpointWeightSource::exact_shard(const TensorSpec& spec) {
  const int stage = source_stage(spec.name);
  if (spec.split == Split::Replicated) return &replicated_shard(stage);
  for (int t = 0; t < manifest_.tensor_parallel_size; ++t) {
    const TensorSpec source = source_plan(stage, t).spec(spec.name);
    if (source.begin != spec.begin || source.end != spec.end) continue;
    ShardReader& reader = shard(stage, t);
    described_slice(reader, spec, source);
    return &reader;
  }
  return nullptr;
}

Buffer CheckpointWeightSource::map_stored(const std::vector<TensorSpec>& parts, DType dtype) {
  if (!map_weights_) return {};
  ShardReader* reader = nullptr;
  std::vector<std::string> names;
  std::vector<Shape> shapes;
  for (const auto& part : parts) {
    ShardReader* holder = exact_shard(part);
    if (!holder || (reader && holder != reader)) return {};
    reader = holder;
    names.push_back(part.name);
    shapes.push_back(part.local_shape());
  }
  std::optional<MappedBytes> mapped = reader->map(names, shapes, dtype);
  if (!mapped) return {};
  mapped_bytes_ += std::int64_t(mapped->bytes);
  // Read-only pages: the const_cast only fits Buffer's type; backends never write weights (a write would fault).
  return Buffer(const_cast<void*>(mapped->data), mapped->bytes, MemoryKind::Host,
                [keep = std::move(mapped->mapping)](void*) {});
}

// f32 always succeeds (or throws); another dtype only where one plain read of the stored slice serves, before
// anything is read otherwise.
bool CheckpointWeightSource::read_as(const TensorSpec& spec, DType dtype, void* out) {
  if (!read_slices(spec, dtype, out)) return false;
  const DType stored = stored_dtype(spec, manifest_.dtype);
  read_bytes_ += std::int64_t(dtype_bytes(stored, shape_numel(spec.local_shape())));
  return true;
}

bool CheckpointWeightSource::read_slices(const TensorSpec& spec, DType dtype, void* out) {
  const int stage = source_stage(spec.name);
  if (spec.split == Split::Replicated) {
    ShardReader& reader = replicated_shard(stage);
    if (dtype != DType::F32 && reader.describe(spec.name).dtype != dtype) return false;
    reader.read(spec.name, spec.local_shape(), dtype, out);
    return true;
  }
  const int source_tp = manifest_.tensor_parallel_size;
  const int axis = spec.split == Split::Cols ? 1 : 0;
  const Shape local = spec.local_shape();
  const std::int64_t stride = local.size() == 2 ? local[1] : 1;  // elements per row of `out`
  // Walk [begin, end) along the split axis, taking each part from the first source slice that holds it (KV heads
  // replicated over source ranks are read once).
  for (std::int64_t at = spec.begin; at < spec.end;) {
    int t = 0;
    TensorSpec source;
    for (; t < source_tp; ++t) {
      source = source_plan(stage, t).spec(spec.name);
      if (source.begin <= at && at < source.end) break;
    }
    STRATA_CHECK(t < source_tp, Checkpoint, "checkpoint ", dir_, ": no shard stores ", spec.name, " index ", at);
    ShardReader& reader = shard(stage, t);
    const StoredTensor stored = described_slice(reader, spec, source);
    const std::int64_t until = std::min(spec.end, source.end);
    if (at == spec.begin && until == spec.end && at == source.begin && until == source.end) {
      if (dtype != DType::F32 && stored.dtype != dtype) return false;
      reader.read(spec.name, local, dtype, out);  // the stored slice is exactly this rank's: one plain read
    } else {
      if (dtype != DType::F32) return false;  // a region: nothing read yet (an exact slice is the only part)
      float* f32 = static_cast<float*>(out);
      float* dest = axis == 0 ? f32 + (at - spec.begin) * stride : f32 + (at - spec.begin);
      reader.read_region_f32(spec.name, axis, at - source.begin, until - source.begin, dest, stride);
    }
    at = until;
  }
  return true;
}

DType stored_dtype(const TensorSpec& spec, DType checkpoint) {
  return is_quantized(checkpoint) && spec.global_shape.size() != 2 ? DType::F32 : checkpoint;
}

namespace {

std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::uint64_t fnv1a(const std::string& text) {
  std::uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : text) hash = (hash ^ c) * 0x100000001b3ull;
  return hash;
}

bool ends_with(const std::string& s, const char* suffix) {
  const std::size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

}  // namespace

std::vector<float> random_tensor(const TensorSpec& spec, std::uint64_t seed) {
  std::vector<float> values(static_cast<std::size_t>(shape_numel(spec.global_shape)));
  std::uint64_t state = seed ^ fnv1a(spec.name);
  const bool is_norm = ends_with(spec.name, "norm.weight");
  const bool is_bias = ends_with(spec.name, ".bias");
  const double std_dev = is_norm || is_bias ? 0.1 : 1.0 / std::sqrt(double(spec.global_shape.back()));
  const double mean = is_norm ? 1.0 : 0.0;
  for (std::size_t i = 0; i < values.size(); i += 2) {  // Box-Muller, two normals per pair of uniforms
    const double u1 = (double(splitmix64(state) >> 11) + 0.5) * 0x1.0p-53;
    const double u2 = double(splitmix64(state) >> 11) * 0x1.0p-53;
    const double radius = std::sqrt(-2.0 * std::log(u1)), angle = 2.0 * M_PI * u2;
    values[i] = float(mean + std_dev * radius * std::cos(angle));
    if (i + 1 < values.size()) values[i + 1] = float(mean + std_dev * radius * std::sin(angle));
  }
  return values;
}

void slice_tensor(const TensorSpec& spec, const float* full, float* local) {
  const Shape local_shape = spec.local_shape();
  if (spec.split == Split::Replicated) {
    std::memcpy(local, full, std::size_t(shape_numel(local_shape)) * 4);
  } else if (spec.split == Split::Rows) {
    const std::int64_t row = shape_numel(spec.global_shape) / spec.global_shape[0];
    std::memcpy(local, full + spec.begin * row, std::size_t((spec.end - spec.begin) * row) * 4);
  } else {
    const std::int64_t rows = spec.global_shape[0], cols = spec.global_shape[1], width = spec.end - spec.begin;
    for (std::int64_t r = 0; r < rows; ++r)
      std::memcpy(local + r * width, full + r * cols + spec.begin, std::size_t(width) * 4);
  }
}

void RandomWeightSource::read(const TensorSpec& spec, float* out) {
  if (cached_name_ != spec.name) {
    cached_ = random_tensor(spec, seed_);
    cached_name_ = spec.name;
  }
  slice_tensor(spec, cached_.data(), out);
}

namespace {

// The slice `spec` as stored bytes of `dtype`: straight from the source when it holds the tensor in that dtype
// (bf16 safetensors into a bf16 checkpoint: no f32 pass, half the memory), else read as f32 and rounded.
std::unique_ptr<char[]> stored_slice(WeightSource& weights, const TensorSpec& spec, DType dtype) {
  const std::size_t count = std::size_t(shape_numel(spec.local_shape()));
  std::unique_ptr<char[]> stored(new char[dtype_bytes(dtype, std::int64_t(count))]);  // every byte is written
  if (weights.read_stored(spec, dtype, stored.get())) return stored;
  if (dtype == DType::F32) {
    weights.read(spec, reinterpret_cast<float*>(stored.get()));
    return stored;
  }
  std::vector<float> values(count);
  weights.read(spec, values.data());
  convert_from_f32(dtype, values.data(), stored.get(), count);
  return stored;
}

}  // namespace

void write_shards(const ModelConfig& config, const CheckpointOptions& options, const std::string& dir,
                  WeightSource& weights, int rank, int world) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  for (int p = 0; p < options.pp; ++p) {
    std::vector<ShardPlan> plans;
    std::vector<std::unique_ptr<ShardWriter>> writers;  // null where another process writes the shard
    std::vector<std::string> paths;
    for (int t = 0; t < options.tp; ++t) {
      plans.emplace_back(config, StageCoordinates{options.tp, t, options.pp, p});
      const bool mine = (p * options.tp + t) % world == rank;
      paths.push_back((fs::path(dir) / shard_file_name(p, t)).string());
      writers.push_back(!mine
                            ? nullptr
                            : std::make_unique<ShardWriter>(paths.back() + ".partial",
                                                            nlohmann::json{{"format_version", kCheckpointFormatVersion},
                                                                           {"pp_rank", p},
                                                                           {"tp_rank", t},
                                                                           {"tensor_parallel_size", options.tp},
                                                                           {"pipeline_parallel_size", options.pp}}));
    }
    const std::vector<TensorSpec> order = plans[0].tensors();
    for (std::size_t i = 0; i < order.size(); ++i) {
      // One tensor, or a pair the stage stacks (gate_proj, up_proj), written back to back.
      const std::size_t group = ShardPlan::stacked_with_next(order[i].name) ? 2 : 1;
      STRATA_CHECK(group == 1 || (i + 1 < order.size() &&
                                  order[i + 1].name ==
                                      order[i].name.substr(0, order[i].name.rfind("gate_proj")) + "up_proj.weight"),
                   Internal, order[i].name, " is stacked with the tensor after it, which is not its up_proj");
      // Tensor by tensor across the TP ranks, so that a source caching one whole tensor produces each once.
      std::vector<std::vector<StoredTensor>> tensors(std::size_t(options.tp));
      std::vector<std::vector<std::unique_ptr<char[]>>> values(std::size_t(options.tp));
      for (std::size_t g = 0; g < group; ++g) {
        for (int t = 0; t < options.tp; ++t) {
          if (!writers[std::size_t(t)]) continue;
          const TensorSpec spec = plans[std::size_t(t)].spec(order[i + g].name);
          const DType dtype = stored_dtype(spec, options.dtype);
          STRATA_CHECK(!is_quantized(dtype) || spec.local_shape().back() % 32 == 0, Config, "tensor ", spec.name,
                       " has rows of ", spec.local_shape().back(), " weights in shard pp ", p, " tp ", t, " (",
                       shape_string(spec.global_shape), " split for tp ", options.tp, "): ", dtype_name(dtype),
                       " quantizes blocks of 32 weights of a row; choose a tensor-parallel size that keeps rows a "
                       "multiple of 32");
          values[std::size_t(t)].push_back(stored_slice(weights, spec, dtype));
          const char* split = spec.split == Split::Rows ? "rows" : spec.split == Split::Cols ? "cols" : "replicated";
          tensors[std::size_t(t)].push_back(
              StoredTensor{spec.name, spec.local_shape(), dtype, spec.global_shape, spec.global_offset(), split});
          if (g + 1 < group) continue;
          std::vector<const void*> data;  // the rank's last part is in: write and free its slices at once
          for (const auto& v : values[std::size_t(t)]) data.push_back(v.get());
          writers[std::size_t(t)]->write_adjacent(tensors[std::size_t(t)], data);
          values[std::size_t(t)].clear();
        }
      }
      i += group - 1;
    }
    for (int t = 0; t < options.tp; ++t) {
      if (!writers[std::size_t(t)]) continue;
      writers[std::size_t(t)]->close();
      fs::rename(paths[std::size_t(t)] + ".partial", paths[std::size_t(t)]);
    }
  }
}

void write_manifest(const ModelConfig& config, const CheckpointOptions& options, const std::string& dir) {
  Manifest manifest;
  manifest.model = config.to_json();
  manifest.tensor_parallel_size = options.tp;
  manifest.pipeline_parallel_size = options.pp;
  manifest.dtype = options.dtype;
  manifest.tokenizer = options.tokenizer;
  manifest.source = options.source;
  for (int p = 0; p < options.pp; ++p) {
    const auto [begin, end] = ShardPlan::layer_range(config.num_hidden_layers, options.pp, p);
    for (int t = 0; t < options.tp; ++t) manifest.shards.push_back(ShardInfo{shard_file_name(p, t), p, t, begin, end});
  }
  manifest.write(dir);
}

void write_random_checkpoint(const ModelConfig& config, const InitOptions& options, const std::string& dir) {
  const CheckpointOptions checkpoint{options.tp, options.pp, options.dtype, options.tokenizer, options.source};
  RandomWeightSource weights(options.seed);
  write_shards(config, checkpoint, dir, weights);
  write_manifest(config, checkpoint, dir);
}

}  // namespace strata
