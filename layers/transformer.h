// TransformerStage: the layers one pipeline stage holds, at one tensor-parallel rank, with their weights, KV cache
// and activation workspace (all allocated at construction; forward() allocates nothing).
// The forward pass reads like the model: embed (first stage) -> decoder blocks -> final norm + LM head (last stage).
// A decoder block is the local computation plus one all-reduce after o_proj and one after down_proj.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "layers/shard_plan.h"
#include "runtime/backend/backend.h"
#include "runtime/comm/communicator.h"

namespace strata {

// Where weights come from (a checkpoint shard, or memory in tests). read() fills `out` (local_shape elements, f32)
// with the slice `spec` describes, or throws naming the tensor.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual void read(const TensorSpec& spec, float* out) = 0;
  // Reads the tensor into `out` as `dtype` without going through f32 when the source stores it that way; false
  // (nothing read) when it cannot, and the caller reads f32 and converts.
  virtual bool read_stored(const TensorSpec& spec, DType dtype, void* out) { return false; }
  // The slices `parts`, stored back to back as `dtype`, in place in read-only host memory the returned Buffer keeps
  // alive (a checkpoint's mapping of the page cache): no copy, no fresh memory. An empty Buffer when the source
  // cannot serve them so; the caller then reads them.
  virtual Buffer map_stored(const std::vector<TensorSpec>& parts, DType dtype) { return {}; }
};

struct StageLimits {
  std::int32_t max_tokens = 0;   // tokens in one forward step (sum over sequences)
  std::int32_t max_seqs = 0;     // sequences in one step
  std::int32_t max_seq_len = 0;  // positions per sequence
  std::int32_t kv_blocks = 0;    // blocks in the paged KV cache (0: max_seqs whole contexts' worth)
  std::int32_t block_size = 16;  // positions per KV-cache block
  // Steps of at least this many tokens run with sequence parallelism where they can (0: never): see
  // TransformerStage.
  std::int32_t sequence_parallel_tokens = 0;
  // Sequence parallelism's rows split evenly over the ranks, instead of by their measured speeds (TransformerStage).
  bool even_row_shares = false;
  // Otherwise the shares move once the steps since they last moved hold this many seconds of the ranks' work on
  // their own rows (summed over the group): two 2048-token prefill steps of the 100m model, or ~60 decode steps of
  // 64 sequences, whose waits alone (+-1 ms against ~0.8 ms of such work) would throw the shares about.
  double row_share_window = 0.05;
  // The blocks the cache has: kv_blocks, or enough for max_seqs sequences of max_seq_len each.
  std::int64_t cache_blocks() const;
};

// Bytes this stage will allocate for weights, KV cache and workspace, for memory checks before loading. The dtypes
// are the backend's (Backend::weight_dtype / activation_dtype; logits are always f32).
// kv_cache: the paged pool (grows with its blocks); kv_windows: the sliding-window layers' per-sequence caches.
struct StageMemory {
  std::int64_t weights = 0, kv_cache = 0, kv_windows = 0, workspace = 0;
  std::int64_t total() const { return weights + kv_cache + kv_windows + workspace; }
};

// A sliding-window layer keeps only its window: each sequence slot has a ring of this many blocks, where position p
// lives in ring block (p / block_size) % ring, enough for the window plus one step's tokens. 0 when no layer slides
// or the ring would be no smaller than a whole context (the layer then uses the paged pool like the others).
std::int64_t sliding_ring_blocks(const ModelConfig& config, const StageLimits& limits);
// kv: the KV cache's dtype (Backend::kv_dtype), the activations' by default.
StageMemory estimate_stage_memory(const ShardPlan& plan, const StageLimits& limits, DType weights = DType::F32,
                                  DType activations = DType::F32, std::optional<DType> kv = std::nullopt);

// Mixture-of-experts load, counted by the stage since it was built. per_expert[e]: routing choices of expert e over
// this stage's MoE layers, counted by the tensor-parallel rank that owns the token's slice (so that sums over every
// rank of a run count each choice once); rows_computed: (token, expert) rows this rank's experts computed.
struct ExpertLoad {
  std::vector<std::int64_t> per_expert;
  std::int64_t rows_computed = 0;
};

