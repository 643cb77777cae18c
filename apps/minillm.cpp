// minillm command line: info | init | forward | bench | generate.
//   minillm info    --model PRESET|config.json [--batch B --seq N]
//   minillm init    --model ... --seed S --out weights.safetensors [--dtype bf16|fp16|fp32]
//   minillm forward --model ... [--weights F | --seed S] (--ids 1,2,3 | --batch B --seq N) [--device auto|cpu|cuda]
//                   [--top K] [--out logits.npy]
//   minillm bench   --model ... --batch B --seq N [--warmup W --iters I --logits bf16|f32 --no-graphs]
//     (CUDA) latency (median ms per forward), tokens/s, peak GPU memory, TFLOP/s vs a measured
//     8192^3 bf16 cuBLAS GEMM, bandwidth vs a measured 1 GiB device copy, and time per op kind.
//   minillm generate --model ... [--weights F | --weight-seed S] (--prompt TEXT | --prompt-ids 1,2,3) [--stop STR ...
//     --tokenizer DIR --max-tokens N --temperature T --top-p P --top-k K --min-p M --seed S --ignore-eos --device D
//     --max-model-len L --num-kv-tokens N]
//     --prompt: the text is encoded with the model directory's tokenizer (or --tokenizer DIR) and the
//     generated text is streamed to stdout (whole characters only); --stop strings end it, matched on
//     the text across token boundaries and not printed. --prompt-ids: the generated ids are printed.
//     Then time to first token and tokens/s on stderr.
//   minillm serve   --model DIR [...]: the OpenAI-compatible server; hands over to
//                   `python3 -m minillm serve` with this tree's python/ first on the path (docs/SERVER.md)
//   minillm --version
// Exit codes: 0 success; 1 error ("error: <message naming the field and value>" on stderr: bad
// input, config, weights, not enough memory); 2 usage error (the command line does not parse:
// unknown option, missing or malformed value); 3 forward ran but produced non-finite logits.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <filesystem>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "minillm/checkpoint.h"
#include "minillm/engine.h"
#include "minillm/llm_engine.h"
#include "minillm/tokenizer.h"

#ifdef MINILLM_WITH_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "minillm/core/cuda_check.h"
#endif

