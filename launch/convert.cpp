// `strata convert`: a Hugging Face model folder (config.json, safetensors, tokenizer.json; tokenizer_config.json and
// generation_config.json when there: chat template, special tokens, end ids) to a strata checkpoint
// sharded for tp x pp. Under mpirun each rank writes its own share of the shards at once; alone it writes them all.
// Peak memory is about one tensor's slice plus read buffers, never the whole model.
#include <sys/resource.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "io/chat_template.h"
#include "io/gguf.h"
#include "io/prompts.h"
#include "io/tokenizer.h"
#include "launch/commands.h"
#include "launch/mpi_job.h"
#include "layers/checkpoint_weights.h"
#include "layers/gguf_model.h"
#include "layers/hf_model.h"
#include "runtime/base/log.h"
#include "runtime/comm/mpi/mpi_communicator.h"

namespace strata {
namespace {
namespace fs = std::filesystem;

nlohmann::json read_json(const fs::path& path) {
  try {
    return nlohmann::json::parse(read_file(path.string()));
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Config, cat(path.string(), ": not valid JSON (", e.what(), ")"));
  }
}

// The tokenizer the checkpoint will name: tokenizer.json carried along, or the byte tokenizer when asked for.
nlohmann::json choose_tokenizer(const ConvertOptions& o, const ModelConfig& config) {
  const fs::path hf_tokenizer = fs::path(o.hf) / "tokenizer.json";
  if (o.tokenizer == "byte") {
    ByteTokenizer bytes;
    STRATA_CHECK(bytes.vocab_size() <= config.vocab_size, Config,
                 "--tokenizer byte needs vocab_size >= ", bytes.vocab_size(), " (the model has ", config.vocab_size,
                 ")");
    return bytes.to_json();
  }
  STRATA_CHECK(fs::exists(hf_tokenizer), Config, o.hf,
               " has no tokenizer.json; pass --tokenizer byte for a model "
               "trained on raw bytes");
  return {{"type", "huggingface"}, {"file", "tokenizer.json"}};
}

// A template this strata cannot render is kept (a later strata may), but said now: chat requests will be refused.
void warn_if_chat_template_refused(const nlohmann::json& tokenizer_config, const std::string& hf) {
  if (!tokenizer_config.is_object() || !tokenizer_config.contains("chat_template")) return;
  try {
    ChatTemplate(tokenizer_config["chat_template"].get<std::string>(), cat(hf, "'s chat template"), tokenizer_config);
  } catch (const Error& e) {
    log_warn(e.what(), "; chat requests to this checkpoint will be refused unless generate is given --chat-template");
  }
}

std::int64_t peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return std::int64_t(usage.ru_maxrss) * 1024;
}

// The dtype a GGUF's matrices are stored in (its token embedding's), for a checkpoint that keeps them so.
std::string gguf_dtype(const GgufFile& file) {
  const DType* dtype = readable_type(file.tensor("token_embd.weight").type);
  return dtype ? dtype_name(*dtype) : "bf16";  // an unreadable type is refused, naming it, when the tensor is read
}