// Sequence parallelism (Megatron's, for a tensor-parallel group whose activations are in host memory: the CPU
// backend's; dense models): in a step of at least StageLimits::sequence_parallel_tokens tokens, each row-parallel
// output is reduce-scattered instead of all-reduced, each rank adds its share of the rows (tokens) to the residual
// stream and normalizes them, and the next products gather every rank's rows as the backend reads them
// (Backend::linears_of_shares: quantized, or rounded to bf16). So the work a tp rank repeated on every token (the
// norms, the activations' quantization) is split over the group, as one rank's threads split it, and the ranks
// exchange a quarter (q8_0 blocks) or half (bf16) of the f32 bytes. The same bits as without it (row-wise ops on
// fewer rows; sums in the same order), however the rows are shared. Where the group shares memory the exchanges run
// in rounds (runtime/base/shared_rows.h), not meetings: each rank computes the other ranks' rows of a row-parallel
// output first and hands them over, and computes its own rows' products while the others' rows arrive.
//
// The rows are shared by the ranks' speeds: a group meets at every layer's sums, so a rank on a slower core (a VM's
// vCPUs can run the same work 5-20% apart for tens of seconds, docs/performance.md) holds every other rank at its
// pace, which one rank's threads, sharing each loop as they go, never do. Each sequence-parallel step times every
// rank's waits in the exchanges and its work on its own rows; once the steps since the shares last moved hold
// StageLimits::row_share_window of such work, the shares move rows from the ranks that made the others wait to those
// that waited (rebalance_fractions, runtime/base/row_starts.h), every rank computing the same shares from the same
// exchanged timings. Only the rows' own work moves (the norms, the activations' quantization; a few percent of a
// step): the products and attention stay split by the weights.

class TransformerStage {
 public:
  // Loads every tensor of `plan` from `source` into `backend` memory. `tp` is this rank's tensor-parallel group
  // (collective all-reduces in forward); both must outlive the stage.
  TransformerStage(const ShardPlan& plan, WeightSource& source, Backend& backend, Collectives& tp,
                   const StageLimits& limits);
  // Not copied or moved: its row gatherer (shares_) and its layers point into it.
  TransformerStage(const TransformerStage&) = delete;
  TransformerStage& operator=(const TransformerStage&) = delete;
  ~TransformerStage();

  const ShardPlan& plan() const { return plan_; }
  const StageLimits& limits() const { return limits_; }
  std::int64_t hidden_size() const { return plan_.config().hidden_size; }
  Backend& backend() const { return backend_; }

  // One step over `chunks` (token rows laid out back to back; each chunk's KV-cache blocks listed in block_table
  // from its table_offset, see runtime/backend/kv_blocks.h). First stage: token_ids[T] are embedded; other stages:
  // hidden_in[T, hidden] is the previous stage's output. Returns the hidden state [T, hidden] (host view valid until
  // the next call; f32 host memory whatever the backend) on non-last stages; on the last stage returns the local
  // logits [chunks, local_vocab] (f32, in the backend's memory: see Backend::sample_candidates / download) of each
  // chunk's last token. Collective over tp.
  TensorView forward(std::span<const SeqChunk> chunks, std::span<const std::int32_t> block_table,
                     std::span<const std::int32_t> token_ids, const float* hidden_in);

  // Copies KV-cache block `from` into block `to` in every local layer: a sequence that shares another's prompt
  // (n samples) shares its full blocks and gets a copy of the partly filled last one. Call outside forward (between
  // steps); every rank of the stage does the same copies.
  void copy_block(std::int32_t from, std::int32_t to);

  // Copies the sliding-window caches of sequence slot `from` into slot `to` (a forked sample takes over its first
  // sample's windows); nothing when the model keeps none. Call outside forward, as copy_block.
  void copy_slot(std::int32_t from, std::int32_t to);

  const ExpertLoad& expert_load() const { return expert_load_; }
  // Bytes of weights the backend rearranged into its own layout at load (Backend::prepare_weight: a copy, so
  // weights served in place from the page cache no longer are).
  std::int64_t rearranged_bytes() const { return rearranged_bytes_; }
  // Sequence parallelism's shares of a step's rows, one a rank (even until a step has been measured; empty without
  // sequence parallelism).
  std::span<const double> row_fractions() const { return row_fractions_; }