namespace {

using namespace minillm;

constexpr int kExitError = 1, kExitUsage = 2, kExitNonFinite = 3;

struct ModelArgs {
  std::string model = "tiny";
  std::string weights;
  bool weights_given = false;
  uint64_t seed = 0;
};

void add_model_args(CLI::App* cmd, ModelArgs& a) {
  cmd->add_option("--model", a.model,
                  "preset (tiny, small, medium, large), path to a config .json, or a Hugging Face model directory")
      ->required();
}

WeightStore load_weights(const ModelConfig& c, const ModelArgs& a) {
  if (a.weights_given) {
    if (a.weights.empty()) MINILLM_FAIL("--weights: empty path (leave --weights out for seeded random weights)");
    return WeightStore::load(a.weights, c);
  }
  return WeightStore::random(c, a.seed, c.dtype);
}

// The engine for --model: a Hugging Face model directory (a progress line per shard on stderr), or a
// config with --weights / seeded weights.
std::unique_ptr<InferenceEngine> make_engine(const ModelConfig& c, const ModelArgs& a, EngineOptions o) {
  if (!is_model_dir(a.model)) {
    const WeightStore ws = load_weights(c, a);
    return std::make_unique<InferenceEngine>(c, ws, o);
  }
  if (a.weights_given) MINILLM_FAIL("--weights: not used with a model directory (" << a.model << ")");
  o.on_load_progress = [](const LoadProgress& p) {
    const std::string name = std::filesystem::path(p.file).filename().string();
    const bool gb = p.total_bytes >= 1e9;  // GB for real models, MB for small ones
    const double unit = gb ? 1e9 : 1e6;
    std::fprintf(stderr, "loaded shard %d/%d %s: %.2f of %.2f %s in %.2f s (%.2f GB/s)\n", p.shard, p.num_shards,
                 name.c_str(), p.bytes / unit, p.total_bytes / unit, gb ? "GB" : "MB", p.seconds,
                 p.seconds > 0 ? p.bytes / 1e9 / p.seconds : 0.0);
  };
  return std::make_unique<InferenceEngine>(a.model, o);
}

// "1,2,3" -> ids. Every comma-separated entry must be a decimal int32 (no empty entry).
std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  size_t start = 0;
  for (size_t pos = 0;; ++pos) {
    const size_t end = s.find(',', start);
    const std::string tok = s.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (tok.empty()) MINILLM_FAIL("--ids: entry " << pos << " is empty (give comma-separated integers: 1,2,3)");
    int64_t v = 0;
    const char* first = tok.data() + (tok[0] == '+' ? 1 : 0);
    const auto r = std::from_chars(first, tok.data() + tok.size(), v);
    if (r.ec == std::errc::result_out_of_range || (r.ec == std::errc() && (v < INT32_MIN || v > INT32_MAX)))
      MINILLM_FAIL("--ids: entry " << pos << " = " << excerpt(tok) << " is out of the int32 range");
    if (r.ec != std::errc() || r.ptr != tok.data() + tok.size())
      MINILLM_FAIL("--ids: " << excerpt(tok) << " is not an integer");
    ids.push_back(static_cast<int32_t>(v));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return ids;
}

// Parameter counts in billions ("2.58 B") or, below a billion, millions ("0.26 M").
std::string format_count(int64_t n) {
  char buf[64];
  const double x = static_cast<double>(n);
  std::snprintf(buf, sizeof buf, x >= 1e9 ? "%.2f B" : "%.2f M", x >= 1e9 ? x / 1e9 : x / 1e6);
  return buf;
}
// FLOPs with an SI prefix: "1.58 GFLOP", "421.12 kFLOP".
std::string format_flops(double f) {
  const char* units[] = {"FLOP", "kFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP", "EFLOP"};
  int u = 0;
  while (f >= 1000 && u < 6) f /= 1000, ++u;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f %s", f, units[u]);
  return buf;
}

void check_positive(const char* opt, int v) {
  if (v <= 0) MINILLM_FAIL(opt << " = " << v << " must be positive");
}

// Writes a float32 array as a .npy file (format version 1.0).
void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims.substr(0, dims.size() - 2) +
                       (shape.size() == 1 ? "," : "") + "), }";
  header.append(64 - (10 + header.size() + 1) % 64, ' ');  // magic + version + length = 10 bytes; data 64-aligned
  header += '\n';
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) MINILLM_FAIL("--out: cannot write " << excerpt(path, 256));
  const uint16_t hl = static_cast<uint16_t>(header.size());
  const char magic[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  f.write(magic, 8);
  const char len[2] = {static_cast<char>(hl & 0xff), static_cast<char>(hl >> 8)};
  f.write(len, 2);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * 4));
  if (!f) MINILLM_FAIL("--out: error writing " << excerpt(path, 256));
}

