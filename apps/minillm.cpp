// minillm command line: info | init | forward | bench.
//   minillm info    --model PRESET|config.json [--batch B --seq N]
//   minillm init    --model ... --seed S --out weights.safetensors [--dtype bf16|fp16|fp32]
//   minillm forward --model ... [--weights F | --seed S] (--ids 1,2,3 | --batch B --seq N) [--device auto|cpu|cuda]
// Errors print "error: <message naming the field and value>" and exit 1.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <sstream>

#include "minillm/engine.h"

namespace {

using namespace minillm;

struct ModelArgs {
  std::string model = "tiny";
  std::string weights;
  uint64_t seed = 0;
};

void add_model_args(CLI::App* cmd, ModelArgs& a) {
  cmd->add_option("--model", a.model, "preset (tiny, small, medium, large) or path to a config .json")->required();
}

WeightStore load_weights(const ModelConfig& c, const ModelArgs& a) {
  if (!a.weights.empty()) return WeightStore::load(a.weights, c);
  return WeightStore::random(c, a.seed, c.dtype);
}

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(tok, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != tok.size()) MINILLM_FAIL("--ids: '" << tok << "' is not an integer");
    if (v < INT32_MIN || v > INT32_MAX) MINILLM_FAIL("--ids: " << v << " is out of the int32 range");
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) MINILLM_FAIL("--ids: no token ids given");
  return ids;
}

double gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

int cmd_info(const ModelArgs& a, int B, int N) {
  const ModelConfig c = load_config(a.model);
  const double params = static_cast<double>(c.num_parameters());
  std::printf("model %s: %d layers, hidden %d, heads %d (kv %d, head_dim %d), experts %d top-%d, ffn %d, vocab %d\n",
              c.name.c_str(), c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.moe.num_experts,
              c.moe.top_k, c.moe.ffn_size, c.vocab_size);
  std::printf("parameters: %.4f B total, %.4f B active per token\n", params / 1e9, c.num_active_parameters() / 1e9);
  std::printf("weight memory: bf16/fp16 %.3f GiB, fp32 %.3f GiB\n", gib(params * 2), gib(params * 4));
  const int n = N > 0 ? N : std::min(2048, c.max_seq_len);
  const double fpt = c.flops_per_token(n);
  std::printf("FLOPs per token at seq %d: %.4f GFLOP\n", n, fpt / 1e9);
  std::printf("FLOPs per forward at batch %d x seq %d: %.4f TFLOP\n", B, n, fpt * B * n / 1e12);
  return 0;
}

int cmd_init(const ModelArgs& a, const std::string& out, const std::string& dtype) {
  const ModelConfig c = load_config(a.model);
  const DType dt = dtype.empty() ? c.dtype : parse_dtype(dtype);
  WeightStore::random(c, a.seed, dt).save(out);
  std::printf("wrote %s: %zu tensors, seed %llu, dtype %s\n", out.c_str(), weight_specs(c).size(),
              static_cast<unsigned long long>(a.seed), dtype_name(dt));
  return 0;
}