 private:
  struct LayerWeights {
    Tensor input_norm, q, k, v, q_bias, k_bias, v_bias, q_norm, k_norm, o, post_norm, gate_up, down;
    Tensor pre_ff_norm, post_ff_norm;  // Gemma's sandwich norms
    // Mixture of experts: router [experts, hidden], this rank's experts (stacked gate/up, down), shared expert.
    Tensor router, shared_gate_up, shared_down, shared_gate;
    std::vector<Tensor> expert_gate_up, expert_down;
    std::int32_t window = 0;  // sliding-window size of this layer's attention (0: whole context)
    bool ring = false;        // its caches are per-slot rings (sliding_ring_blocks), not the paged pool
    const RopeParams* rope = nullptr;
  };
  // One token's routing: its top-k experts and their weights.
  struct Route {
    std::vector<std::int32_t> experts;
    std::vector<float> weights;
  };
  Tensor load(WeightSource& source, const TensorSpec& spec);
  // A norm weight, (1 + w) for models whose RMSNorm multiplies by that (Gemma).
  Tensor load_norm(WeightSource& source, const TensorSpec& spec);
  void load_layer(WeightSource& source, std::int64_t layer);
  void allocate_workspace();
  // The MLP half of a block on x[tokens, hidden]: its output (partial over tp ranks where combine_mlp sums it) in
  // proj_.
  void mlp(const LayerWeights& w, std::int64_t tokens);
  void moe_mlp(const LayerWeights& w, std::int64_t tokens);
  void route(std::int64_t tokens);
  void run_experts(const LayerWeights& w, std::int64_t tokens, TensorView out);
  void shared_expert(const LayerWeights& w, std::int64_t tokens, TensorView out);
  // Expert parallelism: each rank's partial outputs for the tokens it touched go by all-to-all to the rank owning
  // the token's slice, which sums them; an all-gather then gives every rank every token's output.
  void combine_experts(std::int64_t tokens, TensorView out);
  bool touches(int tp_rank, std::int64_t token) const;
  Tensor load_stacked(WeightSource& source, const TensorSpec& first, const TensorSpec& second);
  Tensor load_rows(WeightSource& source, const std::vector<TensorSpec>& parts, std::int64_t rows);
  Tensor prepared(Tensor weight);  // Backend::prepare_weight, counted in rearranged_bytes_
  void decoder_block(std::size_t layer, std::span<const SeqChunk> chunks, std::span<const std::int32_t> block_table,
                     std::int64_t tokens);
  void build_ring_table(std::span<const SeqChunk> chunks);
  // RoPE on x[tokens, heads, head_dim] with the layer's frequencies, or per run of tokens with longrope's short or
  // long ones.
  void rotate(const TensorView& x, std::int64_t tokens, const RopeParams& rope);
  TensorView run_step(std::span<const SeqChunk> chunks, std::span<const std::int32_t> block_table,
                      std::span<const std::int32_t> token_ids, const float* hidden_in, std::int64_t tokens);
  // The tensor-parallel all-reduce, skipped while a step graph replays (the graph holds it).
  void all_reduce(TensorView data);
  // Sequence parallelism: whether this stage can run it, and for the step: this rank's rows of a [tokens, ...]
  // workspace tensor (all of them without it), the sums of a row-parallel output's rows (sum_over_tp's result:
  // proj_'s rows, or share_'s), and products of the normed activations (linears, or linears_of_shares).
  bool splits_rows() const;
  // Whether the row-parallel outputs' sums can be made where they are used, from the group's shared memory (f32 host
  // activations, a tp group, no mixture of experts): under sequence parallelism or not.
  bool fuses_sums() const;
  // This step's shares (shares_.starts), moved where the timings since they last moved ask for it. Collective.
  void share_rows(std::int64_t tokens);
  TensorView own_rows(const Tensor& t, std::int64_t tokens) const;
  TensorView summed(std::int64_t tokens);
  void sum_over_tp(std::int64_t tokens);
  // h_own += the sums of proj_'s rows, then x_own = its RMSNorm times weight (add_sums_and_norm) or nothing more
  // (add_sums): fused with the reduce-scatter or all-reduce where the group shares memory (see sum_over_tp).
  bool sums_as_parts(std::int64_t tokens, const Collectives::PartsUser& fused);
  void add_sums_and_norm(std::int64_t tokens, const Tensor& weight, TensorView x_own);
  void add_sums(std::int64_t tokens);
  void products_of_normed(TensorView x, std::span<const TensorView> ws, std::span<const TensorView> biases,
                          std::span<const TensorView> ys);
  // Sequence parallelism's rounds (share_rounds, row_parallel, parts_of_round; runtime/base/shared_rows.h).
  class TimedRounds;
  void share_rounds();
  using RowsProduct = std::function<void(std::int64_t first, std::int64_t last)>;
  void row_parallel(std::int64_t tokens, const RowsProduct& product);
  void parts_of_round(std::int64_t tokens, const Collectives::PartsUser& use);
  void gather_last_rows(const TensorView& h, const TensorView& last);

