// LLMEngine (include/minillm/llm_engine.h): requests -> scheduler -> step batch -> model ->
// device sampling -> outputs. No device code here: uploads, graphs and the ops are Backend calls.
//
// Memory plan, sized once at construction (nothing is allocated per step):
//   weights                      upload_weights (the model dtype)
//   workspace                    transformer_workspace_bytes(T_max, R_max): activations + op scratch
//   io                           one buffer: logits [R_max, V] fp32, the packed StepBatch (step_batch.h),
//                                the sampling rows, penalty entries and the sampled outputs
//   KV cache                     what is left: num_kv_tokens, or gpu_memory_fraction of the device
//                                memory free after the above, in pages of kPageSize tokens, + 1
//                                scratch page that padding rows of a graphed decode step write to
// T_max = max(max_step_tokens, max_num_seqs) tokens, R_max = max_num_seqs logits rows.
//
// A step: the scheduler picks the sequences and their new tokens; the StepBatch is packed on the
// host and uploaded with one copy; transformer_forward runs over it (decode-only steps: replayed
// from a graph per batch-size bucket 1, 2, 4, ..., padded with dummy sequences on the scratch
// page); the sampling op draws one token per logits row on the device; the host reads back only
// the sampled tokens (and logprobs when asked), which is the step's one wait on the device.
#include "minillm/llm_engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <unordered_set>

#include "engine/backend.h"
#include "engine/scheduler.h"
#include "model/checkpoint.h"

namespace minillm {

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kMaxLogprobs = 20;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

bool is_bad(float v) { return !std::isfinite(v); }

}  // namespace

void SamplingParams::validate(int vocab_size) const {
  if (max_tokens < 1) MINILLM_FAIL("sampling: max_tokens = " << max_tokens << " must be at least 1");
  if (is_bad(temperature) || temperature < 0.f)
    MINILLM_FAIL("sampling: temperature = " << temperature << " must be >= 0 (0 is greedy)");
  if (is_bad(top_p) || top_p <= 0.f || top_p > 1.f) MINILLM_FAIL("sampling: top_p = " << top_p << " must be in (0, 1]");
  if (top_k < 0) MINILLM_FAIL("sampling: top_k = " << top_k << " must be >= 0 (0 is off)");
  if (is_bad(min_p) || min_p < 0.f || min_p > 1.f) MINILLM_FAIL("sampling: min_p = " << min_p << " must be in [0, 1]");
  if (is_bad(repetition_penalty) || repetition_penalty <= 0.f)
    MINILLM_FAIL("sampling: repetition_penalty = " << repetition_penalty << " must be > 0");
  if (is_bad(presence_penalty)) MINILLM_FAIL("sampling: presence_penalty = " << presence_penalty << " must be finite");
  if (is_bad(frequency_penalty)) MINILLM_FAIL("sampling: frequency_penalty = " << frequency_penalty << " must be finite");
  if (logprobs < -1 || logprobs > kMaxLogprobs)
    MINILLM_FAIL("sampling: logprobs = " << logprobs << " must be in [0, " << kMaxLogprobs << "] (or none)");
  for (int32_t t : stop_token_ids)
    if (t < 0 || t >= vocab_size)
      MINILLM_FAIL("sampling: stop_token_ids entry " << t << " is out of range [0, " << vocab_size << ")");
  for (const auto& s : stop_sequences) {
    if (s.empty()) MINILLM_FAIL("sampling: stop_sequences has an empty sequence");
    for (int32_t t : s)
      if (t < 0 || t >= vocab_size)
        MINILLM_FAIL("sampling: stop_sequences entry " << t << " is out of range [0, " << vocab_size << ")");
  }
}