int cmd_forward(const ModelArgs& a, const std::string& ids_arg, int B, int N, const std::string& device, int top) {
  const ModelConfig c = load_config(a.model);
  std::vector<int32_t> ids;
  if (!ids_arg.empty()) {
    ids = parse_ids(ids_arg);
    B = 1;
    N = static_cast<int>(ids.size());
  } else {
    if (B <= 0) MINILLM_FAIL("--batch = " << B << " must be positive");
    if (N <= 0) MINILLM_FAIL("--seq = " << N << " must be positive");
    // Deterministic pseudo-random ids from the seed.
    ids.resize(static_cast<size_t>(B) * N);
    uint64_t s = a.seed * 0x9e3779b97f4a7c15ull + 12345;
    for (auto& id : ids) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      id = static_cast<int32_t>((s >> 33) % static_cast<uint64_t>(c.vocab_size));
    }
  }
  if (N > c.max_seq_len) MINILLM_FAIL("sequence length " << N << " exceeds the model's max_seq_len = " << c.max_seq_len);
  EngineOptions opts;
  opts.device = device;
  opts.max_batch = B;
  opts.max_seq = N;
  const WeightStore ws = load_weights(c, a);
  InferenceEngine eng(c, ws, opts);
  std::vector<float> logits = eng.forward(ids.data(), B, N);
  const double ms = eng.last_timings().ms;
  const int64_t V = c.vocab_size;
  double sum = 0, abs_sum = 0;
  bool finite = true;
  for (float v : logits) {
    sum += v;
    abs_sum += std::fabs(v);
    finite = finite && std::isfinite(v);
  }
  std::printf("model %s on %s: batch %d x seq %d, %s weights\n", c.name.c_str(), device_name(eng.device()), B, N,
              a.weights.empty() ? ("seeded (seed " + std::to_string(a.seed) + ")").c_str() : a.weights.c_str());
  for (int b = 0; b < B; ++b) {
    const float* row = logits.data() + (static_cast<int64_t>(b) * N + N - 1) * V;
    std::vector<int32_t> order(static_cast<size_t>(V));
    std::iota(order.begin(), order.end(), 0);
    const int k = std::min<int64_t>(top, V);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int32_t x, int32_t y) { return row[x] > row[y] || (row[x] == row[y] && x < y); });
    std::printf("batch %d, last position: top tokens", b);
    for (int i = 0; i < k; ++i) std::printf(" %d (%.4f)", order[i], row[order[i]]);
    std::printf("\n");
  }
  std::printf("logits checksum: sum %.6e, abs sum %.6e, finite %s\n", sum, abs_sum, finite ? "yes" : "NO");
  std::printf("forward time: %.2f ms (%.0f tokens/s)\n", ms, B * N / (ms / 1e3));
  return finite ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"minillm: a small, fast inference engine for Mixture-of-Experts transformers"};
  app.require_subcommand(1);
  ModelArgs info_a, init_a, fwd_a;
  int info_b = 1, info_n = 0;
  auto* info = app.add_subcommand("info", "parameter count, weight memory and FLOPs of a model");
  add_model_args(info, info_a);
  info->add_option("--batch", info_b, "batch size for the per-forward FLOPs");
  info->add_option("--seq", info_n, "sequence length for the FLOPs (default min(2048, max_seq_len))");

  std::string init_out, init_dtype;
  auto* init = app.add_subcommand("init", "write seeded random weights to a safetensors file");
  add_model_args(init, init_a);
  init->add_option("--seed", init_a.seed, "random seed");
  init->add_option("--out", init_out, "output .safetensors path")->required();
  init->add_option("--dtype", init_dtype, "storage dtype: bf16, fp16 or fp32 (default: the config's)");

  std::string fwd_ids, fwd_device = "auto";
  int fwd_b = 0, fwd_n = 0, fwd_top = 5;
  auto* fwd = app.add_subcommand("forward", "run one forward pass and print the top tokens at the last positions");
  add_model_args(fwd, fwd_a);
  auto* w_opt = fwd->add_option("--weights", fwd_a.weights, "safetensors weights file");
  fwd->add_option("--seed", fwd_a.seed, "seed of the random weights and ids (when no --weights / --ids)")->excludes(w_opt);
  auto* ids_opt = fwd->add_option("--ids", fwd_ids, "comma-separated token ids (batch 1)");
  fwd->add_option("--batch", fwd_b, "batch size of random ids")->excludes(ids_opt);
  fwd->add_option("--seq", fwd_n, "sequence length of random ids")->excludes(ids_opt);
  fwd->add_option("--device", fwd_device, "auto, cpu or cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  fwd->add_option("--top", fwd_top, "how many top tokens to print")->check(CLI::Range(1, 100));

  CLI11_PARSE(app, argc, argv);
  try {
    if (*info) return cmd_info(info_a, info_b, info_n);
    if (*init) return cmd_init(init_a, init_out, init_dtype);
    if (*fwd) {
      if (fwd_ids.empty() && (fwd_b == 0 || fwd_n == 0)) MINILLM_FAIL("forward: give --ids, or both --batch and --seq");
      return cmd_forward(fwd_a, fwd_ids, fwd_b, fwd_n, fwd_device, fwd_top);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