  ShardPlan plan_;
  Backend& backend_;
  Collectives& tp_;
  StageLimits limits_;
  std::int64_t rearranged_bytes_ = 0;
  std::vector<float> load_staging_;      // load_rows' f32 staging for non-f32 or device weights; freed after loading
  RopeParams rope_, rope_local_;         // local: sliding layers of a model with its own local rotary base (Gemma 3)
  RopeParams rope_long_;                 // longrope's long factors (Phi-3 128k); empty inv_freq when the model has none
  std::vector<std::uint8_t> long_rope_;  // per token of the step: rotate with rope_long_

  Tensor embed_, final_norm_, lm_head_;
  std::vector<LayerWeights> layers_;
  // Per local layer: [blocks, block_size, local_kv_heads, head_dim]; ring layers [slots x ring_blocks_, ...].
  std::vector<Tensor> k_cache_, v_cache_;
  std::int64_t ring_blocks_ = 0;
  std::vector<SeqChunk> ring_chunks_;     // the step's chunks, their table offsets into ring_table_
  std::vector<std::int32_t> ring_table_;  // each chunk's ring blocks: slot * ring_blocks_ + block % ring_blocks_

  // Workspace, sized for limits_.max_tokens rows.
  Tensor hidden_, normed_, q_, k_, v_, attn_, proj_, gate_up_, act_, last_rows_, logits_;
  Tensor hidden_host_;  // f32 host copy of the output hidden state, for backends whose memory is not the host's
  // Mixture-of-experts workspace: router logits (f32), an expert's rows in / gate-up / activation / out, the shared
  // expert's gate, and the expert-parallel exchange buffers.
  Tensor router_logits_, expert_in_, expert_gate_up_, expert_act_, expert_out_, shared_gate_logits_;
  Tensor send_rows_, recv_rows_, token_slice_, gathered_;
  std::vector<float> router_host_;
  std::vector<Route> routes_;
  std::vector<std::int32_t> moe_rows_;
  std::vector<float> moe_weights_;
  ExpertLoad expert_load_;
  std::vector<std::int32_t> positions_, last_row_index_;
  bool replaying_ = false;
  bool sequence_parallel_ = false;  // this step's
  bool sums_pending_ = false;       // proj_ holds partial sums whose reduce-scatter or all-reduce waits (sum_over_tp)
  bool proj_shared_ = false;        // proj_ lives in the group's shared workspace
  RowShares shares_;                // this step's rows per rank
  Tensor share_;                    // this rank's rows of a reduce-scatter's sums
  // The shares' fractions of a step's rows (one a rank, the same on every rank), and what this rank measured since
  // they last moved (seconds waiting, seconds on its own rows' work, its rows).
  std::vector<double> row_fractions_;
  ShareTiming share_timing_;
  std::vector<ShareTiming> share_timings_;  // every rank's, exchanged each sequence-parallel step
  double products_began_ = 0;               // when linears_of_shares was called (monotonic seconds; 0: not in one)
  // The rounds on proj_ and on the products' inputs (input_rows_), timed; null where the group has none.
  std::unique_ptr<TimedRounds> proj_rounds_, input_rounds_;
  Buffer input_rows_;
  std::vector<const float*> parts_;        // parts_of_round's
  std::vector<std::int64_t> last_starts_;  // gather_last_rows': each rank's first of the head's rows
};

}  // namespace strata