std::vector<int32_t> read_eos_token_ids(const std::string& dir) {
  std::vector<int32_t> ids;
  for (const char* name : {"config.json", "generation_config.json"}) {
    std::ifstream f(dir + "/" + name);
    if (!f) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(f);
    } catch (const nlohmann::json::exception& e) {
      MINILLM_FAIL(dir << "/" << name << ": malformed JSON: " << e.what());
    }
    if (!j.is_object() || !j.contains("eos_token_id")) continue;
    const auto& e = j["eos_token_id"];
    std::vector<int64_t> vals;
    if (e.is_number_integer()) vals.push_back(e.get<int64_t>());
    if (e.is_array())
      for (const auto& x : e)
        if (x.is_number_integer()) vals.push_back(x.get<int64_t>());
    for (int64_t v : vals)
      if (v >= 0 && v <= INT32_MAX && std::find(ids.begin(), ids.end(), v) == ids.end())
        ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

// One request: its sequence, parameters and what it has produced.
struct Request {
  Sequence seq;
  SamplingParams params;
  uint32_t seed_lo = 0, seed_hi = 0;
  bool penalties = false;                    // any non-default penalty
  std::map<int32_t, int32_t> seen;           // token -> times generated (prompt tokens: 0)
  Clock::time_point arrival, first_token;
  bool has_first = false;
};

struct LLMEngine::Impl {
  ModelConfig config;
  LLMOptions opts;
  std::unique_ptr<Backend> be;
  ModelWeights weights;
  size_t weight_bytes = 0;
  Workspace ws;
  Buffer io;       // logits, packed StepBatch, sampling rows / penalties / outputs (offsets below)
  Buffer kv;       // the KV cache pages
  KVCache cache;
  int num_pages = 0, max_pages = 0, T_max = 0, R_max = 0;
  size_t P_max = 0;  // penalty entries per step
  size_t off_meta = 0, off_params = 0, off_pen = 0, off_tokens = 0, off_logprobs = 0, off_top_ids = 0,
         off_top_lp = 0;
  std::vector<int> buckets;  // decode graph batch sizes
  std::unique_ptr<Scheduler> sched;
  StepBatchBuilder builder;
  std::vector<int32_t> meta_host;
  std::vector<SampleRowParams> row_params;
  std::vector<PenaltyEntry> pen_host;
  std::unordered_map<int64_t, std::unique_ptr<Request>> requests;
  EngineStats stats;

  // Filled by other threads, drained at the start of each step.
  mutable std::mutex mu;
  std::vector<std::unique_ptr<Request>> incoming;
  std::vector<int64_t> aborts;
  int64_t next_id = 0;
  std::unordered_set<int64_t> live;  // added and not yet finished

  char* io_at(size_t off) const { return static_cast<char*>(io.data()) + off; }
};

LLMEngine::LLMEngine(const ModelConfig& config, const WeightStore& weights, const LLMOptions& opts)
    : impl_(std::make_unique<Impl>()) {
  config.validate();
  init(config, opts, *make_store_source(weights));
}

LLMEngine::LLMEngine(const std::string& model_dir, const LLMOptions& opts) : impl_(std::make_unique<Impl>()) {
  const CheckpointInfo info = inspect_checkpoint(model_dir);
  LLMOptions o = opts;
  if (o.eos_token_ids.empty()) o.eos_token_ids = read_eos_token_ids(model_dir);
  init(info.config, o, CheckpointSource(info, {}));
}

void LLMEngine::init(const ModelConfig& config, const LLMOptions& opts, const WeightSource& weights) {
  Impl& m = *impl_;
  m.config = config;
  m.opts = opts;
  const ModelConfig& c = m.config;
  LLMOptions& o = m.opts;
  if (o.max_model_len == 0) o.max_model_len = c.max_seq_len;
  if (o.max_model_len < 2 || o.max_model_len > c.max_seq_len)
    MINILLM_FAIL("llm: max_model_len = " << o.max_model_len << " is outside [2, " << c.max_seq_len
                                         << "] (the model's max_seq_len)");
  if (o.max_num_seqs < 1) MINILLM_FAIL("llm: max_num_seqs = " << o.max_num_seqs << " must be at least 1");
  if (o.max_step_tokens < 1) MINILLM_FAIL("llm: max_step_tokens = " << o.max_step_tokens << " must be at least 1");
  if (!(o.gpu_memory_fraction > 0 && o.gpu_memory_fraction <= 1))
    MINILLM_FAIL("llm: gpu_memory_fraction = " << o.gpu_memory_fraction << " must be in (0, 1]");
  if (o.num_kv_tokens < 0) MINILLM_FAIL("llm: num_kv_tokens = " << o.num_kv_tokens << " must be >= 0");
  for (int32_t e : o.eos_token_ids)
    if (e < 0 || e >= c.vocab_size) MINILLM_FAIL("llm: eos token id " << e << " is out of range [0, " << c.vocab_size << ")");

  bool use_cuda = false;
  if (o.device == "cuda") {
    if (!cuda_available()) MINILLM_FAIL("llm: device 'cuda' requested but no CUDA device (or no CUDA build) is available");
    use_cuda = true;
  } else if (o.device == "auto") {
    use_cuda = cuda_available();
  } else if (o.device != "cpu") {
    MINILLM_FAIL("llm: device = '" << o.device << "' is not one of: auto, cpu, cuda");
  }
  m.T_max = std::max(o.max_step_tokens, o.max_num_seqs);
  m.R_max = o.max_num_seqs;
#ifdef MINILLM_WITH_CUDA
  if (use_cuda) {
    m.be = make_cuda_backend(c, std::max(m.T_max, o.max_model_len));
  }
#endif
  if (!use_cuda) m.be = make_cpu_backend();
  o.device = device_name(m.be->device());
  Backend& be = *m.be;
  m.weights = upload_weights(be, c, weights);
  for (const Buffer& b : m.weights.storage) m.weight_bytes += b.bytes();

  // The plan: workspace, then one io buffer.
  m.ws = Workspace(transformer_workspace_bytes(be, c, m.T_max, m.R_max), be.device());
  m.max_pages = (o.max_model_len + kPageSize - 1) / kPageSize;
  m.P_max = static_cast<size_t>(m.R_max) * static_cast<size_t>(std::min(c.vocab_size, o.max_model_len));
  const size_t meta_ints = 3 * static_cast<size_t>(m.T_max) + 2 * static_cast<size_t>(m.R_max) + 1 +
                           static_cast<size_t>(m.R_max) * m.max_pages + static_cast<size_t>(m.R_max);
  size_t off = align256(static_cast<size_t>(m.R_max) * c.vocab_size * 4);  // logits [R_max, V] fp32
  m.off_meta = off;
  off += align256(meta_ints * 4);
  m.off_params = off;
  off += align256(m.R_max * sizeof(SampleRowParams));
  m.off_pen = off;
  off += align256(m.P_max * sizeof(PenaltyEntry));
  m.off_tokens = off;
  off += align256(m.R_max * 4);
  m.off_logprobs = off;
  off += align256(m.R_max * 4);
  m.off_top_ids = off;
  off += align256(static_cast<size_t>(m.R_max) * kMaxLogprobs * 4);
  m.off_top_lp = off;
  off += align256(static_cast<size_t>(m.R_max) * kMaxLogprobs * 4);
  m.io = Buffer(off, be.device());

  // The KV cache from what is left.
  const size_t es = dtype_size(be.act_dtype());
  const size_t page_bytes = static_cast<size_t>(kPageSize) * c.num_kv_heads * c.head_dim * es;  // one K or V page, one layer
  const size_t bytes_per_page = 2 * static_cast<size_t>(c.num_layers) * page_bytes;
  int64_t pages = 0;
  std::string source;
  if (o.num_kv_tokens > 0) {
    pages = (o.num_kv_tokens + kPageSize - 1) / kPageSize;
    source = "num_kv_tokens = " + std::to_string(o.num_kv_tokens);
  } else if (be.free_device_bytes() > 0) {
    pages = static_cast<int64_t>(static_cast<double>(be.free_device_bytes()) * o.gpu_memory_fraction /
                                 static_cast<double>(bytes_per_page)) - 1;
    source = "gpu_memory_fraction = " + std::to_string(o.gpu_memory_fraction);
  } else {  // host memory: room for 4 whole sequences
    pages = 4 * static_cast<int64_t>(m.max_pages);
    source = "the CPU default of 4 sequences";
  }
  if (pages * kPageSize < o.max_model_len)
    MINILLM_FAIL("llm: the KV pool (" << source << ": " << std::max<int64_t>(pages, 0) * kPageSize
                                      << " tokens) cannot hold one sequence of max_model_len = " << o.max_model_len
                                      << " tokens");
  if (pages > INT32_MAX / kPageSize) pages = INT32_MAX / kPageSize - 1;
  m.num_pages = static_cast<int>(pages);
  m.kv = Buffer(static_cast<size_t>(m.num_pages + 1) * bytes_per_page, be.device());
  m.cache.num_pages = m.num_pages + 1;
  for (int l = 0; l < c.num_layers; ++l) {
    auto* base = static_cast<char*>(m.kv.data()) + 2 * static_cast<size_t>(l) * (m.num_pages + 1) * page_bytes;
    const std::initializer_list<int64_t> shape = {m.num_pages + 1, kPageSize, c.num_kv_heads, c.head_dim};
    m.cache.k.emplace_back(base, be.act_dtype(), be.device(), shape);
    m.cache.v.emplace_back(base + (m.num_pages + 1) * page_bytes, be.act_dtype(), be.device(), shape);
  }
  m.sched = std::make_unique<Scheduler>(m.num_pages, kPageSize, o.max_num_seqs, o.max_step_tokens);
  for (int b = 1; b < o.max_num_seqs; b *= 2) m.buckets.push_back(b);
  m.buckets.push_back(o.max_num_seqs);
  m.stats.kv_pages_total = m.num_pages;
}

LLMEngine::~LLMEngine() {
  if (impl_ && impl_->be) impl_->be->synchronize();
}

const ModelConfig& LLMEngine::config() const { return impl_->config; }
const LLMOptions& LLMEngine::options() const { return impl_->opts; }
const std::vector<int32_t>& LLMEngine::eos_token_ids() const { return impl_->opts.eos_token_ids; }
std::string LLMEngine::device() const { return device_name(impl_->be->device()); }
size_t LLMEngine::weight_bytes() const { return impl_->weight_bytes; }
size_t LLMEngine::kv_cache_bytes() const { return impl_->kv.bytes(); }

int64_t LLMEngine::add_request(std::vector<int32_t> prompt, const SamplingParams& params) {
  Impl& m = *impl_;
  const int V = m.config.vocab_size;
  if (prompt.empty()) MINILLM_FAIL("add_request: prompt_token_ids is empty");
  for (size_t i = 0; i < prompt.size(); ++i)
    if (prompt[i] < 0 || prompt[i] >= V)
      MINILLM_FAIL("add_request: prompt_token_ids[" << i << "] = " << prompt[i] << " is out of range [0, " << V << ")");
  if (static_cast<int64_t>(prompt.size()) >= m.opts.max_model_len)
    MINILLM_FAIL("add_request: the prompt has " << prompt.size() << " tokens; max_model_len = " << m.opts.max_model_len
                                                << " leaves no room to generate");
  params.validate(V);
  auto r = std::make_unique<Request>();
  r->params = params;
  r->seq.prompt_len = static_cast<int>(prompt.size());
  r->seq.tokens = std::move(prompt);
  r->penalties = params.repetition_penalty != 1.f || params.presence_penalty != 0.f || params.frequency_penalty != 0.f;
  if (r->penalties)
    for (int32_t t : r->seq.tokens) r->seen.emplace(t, 0);
  r->arrival = Clock::now();
  std::lock_guard<std::mutex> lock(m.mu);
  const int64_t id = m.next_id++;
  r->seq.id = id;
  const uint64_t seed = params.seed ? *params.seed : splitmix64(m.opts.seed ^ splitmix64(static_cast<uint64_t>(id)));
  r->seed_lo = static_cast<uint32_t>(seed);
  r->seed_hi = static_cast<uint32_t>(seed >> 32);
  m.incoming.push_back(std::move(r));
  m.live.insert(id);
  return id;
}

bool LLMEngine::abort(int64_t id) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  if (!m.live.count(id)) return false;
  m.aborts.push_back(id);
  return true;
}

