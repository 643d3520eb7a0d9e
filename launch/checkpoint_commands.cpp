// `strata init` (random-weight checkpoint for a preset, pre-sharded) and `strata inspect`.
#include <cstdio>
#include <filesystem>

#include "io/checkpoint.h"
#include "io/tokenizer.h"
#include "launch/commands.h"
#include "launch/mpi_job.h"
#include "layers/checkpoint_weights.h"
#include "layers/presets.h"
#include "runtime/base/log.h"

namespace strata {
namespace {

template <typename F>
int guarded(F&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    log_line(LogLevel::Error, describe_error(e));
    return 1;
  }
}

ModelConfig config_from(const InitOptionsCli& o) {
  ModelConfig c = model_preset(o.preset);
  auto set = [](std::int64_t& field, std::int64_t value) {
    if (value > 0) field = value;
  };
  const std::int64_t old_heads = c.num_attention_heads;
  set(c.hidden_size, o.hidden_size);
  set(c.intermediate_size, o.intermediate_size);
  set(c.num_hidden_layers, o.num_hidden_layers);
  set(c.num_attention_heads, o.num_attention_heads);
  set(c.num_key_value_heads, o.num_key_value_heads);
  set(c.vocab_size, o.vocab_size);
  set(c.max_position_embeddings, o.max_position_embeddings);
  if (o.hidden_size > 0 || c.num_attention_heads != old_heads) c.head_dim = c.hidden_size / c.num_attention_heads;
  if (o.tie_word_embeddings >= 0) c.tie_word_embeddings = o.tie_word_embeddings == 1;
  if (o.attention_bias >= 0) c.attention_bias = o.attention_bias == 1;
  if (o.qk_norm >= 0) c.qk_norm = o.qk_norm == 1;
  STRATA_CHECK(c.head_dim * c.num_attention_heads == c.hidden_size, Usage, "hidden_size ", c.hidden_size,
               " is not divisible by num_attention_heads ", c.num_attention_heads);
  c.validate("strata init");
  return c;
}

}  // namespace

int run_init(const InitOptionsCli& o) {
  return guarded([&] {
    const ModelConfig config = config_from(o);
    check_split(config, o.tp, o.pp);
    ByteTokenizer tokenizer;
    InitOptions options;
    options.tp = o.tp;
    options.pp = o.pp;
    options.dtype = parse_dtype(o.dtype);
    options.seed = o.seed;
    options.tokenizer = tokenizer.to_json();
    options.source = {{"kind", "random"}, {"preset", o.preset}, {"seed", o.seed}};
    write_random_checkpoint(config, options, o.output);
    log_info("wrote ", o.output, ": preset ", o.preset, ", ", config.parameter_count(), " parameters, ", o.dtype, ", ",
             o.tp * o.pp, " shard(s) for tensor-parallel ", o.tp, " x pipeline-parallel ", o.pp);
    return 0;
  });
}

int run_inspect(const InspectOptions& o) {
  return guarded([&] {
    const Manifest m = Manifest::read(o.model);
    const ModelConfig config = ModelConfig::from_json(m.model, manifest_path(o.model));
    nlohmann::json report = {{"config", config.to_json()},
                             {"parameters", config.parameter_count()},
                             {"dtype", dtype_name(m.dtype)},
                             {"tensor_parallel_size", m.tensor_parallel_size},
                             {"pipeline_parallel_size", m.pipeline_parallel_size},
                             {"tokenizer", m.tokenizer},
                             {"source", m.source},
                             {"shards", nlohmann::json::array()}};
    std::int64_t verified = 0;
    for (const auto& s : m.shards) {
      const std::string path = (std::filesystem::path(o.model) / s.file).string();
      ShardReader reader(path);
      nlohmann::json shard = {{"file", s.file},
                              {"pp_rank", s.pp_rank},
                              {"tp_rank", s.tp_rank},
                              {"layers", {s.layer_begin, s.layer_end}},
                              {"bytes", std::filesystem::file_size(path)},
                              {"tensors", nlohmann::json::array()}};
      for (const auto& name : reader.tensor_names()) {
        const StoredTensor t = reader.describe(name);
        if (o.verify) {
          std::vector<float> data(static_cast<std::size_t>(shape_numel(t.shape)));
          reader.read_f32(name, t.shape, data.data());
          ++verified;
        }
        shard["tensors"].push_back({{"name", name},
                                    {"shape", t.shape},
                                    {"dtype", dtype_name(t.dtype)},
                                    {"split", t.split},
                                    {"global_shape", t.global_shape},
                                    {"global_offset", t.global_offset}});
      }
      report["shards"].push_back(shard);
    }
    if (o.json) {
      std::printf("%s\n", report.dump(2).c_str());
    } else {
      std::printf("checkpoint %s (format %d)\n", o.model.c_str(), m.format_version);
      std::printf("  model: %s, %lld parameters, hidden %lld, %lld layers, %lld heads / %lld kv heads, vocab %lld\n",
                  config.architecture.c_str(), (long long)config.parameter_count(), (long long)config.hidden_size,
                  (long long)config.num_hidden_layers, (long long)config.num_attention_heads,
                  (long long)config.num_key_value_heads, (long long)config.vocab_size);
      std::printf("  dtype %s, sharded tensor-parallel %d x pipeline-parallel %d, tokenizer %s\n", dtype_name(m.dtype),
                  m.tensor_parallel_size, m.pipeline_parallel_size, m.tokenizer.value("type", "?").c_str());
      for (const auto& shard : report["shards"]) {
        std::printf("  %s  pp %d tp %d  layers %lld-%lld  %lld bytes\n", shard["file"].get<std::string>().c_str(),
                    shard["pp_rank"].get<int>(), shard["tp_rank"].get<int>(), shard["layers"][0].get<long long>(),
                    shard["layers"][1].get<long long>() - 1, shard["bytes"].get<long long>());
        for (const auto& t : shard["tensors"])
          std::printf("    %-52s %-16s %-5s %s of %s\n", t["name"].get<std::string>().c_str(),
                      shape_string(t["shape"].get<Shape>()).c_str(), t["dtype"].get<std::string>().c_str(),
                      t["split"].get<std::string>().c_str(), shape_string(t["global_shape"].get<Shape>()).c_str());
      }
      if (o.verify) std::printf("verified %lld tensors: every checksum matches\n", (long long)verified);
    }
    return 0;
  });
}

}  // namespace strata