// A GGUF file: config and tokenizer from its metadata, weights dequantized from its tensors (and quantized again
// for a q8_0 / q4_0 checkpoint, which gives back the same blocks).
int convert_gguf(const ConvertOptions& o, bool dtype_given, int rank, int world) {
  const GgufFile file(o.gguf);
  const ModelConfig config = config_from_gguf(file);
  check_split(config, o.tp, o.pp);
  const std::string dtype = dtype_given ? o.dtype : gguf_dtype(file);
  CheckpointOptions options{o.tp, o.pp, parse_dtype(dtype), nlohmann::json::object(), nlohmann::json::object()};
  const nlohmann::json tokenizer = o.tokenizer == "byte" ? nlohmann::json() : gguf_tokenizer_json(file);
  if (o.tokenizer == "byte") {
    options.tokenizer = ByteTokenizer().to_json();
  } else {
    options.tokenizer = {{"type", "huggingface"}, {"file", "tokenizer.json"}};
    options.source["generation_config"] = gguf_generation_config(file);
  }
  options.source["kind"] = "gguf";
  options.source["path"] = fs::absolute(o.gguf).string();
  GgufWeightSource weights(file, config);
  fs::create_directories(o.output);
  write_shards(config, options, o.output, weights, rank, world);
  STRATA_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
  if (rank == 0) {
    if (!tokenizer.is_null()) std::ofstream(fs::path(o.output) / "tokenizer.json") << tokenizer.dump();
    write_manifest(config, options, o.output);
    log_info("converted ", o.gguf, " (", config.parameter_count(), " parameters) to ", o.output,
             " for tensor-parallel ", o.tp, " x pipeline-parallel ", o.pp, " (", dtype, ")");
  }
  return 0;
}

int convert(const ConvertOptions& o, bool dtype_given) {
  int rank = 0, world = 1;
  STRATA_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  STRATA_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world));
  if (!o.gguf.empty()) return convert_gguf(o, dtype_given, rank, world);
  const auto start = std::chrono::steady_clock::now();
  const fs::path config_path = fs::path(o.hf) / "config.json";
  STRATA_CHECK(fs::exists(config_path), Config, o.hf, " has no config.json (is it a Hugging Face model folder?)");
  const nlohmann::json hf_config = read_json(config_path);
  const ModelConfig config = config_from_hf(hf_config, config_path.string());
  check_split(config, o.tp, o.pp);

  CheckpointOptions options{o.tp, o.pp, parse_dtype(o.dtype), choose_tokenizer(o, config), nlohmann::json::object()};
  options.source = {{"kind", "huggingface"},
                    {"path", fs::absolute(o.hf).string()},
                    {"model_type", hf_config.value("model_type", "")}};
  if (nlohmann::json generation = generation_config_from_hf(o.hf); !generation.is_null())
    options.source["generation_config"] = std::move(generation);
  // The chat template and special tokens (chat requests are rendered with them; eos_token also ends generation).
  const nlohmann::json tokenizer_config = tokenizer_config_from_hf(o.hf);
  if (!tokenizer_config.is_null()) options.source["tokenizer_config"] = tokenizer_config;
  if (rank == 0) warn_if_chat_template_refused(tokenizer_config, o.hf);

  HfWeightSource weights(o.hf);
  fs::create_directories(o.output);
  write_shards(config, options, o.output, weights, rank, world);
  STRATA_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));  // every shard written before the manifest makes it a checkpoint
  if (rank == 0) {
    if (options.tokenizer.value("type", "") == "huggingface")
      fs::copy_file(fs::path(o.hf) / "tokenizer.json", fs::path(o.output) / "tokenizer.json",
                    fs::copy_options::overwrite_existing);
    write_manifest(config, options, o.output);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::uintmax_t bytes = 0;
    for (const auto& entry : fs::directory_iterator(o.hf))
      if (entry.path().extension() == ".safetensors") bytes += entry.file_size();
    log_info("converted ", o.hf, " (", config.parameter_count(), " parameters, ", bytes / 1000000,
             " MB of safetensors) to ", o.output, " for tensor-parallel ", o.tp, " x pipeline-parallel ", o.pp, " (",
             dtype_name(options.dtype), ") on ", world, " rank(s) in ", seconds, " s: ", double(bytes) / seconds / 1e9,
             " GB/s; peak memory of rank 0: ", peak_rss_bytes() / 1000000, " MB");
  }
  return 0;
}

}  // namespace

int run_convert(const ConvertOptions& options, int argc, char** argv) {
  const bool dtype_given = options.dtype_given;
  return run_as_mpi_job(argc, argv, [&](const NodeInfo&) { return convert(options, dtype_given); });
}

}  // namespace strata