int cmd_info(const ModelArgs& a, int B, int N) {
  const ModelConfig c = load_config(a.model);
  check_positive("--batch", B);
  if (N < 0) check_positive("--seq", N);
  if (N > c.max_seq_len) MINILLM_FAIL("--seq = " << N << " exceeds the model's max_seq_len = " << c.max_seq_len);
  const int64_t params = c.num_parameters();
  std::printf("model %s: %d layers, hidden %d, heads %d (kv %d, head_dim %d), experts %d top-%d, ffn %d, vocab %d\n",
              c.name.c_str(), c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.moe.num_experts,
              c.moe.top_k, c.moe.ffn_size, c.vocab_size);
  std::printf("parameters: %s total (%lld), %s active per token\n", format_count(params).c_str(),
              static_cast<long long>(params), format_count(c.num_active_parameters()).c_str());
  std::printf("weight memory: bf16/fp16 %s, fp32 %s\n", format_bytes(params * 2.0).c_str(),
              format_bytes(params * 4.0).c_str());
  const int n = N > 0 ? N : std::min(2048, c.max_seq_len);
  const double fpt = c.flops_per_token(n);
  std::printf("FLOPs per token at seq %d: %s\n", n, format_flops(fpt).c_str());
  std::printf("FLOPs per forward at batch %d x seq %d: %s\n", B, n, format_flops(fpt * B * n).c_str());
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

struct ForwardArgs {
  std::string ids, device = "auto", out;
  int batch = 0, seq = 0, top = 5;
  bool batch_given = false, seq_given = false, out_given = false;
};

int cmd_forward(const ModelArgs& a, const ForwardArgs& f) {
  const ModelConfig c = load_config(a.model);
  std::vector<int32_t> ids;
  int B = f.batch, N = f.seq;
  if (f.out_given && (f.out.size() < 5 || !f.out.ends_with(".npy")))
    MINILLM_FAIL("--out: " << excerpt(f.out, 256) << " must name a .npy file (the logits as float32 [batch, seq, vocab])");
  if (!f.ids.empty()) {
    ids = parse_ids(f.ids);
    B = 1;
    if (ids.size() > static_cast<size_t>(c.max_seq_len))
      MINILLM_FAIL("--ids: " << ids.size() << " ids exceed the model's max_seq_len = " << c.max_seq_len);
    N = static_cast<int>(ids.size());
  } else {
    if (f.seq_given && !f.batch_given) MINILLM_FAIL("forward: --seq needs --batch too (or give --ids)");
    if (f.batch_given && !f.seq_given) MINILLM_FAIL("forward: --batch needs --seq too (or give --ids)");
    if (!f.batch_given) MINILLM_FAIL("forward: give --ids, or both --batch and --seq");
    check_positive("--batch", B);
    check_positive("--seq", N);
    if (N > c.max_seq_len) MINILLM_FAIL("--seq = " << N << " exceeds the model's max_seq_len = " << c.max_seq_len);
  }
  EngineOptions opts;
  opts.device = f.device;
  opts.max_batch = B;
  opts.max_seq = N;
  // Before anything large is allocated (ids, weights, engine): does batch x seq fit?
  check_memory(estimate_memory(c, B, N, opts), B, N, !is_model_dir(a.model));  // a model directory is never copied to the host
  if (f.ids.empty()) {
    // Deterministic pseudo-random ids from the seed.
    ids.resize(static_cast<size_t>(B) * N);
    uint64_t s = a.seed * 0x9e3779b97f4a7c15ull + 12345;
    for (auto& id : ids) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      id = static_cast<int32_t>((s >> 33) % static_cast<uint64_t>(c.vocab_size));
    }
  }
  const auto engine = make_engine(c, a, opts);
  InferenceEngine& eng = *engine;
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
              is_model_dir(a.model) ? "checkpoint"
              : a.weights_given  ? a.weights.c_str()
                                 : ("seeded (seed " + std::to_string(a.seed) + ")").c_str());
  const int k = static_cast<int>(std::min<int64_t>(f.top, V));
  std::printf("logits: float32 [%d, %d, %lld]; the %d largest at the last position of each sequence, as token id: logit\n",
              B, N, static_cast<long long>(V), k);
  for (int b = 0; b < B; ++b) {
    const float* row = logits.data() + (static_cast<int64_t>(b) * N + N - 1) * V;
    std::vector<int32_t> order(static_cast<size_t>(V));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int32_t x, int32_t y) { return row[x] > row[y] || (row[x] == row[y] && x < y); });
    std::printf("  batch %d, position %d:", b, N - 1);
    for (int i = 0; i < k; ++i) std::printf(" %d: %.4f%s", order[i], row[order[i]], i + 1 < k ? "," : "");
    std::printf("\n");
  }
  std::printf("logits checksum: sum %.6e, abs sum %.6e, finite %s\n", sum, abs_sum, finite ? "yes" : "NO");
  std::printf("forward time: %.2f ms (%.0f tokens/s)\n", ms, B * N / (ms / 1e3));
  if (f.out_given) {
    write_npy(f.out, logits.data(), {B, N, V});
    std::printf("wrote %s: logits float32 [%d, %d, %lld]\n", f.out.c_str(), B, N, static_cast<long long>(V));
  }
  if (!finite) {
    std::fprintf(stderr, "error: the logits are not all finite (exit code %d)\n", kExitNonFinite);
    return kExitNonFinite;
  }
  return 0;
}

#ifdef MINILLM_WITH_CUDA
// RAII device allocation for the measurements below.
struct DeviceMem {
  void* p = nullptr;
  explicit DeviceMem(size_t bytes) { MINILLM_CUDA_CHECK(cudaMalloc(&p, bytes)); }
  ~DeviceMem() { cudaFree(p); }
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
};

double gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median milliseconds of `iters` runs of `body` on `s`, each bracketed by events, after 3 warm-ups.
double time_ms(cudaStream_t s, int iters, const std::function<void()>& body) {
  for (int i = 0; i < 3; ++i) body();
  std::vector<cudaEvent_t> ev(2 * static_cast<size_t>(iters));
  for (auto& e : ev) MINILLM_CUDA_CHECK(cudaEventCreate(&e));
  for (int i = 0; i < iters; ++i) {
    MINILLM_CUDA_CHECK(cudaEventRecord(ev[2 * i], s));
    body();
    MINILLM_CUDA_CHECK(cudaEventRecord(ev[2 * i + 1], s));
  }
  MINILLM_CUDA_CHECK(cudaStreamSynchronize(s));
  std::vector<double> ms(static_cast<size_t>(iters));
  for (int i = 0; i < iters; ++i) {
    float m = 0;
    MINILLM_CUDA_CHECK(cudaEventElapsedTime(&m, ev[2 * i], ev[2 * i + 1]));
    ms[i] = m;
  }
  for (auto& e : ev) cudaEventDestroy(e);
  return median(ms);
}