bool LLMEngine::has_unfinished() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return !impl_->live.empty();
}

EngineStats LLMEngine::stats() const {
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  EngineStats s = m.stats;
  s.waiting += static_cast<int>(m.incoming.size());
  return s;
}

std::vector<StepOutput> LLMEngine::step() {
  Impl& m = *impl_;
  const ModelConfig& c = m.config;
  std::vector<StepOutput> outs;
  auto finish = [&](Request& r) {
    m.sched->remove(&r.seq);
    std::lock_guard<std::mutex> lock(m.mu);
    m.live.erase(r.seq.id);
  };
  {  // take in what other threads queued
    std::vector<std::unique_ptr<Request>> incoming;
    std::vector<int64_t> aborts;
    {
      std::lock_guard<std::mutex> lock(m.mu);
      incoming.swap(m.incoming);
      aborts.swap(m.aborts);
    }
    for (auto& r : incoming) {
      m.sched->add(&r->seq);
      m.requests.emplace(r->seq.id, std::move(r));
    }
    for (int64_t id : aborts) {
      auto it = m.requests.find(id);
      if (it == m.requests.end()) continue;  // finished already
      finish(*it->second);
      StepOutput o;
      o.request_id = id;
      o.finished = true;
      o.finish_reason = "abort";
      outs.push_back(std::move(o));
      m.requests.erase(it);
    }
  }
  const std::vector<Sequence*> seqs = m.sched->schedule();
  if (seqs.empty()) {
    std::lock_guard<std::mutex> lock(m.mu);
    m.stats.running = m.sched->num_running();
    m.stats.waiting = m.sched->num_waiting();
    m.stats.kv_pages_used = m.num_pages - m.sched->blocks().num_free();
    return outs;
  }

  // The step batch (decode-only steps padded to a graph bucket).
  const int S = static_cast<int>(seqs.size());
  bool decode_only = true;
  for (const Sequence* s : seqs) decode_only = decode_only && s->scheduled == 1 && s->samples();
  int bucket = 0;
  if (decode_only && m.opts.cuda_graphs && m.be->device() == Device::cuda)
    bucket = *std::lower_bound(m.buckets.begin(), m.buckets.end(), S);
  StepBatchBuilder& sb = m.builder;
  sb.reset(m.max_pages, kPageSize);
  int64_t prefill_tokens = 0;
  for (const Sequence* s : seqs) {
    sb.add(s->tokens.data() + s->num_computed, s->scheduled, s->num_computed, s->pages.data(),
           static_cast<int>(s->pages.size()), s->samples());
    const bool decode = s->scheduled == 1 && s->samples() && s->num_output() > 0;
    if (!decode) prefill_tokens += s->scheduled;
  }
  const int32_t scratch_page = m.num_pages, zero = 0;
  for (int i = S; i < bucket; ++i) sb.add(&zero, 1, 0, &scratch_page, 1, true);
  m.meta_host.resize(sb.packed_size());
  sb.pack(m.meta_host.data());
  m.be->to_device_async(m.io_at(m.off_meta), m.meta_host.data(), m.meta_host.size() * 4);
  StepBatch batch = sb.view(m.io_at(m.off_meta), m.be->device());
  if (decode_only) {  // the same launches for every replay: attention over the cache, sized for the full
    batch.max_context = m.opts.max_model_len;  // context (eager decode steps too, so that they compute
    batch.no_prefix = false;                   // exactly what a graph replay does)
  }
  Tensor logits(m.io_at(0), DType::f32, m.be->device(), {batch.R, c.vocab_size});
  auto enqueue = [&] {
    m.ws.reset();
    transformer_forward(*m.be, c, m.weights, batch, &m.cache, m.ws, logits);
  };
  m.be->run_graph(bucket, bucket > 0, enqueue);

  // Sampling rows: the sequences whose last token ran, in batch order (= logits row order).
  std::vector<Request*> rows;
  m.row_params.clear();
  m.pen_host.clear();
  int n_top = 0;
  for (Sequence* s : seqs) {
    if (!s->samples()) continue;
    Request& r = *m.requests.at(s->id);
    rows.push_back(&r);
    SampleRowParams p;
    const SamplingParams& sp = r.params;
    p.temperature = sp.temperature;
    p.top_p = sp.top_p;
    p.top_k = sp.top_k;
    p.min_p = sp.min_p;
    p.repetition_penalty = sp.repetition_penalty;
    p.presence_penalty = sp.presence_penalty;
    p.frequency_penalty = sp.frequency_penalty;
    p.step = s->num_output();
    p.seed_lo = r.seed_lo;
    p.seed_hi = r.seed_hi;
    p.pen_begin = static_cast<int32_t>(m.pen_host.size());
    if (r.penalties)
      for (const auto& [tok, count] : r.seen) m.pen_host.push_back({tok, count, 0.f});
    p.pen_end = static_cast<int32_t>(m.pen_host.size());
    m.row_params.push_back(p);
    n_top = std::max(n_top, sp.logprobs);
  }
  const int R = static_cast<int>(rows.size());
  MINILLM_CHECK(m.pen_host.size() <= m.P_max, "llm: " << m.pen_host.size() << " penalty entries exceed the plan");
  m.be->to_device_async(m.io_at(m.off_params), m.row_params.data(), R * sizeof(SampleRowParams));
  if (!m.pen_host.empty())
    m.be->to_device_async(m.io_at(m.off_pen), m.pen_host.data(), m.pen_host.size() * sizeof(PenaltyEntry));
  SampleArgs a;
  a.params = reinterpret_cast<const SampleRowParams*>(m.io_at(m.off_params));
  a.penalties = reinterpret_cast<PenaltyEntry*>(m.io_at(m.off_pen));
  a.n_top = n_top;
  a.tokens = reinterpret_cast<int32_t*>(m.io_at(m.off_tokens));
  a.logprobs = reinterpret_cast<float*>(m.io_at(m.off_logprobs));
  a.top_ids = reinterpret_cast<int32_t*>(m.io_at(m.off_top_ids));
  a.top_logprobs = reinterpret_cast<float*>(m.io_at(m.off_top_lp));
  Tensor sample_logits(m.io_at(0), DType::f32, m.be->device(), {R, c.vocab_size});
  std::vector<int32_t> tokens(static_cast<size_t>(R));
  std::vector<float> lps(static_cast<size_t>(R));
  std::vector<int32_t> top_ids(static_cast<size_t>(R) * n_top);
  std::vector<float> top_lps(static_cast<size_t>(R) * n_top);
  if (R > 0) {
    m.be->sample(sample_logits, a);
    m.be->to_host(tokens.data(), a.tokens, R * 4);  // the step's wait on the device
    bool want_lp = false;
    for (const Request* r : rows) want_lp = want_lp || r->params.logprobs >= 0;
    if (want_lp) {
      m.be->to_host(lps.data(), a.logprobs, R * 4);
      if (n_top > 0) {
        m.be->to_host(top_ids.data(), a.top_ids, top_ids.size() * 4);
        m.be->to_host(top_lps.data(), a.top_logprobs, top_lps.size() * 4);
      }
    }
  } else {
    m.be->synchronize();
  }

  // Commit the step and hand out the tokens.
  m.sched->commit(seqs);
  const auto now = Clock::now();
  for (int i = 0; i < R; ++i) {
    Request& r = *rows[i];
    Sequence& s = r.seq;
    const SamplingParams& sp = r.params;
    const int32_t tok = tokens[i];
    s.tokens.push_back(tok);
    if (r.penalties) ++r.seen[tok];
    if (!r.has_first) {
      r.has_first = true;
      r.first_token = now;
    }
    StepOutput o;
    o.request_id = s.id;
    o.new_token_ids.push_back(tok);
    if (sp.logprobs >= 0) {
      o.logprobs.push_back(lps[i]);
      std::vector<std::pair<int32_t, float>> top;
      for (int j = 0; j < sp.logprobs; ++j) top.emplace_back(top_ids[i * n_top + j], top_lps[i * n_top + j]);
      o.top_logprobs.push_back(std::move(top));
    }
    const char* reason = nullptr;
    const auto& eos = m.opts.eos_token_ids;
    if ((!sp.ignore_eos && std::find(eos.begin(), eos.end(), tok) != eos.end()) ||
        std::find(sp.stop_token_ids.begin(), sp.stop_token_ids.end(), tok) != sp.stop_token_ids.end())
      reason = "stop";
    for (const auto& stop : sp.stop_sequences)
      if (!reason && static_cast<int>(stop.size()) <= s.num_output() &&
          std::equal(stop.begin(), stop.end(), s.tokens.end() - static_cast<int64_t>(stop.size())))
        reason = "stop";
    if (!reason && (s.num_output() >= sp.max_tokens || static_cast<int>(s.tokens.size()) >= m.opts.max_model_len))
      reason = "length";
    if (reason) {
      o.finished = true;
      o.finish_reason = reason;
      finish(r);
    }
    outs.push_back(std::move(o));
  }
  for (const StepOutput& o : outs)
    if (o.finished && o.finish_reason != "abort") m.requests.erase(o.request_id);
  std::lock_guard<std::mutex> lock(m.mu);
  m.stats.prompt_tokens += prefill_tokens;
  m.stats.generation_tokens += R;
  m.stats.steps += 1;
  m.stats.preemptions = m.sched->preemptions();
  m.stats.running = m.sched->num_running();
  m.stats.waiting = m.sched->num_waiting();
  m.stats.kv_pages_used = m.num_pages - m.sched->blocks().num_free();
  return outs;
}