// The device's matmul ceiling (bf16 8192^3 cuBLAS GEMM, fp32 accumulation) in TFLOP/s, and its copy
// ceiling (1 GiB device-to-device, bytes read + written) in GB/s. Random inputs, never zeros.
std::pair<double, double> measure_peaks(cudaStream_t s) {
  const int64_t n = 8192;
  const size_t bytes = static_cast<size_t>(n * n) * 2;
  std::vector<uint16_t> host(static_cast<size_t>(n * n));
  uint64_t r = 88172645463325252ull;
  for (auto& h : host) {
    r ^= r << 13, r ^= r >> 7, r ^= r << 17;
    h = f32_to_bf16(static_cast<float>(r >> 40) * (1.0f / 16777216.0f) - 0.5f);
  }
  double tflops = 0, gbps = 0;
  {
    DeviceMem a(bytes), b(bytes), c(bytes);
    MINILLM_CUDA_CHECK(cudaMemcpy(a.p, host.data(), bytes, cudaMemcpyHostToDevice));
    MINILLM_CUDA_CHECK(cudaMemcpy(b.p, host.data(), bytes, cudaMemcpyHostToDevice));
    cublasHandle_t h = nullptr;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) MINILLM_FAIL("bench: cublasCreate failed");
    cublasSetStream(h, s);
    const float alpha = 1.f, beta = 0.f;
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    const double ms = time_ms(s, 10, [&] {
      st = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, a.p, CUDA_R_16BF, n, b.p, CUDA_R_16BF, n, &beta,
                        c.p, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    });
    cublasDestroy(h);
    if (st != CUBLAS_STATUS_SUCCESS) MINILLM_FAIL("bench: the reference cuBLAS GEMM failed (status " << st << ")");
    tflops = 2.0 * n * n * n / (ms * 1e-3) / 1e12;
  }
  {
    const size_t gib = size_t{1} << 30;
    DeviceMem src(gib), dst(gib);
    MINILLM_CUDA_CHECK(cudaMemsetAsync(src.p, 0x3c, gib, s));
    const double ms = time_ms(s, 10, [&] {
      MINILLM_CUDA_CHECK(cudaMemcpyAsync(dst.p, src.p, gib, cudaMemcpyDeviceToDevice, s));
    });
    gbps = 2.0 * static_cast<double>(gib) / (ms * 1e-3) / 1e9;
  }
  return {tflops, gbps};
}

// Bytes a forward must move at least: every weight once, and each op's activations read and
// written once (qkv, rope on q and k, attention in/out, o_proj, the two add_norms, the MoE's
// router / gather / two expert GEMMs / combine, the LM head and its logits).
double forward_bytes(const ModelConfig& c, int64_t T, size_t weight_bytes, DType logits) {
  const double es = 2, H = c.hidden_size, k = c.moe.top_k, F = c.moe.ffn_size, q = c.q_dim(), kv = c.kv_dim();
  const double per_layer = T * es *
                           ((H + q + 2 * kv) + 2 * (q + kv) + (q + 2 * kv + q) + (q + H) + 2 * (3 * H) +
                            (H + 2 * k * H + k * H + k * F + k * F + k * H + k * H + H));
  return static_cast<double>(weight_bytes) + c.num_layers * per_layer +
         T * (H * es + static_cast<double>(c.vocab_size) * dtype_size(logits));
}

int cmd_bench(const ModelArgs& a, int B, int N, int warmup, int iters, const std::string& logits, bool graphs) {
  const ModelConfig c = load_config(a.model);
  check_positive("--batch", B);
  check_positive("--seq", N);
  if (N > c.max_seq_len) MINILLM_FAIL("--seq = " << N << " exceeds the model's max_seq_len = " << c.max_seq_len);
  if (warmup < 0) MINILLM_FAIL("--warmup = " << warmup << " must be >= 0");
  if (iters < 1) MINILLM_FAIL("--iters = " << iters << " must be >= 1");
  if (!cuda_available()) MINILLM_FAIL("bench: needs a CUDA device (none found, or minillm was built without CUDA)");
  const DType logits_dtype = logits == "f32" || logits == "fp32" ? DType::f32 : c.dtype;
  cudaDeviceProp prop{};
  MINILLM_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t s = nullptr;
  MINILLM_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const auto [peak_tflops, peak_gbps] = measure_peaks(s);
  std::printf("device: %s; measured peaks: bf16 GEMM 8192^3 %.0f TFLOP/s, copy 1 GiB %.0f GB/s\n", prop.name,
              peak_tflops, peak_gbps);

  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  size_t free0 = 0, total = 0;
  MINILLM_CUDA_CHECK(cudaMemGetInfo(&free0, &total));
  const auto t0 = std::chrono::steady_clock::now();
  EngineOptions o;
  o.device = "cuda";
  o.max_batch = B;
  o.max_seq = N;
  o.cuda_graphs = graphs;
  o.logits_dtype = logits_dtype;
  std::unique_ptr<InferenceEngine> eng;
  if (is_model_dir(a.model)) {
    eng = make_engine(c, a, o);
    const double s_load = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double gb = static_cast<double>(inspect_checkpoint(a.model).tensor_bytes) / 1e9;
    std::printf("model %s (%.3f B params): checkpoint %.2f GB loaded in %.2f s (%.2f GB/s); weights %.2f GB, "
                "workspace (activations + scratch + logits) %.2f GB\n",
                c.name.c_str(), c.num_parameters() / 1e9, gb, s_load, gb / s_load, eng->weight_bytes() / 1e9,
                eng->workspace_bytes() / 1e9);
  } else {
    const WeightStore ws = load_weights(c, a);
    const auto t1 = std::chrono::steady_clock::now();
    eng = std::make_unique<InferenceEngine>(c, ws, o);
    const auto t2 = std::chrono::steady_clock::now();
    std::printf("model %s (%.3f B params): weights %.1f s (%s), engine + upload %.1f s; weights %.2f GB, workspace "
                "(activations + scratch + logits) %.2f GB\n",
                c.name.c_str(), c.num_parameters() / 1e9, std::chrono::duration<double>(t1 - t0).count(),
                a.weights.empty() ? "seeded init" : "loaded", std::chrono::duration<double>(t2 - t1).count(),
                eng->weight_bytes() / 1e9, eng->workspace_bytes() / 1e9);
  }
  const int64_t T = static_cast<int64_t>(B) * N;
  std::vector<int32_t> ids(static_cast<size_t>(T));
  uint64_t r = a.seed * 0x9e3779b97f4a7c15ull + 12345;
  for (auto& id : ids) {
    r = r * 6364136223846793005ull + 1442695040888963407ull;
    id = static_cast<int32_t>((r >> 33) % static_cast<uint64_t>(c.vocab_size));
  }
  DeviceMem d_ids(ids.size() * 4);
  MINILLM_CUDA_CHECK(cudaMemcpy(d_ids.p, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  const Tensor ids_t(d_ids.p, DType::i32, Device::cuda, {T});
  for (int i = 0; i < warmup; ++i) eng->forward_device(ids_t, B, N, s);
  const double ms = time_ms(s, iters, [&] { eng->forward_device(ids_t, B, N, s); });
  size_t free1 = 0;
  MINILLM_CUDA_CHECK(cudaMemGetInfo(&free1, &total));
  const double flops = c.flops_per_token(N) * static_cast<double>(T);
  const double bytes = forward_bytes(c, T, eng->weight_bytes(), logits_dtype);
  const double tflops = flops / (ms * 1e-3) / 1e12, gbps = bytes / (ms * 1e-3) / 1e9;
  std::printf("batch %d x seq %d (%s logits, cuda graphs %s): %.3f ms per forward (median of %d), %.0f tokens/s\n", B,
              N, dtype_name(logits_dtype), graphs ? "on" : "off", ms, iters, T / (ms * 1e-3));
  std::printf("peak GPU memory: %.3f GB (%.3f GiB)\n", (free0 - free1) / 1e9, gib(static_cast<double>(free0 - free1)));
  std::printf("compute: %.2f TFLOP per forward, %.1f TFLOP/s = %.1f%% of the measured matmul peak\n", flops / 1e12,
              tflops, 100.0 * tflops / peak_tflops);
  std::printf("memory traffic (lower bound): %.2f GB per forward, %.0f GB/s = %.1f%% of the measured copy peak\n",
              bytes / 1e9, gbps, 100.0 * gbps / peak_gbps);

  // Time per op kind: a separate pass, op by op, with CUDA events around each op (median of 3).
  std::vector<std::vector<std::pair<std::string, double>>> runs;
  for (int i = 0; i < 3; ++i) runs.push_back(eng->profile_forward(ids.data(), B, N));
  double sum = 0;
  std::vector<std::pair<std::string, double>> med;
  for (size_t k = 0; k < runs[0].size(); ++k) {
    std::vector<double> v;
    for (const auto& run : runs) v.push_back(k < run.size() ? run[k].second : 0.0);
    med.emplace_back(runs[0][k].first, median(v));
    sum += med.back().second;
  }
  std::printf("time per op (profiling pass, events around every op, median of 3):\n");
  for (const auto& [kind, m] : med) std::printf("  %-10s %9.3f ms  %5.1f%%\n", kind.c_str(), m, 100.0 * m / sum);
  std::printf("  %-10s %9.3f ms  (graph replay: %.3f ms)\n", "sum", sum, ms);
  eng.reset();
  cudaStreamDestroy(s);
  return 0;
}
#endif

struct GenerateArgs {
  ModelArgs model;
  std::string prompt_ids, device = "auto";
  std::string prompt, tokenizer;  // text mode: --prompt, and where the tokenizer is (default: the model dir)
  bool has_prompt = false;
  std::vector<std::string> stops;
  SamplingParams params;
  uint64_t seed = 0;
  bool has_seed = false;
  int max_model_len = 0;
  int64_t num_kv_tokens = 0;
};

int cmd_generate(GenerateArgs& g) {
  const bool dir = is_model_dir(g.model.model);
  // Text mode: the tokenizer of the model directory (or --tokenizer), the prompt encoded with it.
  std::unique_ptr<Tokenizer> tok;
  if (g.has_prompt || !g.stops.empty() || !g.tokenizer.empty()) {
    if (!g.has_prompt && !g.stops.empty()) MINILLM_FAIL("--stop: stop strings are matched on text: give --prompt TEXT");
    if (g.tokenizer.empty() && !dir)
      MINILLM_FAIL("--prompt: model '" << g.model.model << "' is not a model directory with a tokenizer: give --tokenizer DIR or --prompt-ids");
    tok = Tokenizer::from_dir(g.tokenizer.empty() ? g.model.model : g.tokenizer);
    check_utf8(g.prompt, "--prompt");
  }
  const std::vector<int32_t> prompt = tok ? tok->encode(g.prompt) : parse_ids(g.prompt_ids);
  if (prompt.empty()) MINILLM_FAIL("--prompt: the text encodes to no tokens");
  if (g.has_seed) g.params.seed = g.seed;
  LLMOptions o;
  o.device = g.device;
  o.max_model_len = g.max_model_len;
  o.num_kv_tokens = g.num_kv_tokens;
  o.max_num_seqs = 1;
  // EOS: the model directory's config.json / generation_config.json, else the tokenizer's
  if (tok && tok->eos_token_id() >= 0 && (!dir || read_eos_token_ids(g.model.model).empty()))
    o.eos_token_ids = {tok->eos_token_id()};
  if (dir && g.model.weights_given) MINILLM_FAIL("--weights: not with a model directory (it has its own weights)");
  std::unique_ptr<LLMEngine> owned;
  if (dir) {
    owned = std::make_unique<LLMEngine>(g.model.model, o);
  } else {
    const ModelConfig mc = load_config(g.model.model);
    owned = std::make_unique<LLMEngine>(mc, load_weights(mc, g.model), o);
  }
  LLMEngine& eng = *owned;
  const ModelConfig& c = eng.config();
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const int64_t id = eng.add_request(prompt, g.params);
  Clock::time_point first;
  int n = 0;
  std::string reason;
  std::unique_ptr<TextStreamer> text;
  if (tok) text = std::make_unique<TextStreamer>(*tok, g.stops);
  while (eng.has_unfinished()) {
    for (const StepOutput& out : eng.step()) {
      for (int32_t t : out.new_token_ids) {
        if (text && text->stopped()) break;  // tokens past a stop string are not shown
        if (n++ == 0) first = Clock::now();
        if (text) {
          const std::string s = text->push(t);
          std::fwrite(s.data(), 1, s.size(), stdout);
        } else {
          std::printf(n == 1 ? "%d" : " %d", t);
        }
      }
      std::fflush(stdout);
      if (out.finished && !(text && text->stopped())) reason = out.finish_reason;
    }
    if (text && text->stopped() && reason.empty()) {  // the stop string ends the request
      eng.abort(id);
      reason = "stop: \"" + text->matched() + "\"";
    }
  }
  if (text) {
    const std::string s = text->finish();
    std::fwrite(s.data(), 1, s.size(), stdout);
  }
  const auto t1 = Clock::now();
  std::printf("\n");
  std::fflush(stdout);
  const double ttft = std::chrono::duration<double, std::milli>(first - t0).count();
  const double total = std::chrono::duration<double, std::milli>(t1 - t0).count();
  const double decode = std::chrono::duration<double, std::milli>(t1 - first).count();
  std::fprintf(stderr, "%s on %s: %zu prompt tokens, %d generated (%s)\n", c.name.c_str(), eng.device().c_str(),
               prompt.size(), n, reason.c_str());
  std::fprintf(stderr, "time to first token %.2f ms, %.1f tokens/s overall", ttft, n / (total / 1e3));
  if (n > 1) std::fprintf(stderr, ", %.1f tokens/s after the first", (n - 1) / (decode / 1e3));
  std::fprintf(stderr, "\n");
  return 0;
}

// `minillm serve ...` is the Python server (python/minillm/server.py): replace this process with
// python3 running it, this source tree's python/ directory first on the module path.
[[noreturn]] void exec_serve(int argc, char** argv) {
  std::vector<std::string> args = {"python3", "-c",
                                   "import sys; sys.path.insert(0, sys.argv.pop(1)); "
                                   "from minillm.__main__ import main; sys.exit(main(sys.argv[1:]))",
                                   MINILLM_PYTHON_DIR, "serve"};
  for (int i = 2; i < argc; ++i) args.emplace_back(argv[i]);
  std::vector<char*> cargs;
  for (std::string& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  execvp(cargs[0], cargs.data());
  std::fprintf(stderr, "error: serve: cannot run python3: %s\n", std::strerror(errno));
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "serve") exec_serve(argc, argv);
  CLI::App app{"minillm: a small, fast inference engine for Mixture-of-Experts transformers"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("minillm ") + MINILLM_VERSION +
#ifdef MINILLM_WITH_CUDA
                                        " (backends: cpu, cuda)"
#else
                                        " (backends: cpu)"
#endif
  );
  app.footer("Exit codes: 0 success, 1 error (bad input, config, weights, memory), 2 usage error, "
             "3 forward produced non-finite logits.");
  ModelArgs info_a, init_a, fwd_a;
  int info_b = 1, info_n = 0;
  auto* info = app.add_subcommand("info", "parameter count, weight memory and FLOPs of a model");
  add_model_args(info, info_a);
  info->add_option("--batch", info_b, "batch size for the per-forward FLOPs");
  info->add_option("--seq", info_n, "sequence length for the FLOPs (default min(2048, max_seq_len))");

  std::string init_out, init_dtype;
  auto* init = app.add_subcommand("init", "write seeded random weights to a safetensors file");
  add_model_args(init, init_a);
  init->add_option("--seed", init_a.seed, "random seed (a non-negative integer)")->check(CLI::NonNegativeNumber);
  init->add_option("--out", init_out, "output .safetensors path")->required();
  init->add_option("--dtype", init_dtype, "storage dtype: bf16, fp16 or fp32 (default: the config's)");

  ForwardArgs fa;
  auto* fwd = app.add_subcommand("forward", "run one forward pass and print the largest logits at the last positions");
  add_model_args(fwd, fwd_a);
  auto* w_opt = fwd->add_option("--weights", fwd_a.weights, "safetensors weights file");
  fwd->add_option("--seed", fwd_a.seed, "seed of the random weights and ids (when no --weights / --ids)")
      ->excludes(w_opt)
      ->check(CLI::NonNegativeNumber);
  auto* ids_opt = fwd->add_option("--ids", fa.ids, "comma-separated token ids (batch 1)");
  auto* b_opt = fwd->add_option("--batch", fa.batch, "batch size of random ids")->excludes(ids_opt);
  auto* n_opt = fwd->add_option("--seq", fa.seq, "sequence length of random ids")->excludes(ids_opt);
  fwd->add_option("--device", fa.device, "auto, cpu or cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  fwd->add_option("--top", fa.top, "how many of the largest logits to print per sequence")->check(CLI::Range(1, 100));
  auto* out_opt = fwd->add_option("--out", fa.out, "write all logits, float32 [batch, seq, vocab], to this .npy file");

  ModelArgs bench_a;
  int bench_b = 0, bench_n = 0, bench_warmup = 3, bench_iters = 10;
  std::string bench_logits = "model";
  bool bench_no_graphs = false;
  auto* bench = app.add_subcommand("bench", "time the forward pass on the GPU (latency, throughput, memory, per op)");
  add_model_args(bench, bench_a);
  auto* bw_opt = bench->add_option("--weights", bench_a.weights, "safetensors weights file");
  bench->add_option("--seed", bench_a.seed, "seed of the random weights and ids")
      ->excludes(bw_opt)
      ->check(CLI::NonNegativeNumber);
  bench->add_option("--batch", bench_b, "batch size")->required();
  bench->add_option("--seq", bench_n, "sequence length")->required();
  bench->add_option("--warmup", bench_warmup, "untimed forwards first (default 3)");
  bench->add_option("--iters", bench_iters, "timed forwards (default 10); the median is reported");
  bench->add_option("--logits", bench_logits, "logits dtype: model (the config's, default) or f32")
      ->check(CLI::IsMember({"model", "f32", "fp32"}));
  bench->add_flag("--no-graphs", bench_no_graphs, "run op by op instead of replaying a CUDA graph");

  GenerateArgs gen;
  auto* generate = app.add_subcommand("generate", "generate tokens after a prompt (continuous-batching engine)");
  add_model_args(generate, gen.model);
  auto* gw_opt = generate->add_option("--weights", gen.model.weights, "safetensors weights file (not with a model directory)");
  generate->add_option("--weight-seed", gen.model.seed, "seed of the random weights (without --weights)")->excludes(gw_opt);
  auto* prompt_opt = generate->add_option("--prompt", gen.prompt, "prompt text (the model directory's tokenizer, or --tokenizer)")
                         ->each([&](const std::string&) { gen.has_prompt = true; });
  generate->add_option("--prompt-ids", gen.prompt_ids, "comma-separated prompt token ids")->excludes(prompt_opt);
  generate->add_option("--stop", gen.stops, "stop string, matched on the generated text (repeatable; with --prompt)")
      ->allow_extra_args(false);
  generate->add_option("--tokenizer", gen.tokenizer, "directory with tokenizer.json or tokenizer.model (default: --model's)");
  generate->add_option("--max-tokens", gen.params.max_tokens, "tokens to generate at most (default 16)");
  generate->add_option("--temperature", gen.params.temperature, "0 is greedy (default 1)");
  generate->add_option("--top-p", gen.params.top_p, "nucleus sampling mass in (0, 1] (default 1)");
  generate->add_option("--top-k", gen.params.top_k, "keep the k most likely tokens (default 0: off)");
  generate->add_option("--min-p", gen.params.min_p, "keep tokens at least min_p times the most likely (default 0)");
  generate->add_option("--repetition-penalty", gen.params.repetition_penalty, "default 1 (off)");
  generate->add_option("--presence-penalty", gen.params.presence_penalty, "default 0");
  generate->add_option("--frequency-penalty", gen.params.frequency_penalty, "default 0");
  generate->add_option("--seed", gen.seed, "sampling seed (same seed, same tokens)")->each([&](const std::string&) {
    gen.has_seed = true;
  });
  generate->add_flag("--ignore-eos", gen.params.ignore_eos, "do not stop at EOS ids");
  generate->add_option("--device", gen.device, "auto, cpu or cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  generate->add_option("--max-model-len", gen.max_model_len, "tokens per sequence (default: the model's max_seq_len)");
  generate->add_option("--num-kv-tokens", gen.num_kv_tokens, "KV cache tokens (default: from free memory)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    std::fprintf(stderr, "run '%s --help' (or '<command> --help') for the options\n", argv[0]);
    return kExitUsage;
  }
  try {
    gen.model.weights_given = gw_opt->count() > 0;
    fwd_a.weights_given = w_opt->count() > 0;
    bench_a.weights_given = bw_opt->count() > 0;
    fa.batch_given = b_opt->count() > 0;
    fa.seq_given = n_opt->count() > 0;
    fa.out_given = out_opt->count() > 0;
    if (*info) return cmd_info(info_a, info_b, info_n);
    if (*init) return cmd_init(init_a, init_out, init_dtype);
    if (*fwd) return cmd_forward(fwd_a, fa);
    if (*generate) {
      if (!gen.has_prompt && gen.prompt_ids.empty()) {
        std::fprintf(stderr, "error: generate: give --prompt TEXT or --prompt-ids 1,2,3\n");
        return kExitUsage;
      }
      return cmd_generate(gen);
    }
    if (*bench) {
#ifdef MINILLM_WITH_CUDA
      return cmd_bench(bench_a, bench_b, bench_n, bench_warmup, bench_iters, bench_logits, !bench_no_graphs);
#else
      MINILLM_FAIL("bench: minillm was built without CUDA");
#endif
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return kExitError;
  }
  return 0;
}