std::vector<RequestOutput> LLMEngine::generate(const std::vector<std::vector<int32_t>>& prompts,
                                               const SamplingParams& params) {
  std::vector<RequestOutput> res(prompts.size());
  std::unordered_map<int64_t, size_t> index;
  std::vector<Clock::time_point> arrival(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    try {
      res[i].request_id = add_request(prompts[i], params);
    } catch (...) {
      for (size_t j = 0; j < i; ++j) abort(res[j].request_id);
      while (has_unfinished()) step();
      throw;
    }
    res[i].prompt_token_ids = prompts[i];
    index[res[i].request_id] = i;
    arrival[i] = Clock::now();
  }
  size_t left = prompts.size();
  while (left > 0) {
    for (StepOutput& o : step()) {
      auto it = index.find(o.request_id);
      if (it == index.end()) continue;
      RequestOutput& r = res[it->second];
      const auto now = Clock::now();
      if (r.token_ids.empty() && !o.new_token_ids.empty()) r.ttft_ms = ms_between(arrival[it->second], now);
      r.token_ids.insert(r.token_ids.end(), o.new_token_ids.begin(), o.new_token_ids.end());
      r.logprobs.insert(r.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
      for (auto& t : o.top_logprobs) r.top_logprobs.push_back(std::move(t));
      if (o.finished) {
        r.finish_reason = o.finish_reason;
        r.total_ms = ms_between(arrival[it->second], now);
        --left;
      }
    }
  }
  return res;
}

}  // namespace minillm
