// Generation on the CPU backend: the step batch, the page pool, the scheduler under preemption,
// the sampler's distributions, and LLMEngine against the seed's forward (greedy by full recompute
// must equal incremental generation through the paged cache).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <map>
#include <omp.h>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sys/wait.h>

#include "cpu/sampling.h"
#include "engine/block_manager.h"
#include "engine/step_batch.h"
#include "minillm/core/check.h"
#include "minillm/engine.h"
#include "minillm/llm_engine.h"

using namespace minillm;

namespace {

ModelConfig tiny() {
  // The tiny model's ops are far too small for threads; one thread keeps these tests fast on a
  // loaded machine (each test runs in its own process under ctest).
  omp_set_num_threads(1);
  return preset_config("tiny");
}
const WeightStore& tiny_weights() {
  static const WeightStore w = WeightStore::random(tiny(), 0, tiny().dtype);  // as the CLI and Python make them
  return w;
}

LLMEngine make_llm(int64_t kv_tokens, int max_step_tokens = 8192, int max_model_len = 0, int max_num_seqs = 256) {
  LLMOptions o;
  o.device = "cpu";
  o.num_kv_tokens = kv_tokens;
  o.max_step_tokens = max_step_tokens;
  o.max_model_len = max_model_len;
  o.max_num_seqs = max_num_seqs;
  return LLMEngine(tiny(), tiny_weights(), o);
}

std::vector<int32_t> random_ids(std::mt19937& rng, int n, int V) {
  std::uniform_int_distribution<int> d(0, V - 1);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

SamplingParams greedy(int max_tokens) {
  SamplingParams p;
  p.temperature = 0.f;
  p.max_tokens = max_tokens;
  return p;
}

}  // namespace

TEST(StepBatch, PacksSlotsAndRows) {
  StepBatchBuilder b;
  b.reset(3, 4);  // 3 pages per sequence, 4 tokens per page
  const int32_t t0[] = {5, 6, 7, 8, 9}, pages0[] = {7, 2};
  const int32_t t1[] = {3}, pages1[] = {1, 4, 6};
  b.add(t0, 5, 0, pages0, 2, true);   // prefill of 5 tokens at positions 0..4
  b.add(t1, 1, 10, pages1, 3, true);  // a decode at position 10
  std::vector<int32_t> host(b.packed_size());
  b.pack(host.data());
  const StepBatch s = b.view(host.data(), Device::cpu);
  ASSERT_EQ(s.T, 6);
  ASSERT_EQ(s.S, 2);
  ASSERT_EQ(s.R, 2);
  EXPECT_FALSE(s.no_prefix);
  EXPECT_FALSE(s.all_rows);
  EXPECT_EQ(s.max_context, 11);
  const std::vector<int32_t> pos(s.positions.ptr<int32_t>(), s.positions.ptr<int32_t>() + 6);
  EXPECT_EQ(pos, (std::vector<int32_t>{0, 1, 2, 3, 4, 10}));
  const std::vector<int32_t> slots(s.slot_mapping.ptr<int32_t>(), s.slot_mapping.ptr<int32_t>() + 6);
  EXPECT_EQ(slots, (std::vector<int32_t>{28, 29, 30, 31, 8, 26}));  // page 7 rows 0-3, page 2 row 0, page 6 row 2
  EXPECT_EQ(s.logits_rows.ptr<int32_t>()[0], 4);
  EXPECT_EQ(s.logits_rows.ptr<int32_t>()[1], 5);
  EXPECT_EQ(s.cu_seqlens_q.ptr<int32_t>()[2], 6);
  EXPECT_EQ(s.context_lens.ptr<int32_t>()[1], 11);
  EXPECT_EQ(s.block_table.ptr<int32_t>()[2], 0);  // unused entry of sequence 0
  EXPECT_EQ(s.block_table.ptr<int32_t>()[5], 6);
  EXPECT_THROW(b.add(t0, 5, 0, pages0, 1, true), Error);  // 5 tokens need 2 pages
}

TEST(BlockManager, RefcountsAndFreeList) {
  BlockManager m(4);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(m.allocate(3, a));
  EXPECT_EQ(m.num_free(), 1);
  EXPECT_FALSE(m.allocate(2, b));
  EXPECT_TRUE(b.empty());
  m.retain(a[0]);
  EXPECT_EQ(m.ref_count(a[0]), 2);
  std::vector<int32_t> shared = {a[0]};
  m.release(a);
  EXPECT_EQ(m.num_free(), 3);  // a[0] still referenced
  m.release(shared);
  EXPECT_EQ(m.num_free(), 4);
  std::vector<int32_t> bad = {2};
  EXPECT_THROW(m.release(bad), Error);
}

// Greedy generation through the paged cache (prefill chunks, decode) equals the argmax of a full
// forward over prompt + output at every generated position, and the logprobs agree.
TEST(LLMEngine, GreedyMatchesFullRecompute) {
  LLMEngine llm = make_llm(2048, /*max_step_tokens=*/13);
  EngineOptions eo;
  eo.device = "cpu";
  eo.max_seq = 128;
  InferenceEngine ref(tiny(), tiny_weights(), eo);
  std::mt19937 rng(1);
  std::vector<std::vector<int32_t>> prompts = {random_ids(rng, 1, 256), random_ids(rng, 7, 256),
                                               random_ids(rng, 16, 256), random_ids(rng, 70, 256)};
  SamplingParams p = greedy(24);
  p.logprobs = 2;
  const auto outs = llm.generate(prompts, p);
  const int V = 256;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& o = outs[i];
    ASSERT_EQ(o.token_ids.size(), 24u);
    EXPECT_EQ(o.finish_reason, "length");
    std::vector<int32_t> full = prompts[i];
    full.insert(full.end(), o.token_ids.begin(), o.token_ids.end() - 1);
    const int N = static_cast<int>(full.size());
    const auto logits = ref.forward(full.data(), 1, N);
    for (int j = 0; j < 24; ++j) {
      const float* row = logits.data() + static_cast<size_t>(static_cast<int>(prompts[i].size()) - 1 + j) * V;
      int best = 0;
      double sum = 0, mx = row[0];
      for (int v = 1; v < V; ++v) {
        if (row[v] > row[best]) best = v;
        mx = std::max(mx, static_cast<double>(row[v]));
      }
      for (int v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
      EXPECT_EQ(o.token_ids[j], best) << "prompt " << i << " token " << j;
      EXPECT_NEAR(o.logprobs[j], row[best] - mx - std::log(sum), 1e-4);
      ASSERT_EQ(o.top_logprobs[j].size(), 2u);
      EXPECT_EQ(o.top_logprobs[j][0].first, best);
      EXPECT_GE(o.top_logprobs[j][0].second, o.top_logprobs[j][1].second);
    }
  }
  EXPECT_EQ(llm.stats().kv_pages_used, 0);
}

// 300 random requests through a pool of three pages (1.5 sequences of max_model_len): preemption happens, every
// request finishes with exactly the tokens it gets alone, and the pool ends full.
TEST(LLMEngine, StressPreemptionMatchesAlone) {
  std::mt19937 rng(7);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<SamplingParams> params;
  for (int i = 0; i < 300; ++i) {
    prompts.push_back(random_ids(rng, 1 + static_cast<int>(rng() % 100), 256));
    SamplingParams p;
    p.max_tokens = 1 + static_cast<int>(rng() % 28);
    if (i % 2 == 0) {
      p.temperature = 0.f;
    } else {
      p.temperature = 0.8f;
      p.top_k = 50;
      p.top_p = 0.9f;
      p.seed = 1000 + i;
    }
    params.push_back(p);
  }
  // Alone: one request at a time, plenty of pages.
  LLMEngine alone = make_llm(4096, 8192, 128);
  std::vector<std::vector<int32_t>> expect;
  for (int i = 0; i < 300; ++i) expect.push_back(alone.generate({prompts[i]}, params[i])[0].token_ids);

  LLMEngine llm = make_llm(3 * 64, /*max_step_tokens=*/96, /*max_model_len=*/128, /*max_num_seqs=*/32);
  std::map<int64_t, int> index;
  std::map<int64_t, std::vector<int32_t>> got;
  int finished = 0;
  for (int i = 0; i < 300; ++i) {
    index[llm.add_request(prompts[i], params[i])] = i;
    if (i % 3 == 0) {  // requests arrive while others run
      for (const auto& o : llm.step()) {
        got[o.request_id].insert(got[o.request_id].end(), o.new_token_ids.begin(), o.new_token_ids.end());
        finished += o.finished;
      }
    }
  }
  while (llm.has_unfinished()) {
    for (const auto& o : llm.step()) {
      got[o.request_id].insert(got[o.request_id].end(), o.new_token_ids.begin(), o.new_token_ids.end());
      finished += o.finished;
    }
  }
  EXPECT_EQ(finished, 300);
  for (const auto& [id, i] : index) EXPECT_EQ(got[id], expect[i]) << "request " << i;
  const EngineStats s = llm.stats();
  EXPECT_GT(s.preemptions, 0);
  EXPECT_EQ(s.kv_pages_used, 0);
  EXPECT_EQ(s.kv_pages_total, 3);
  EXPECT_EQ(s.running + s.waiting, 0);
}

TEST(LLMEngine, StopsOnEosStopIdsAndSequences) {
  const std::vector<int32_t> prompt = {3, 1, 4, 1, 5};
  LLMEngine plain = make_llm(1024);
  const auto base = plain.generate({prompt}, greedy(12))[0].token_ids;
  ASSERT_EQ(base.size(), 12u);
  {
    LLMOptions o;
    o.device = "cpu";
    o.num_kv_tokens = 1024;
    o.eos_token_ids = {base[4]};
    LLMEngine eos(tiny(), tiny_weights(), o);
    const auto out = eos.generate({prompt}, greedy(12))[0];
    const size_t first = std::find(base.begin(), base.end(), base[4]) - base.begin();
    EXPECT_EQ(out.token_ids, std::vector<int32_t>(base.begin(), base.begin() + first + 1));
    EXPECT_EQ(out.finish_reason, "stop");
    SamplingParams ig = greedy(12);
    ig.ignore_eos = true;
    EXPECT_EQ(eos.generate({prompt}, ig)[0].token_ids, base);
  }
  SamplingParams st = greedy(12);
  st.stop_token_ids = {base[6]};
  const auto a = plain.generate({prompt}, st)[0];
  EXPECT_EQ(a.token_ids.back(), base[6]);
  EXPECT_EQ(a.finish_reason, "stop");
  SamplingParams sq = greedy(12);
  sq.stop_sequences = {{base[7], base[8]}};
  const auto b = plain.generate({prompt}, sq)[0];
  const size_t end = std::search(base.begin(), base.end(), base.begin() + 7, base.begin() + 9) - base.begin() + 2;
  EXPECT_EQ(b.token_ids, std::vector<int32_t>(base.begin(), base.begin() + end));
  EXPECT_EQ(b.finish_reason, "stop");
}

TEST(LLMEngine, BadInputIsAnErrorAndTheEngineKeepsServing) {
  LLMEngine llm = make_llm(256, 8192, 64);
  const int64_t ok = llm.add_request({1, 2, 3}, greedy(5));
  auto bad = [&](std::vector<int32_t> prompt, SamplingParams p, const char* what) {
    try {
      llm.add_request(prompt, p);
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  bad({}, greedy(5), "empty");
  bad({1, 256}, greedy(5), "prompt_token_ids[1] = 256");
  bad({1, -1}, greedy(5), "prompt_token_ids[1] = -1");
  bad(std::vector<int32_t>(64, 1), greedy(5), "max_model_len = 64");
  bad({1}, greedy(0), "max_tokens = 0");
  SamplingParams p = greedy(5);
  p.top_p = 0.f;
  bad({1}, p, "top_p = 0");
  p.top_p = 1.5f;
  bad({1}, p, "top_p = 1.5");
  p = greedy(5);
  p.temperature = -1.f;
  bad({1}, p, "temperature = -1");
  p = greedy(5);
  p.logprobs = 21;
  bad({1}, p, "logprobs = 21");
  int got = 0;
  while (llm.has_unfinished())
    for (const auto& o : llm.step()) {
      EXPECT_EQ(o.request_id, ok);
      got += static_cast<int>(o.new_token_ids.size());
    }
  EXPECT_EQ(got, 5);
  // A pool that cannot hold one sequence of max_model_len.
  try {
    make_llm(64, 8192, 100);
    ADD_FAILURE() << "no error for a pool of 64 tokens";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_kv_tokens = 64"), std::string::npos) << e.what();
  }
}

TEST(LLMEngine, AbortReturnsPages) {
  LLMEngine llm = make_llm(512);
  const int64_t a = llm.add_request({1, 2, 3}, greedy(50));
  const int64_t b = llm.add_request({4, 5, 6, 7}, greedy(3));
  llm.step();
  EXPECT_GT(llm.stats().kv_pages_used, 0);
  EXPECT_TRUE(llm.abort(a));
  bool aborted = false;
  while (llm.has_unfinished())
    for (const auto& o : llm.step())
      if (o.request_id == a) {
        aborted = true;
        EXPECT_TRUE(o.finished);
        EXPECT_EQ(o.finish_reason, "abort");
      }
  EXPECT_TRUE(aborted);
  EXPECT_FALSE(llm.abort(a));
  EXPECT_FALSE(llm.abort(b));
  EXPECT_EQ(llm.stats().kv_pages_used, 0);
}

// ---- sampling: empirical frequencies against the intended distribution ----

namespace {

constexpr int kV = 8;
const float kLogits[kV] = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f, 0.0f, 2.2f, -0.5f};

// Draws n tokens (steps 0..n-1) from the fixed logits with `p`; counts per token.
std::vector<int> draw(SampleRowParams p, int n, const std::vector<PenaltyEntry>& pen = {}) {
  std::vector<int> counts(kV, 0);
  const int chunk = 1000;
  std::vector<float> logits(static_cast<size_t>(chunk) * kV);
  for (int r = 0; r < chunk; ++r) std::copy(kLogits, kLogits + kV, logits.begin() + r * kV);
  std::vector<SampleRowParams> rows(chunk, p);
  std::vector<PenaltyEntry> all;
  for (int r = 0; r < chunk; ++r) {
    rows[r].pen_begin = static_cast<int32_t>(all.size());
    all.insert(all.end(), pen.begin(), pen.end());
    rows[r].pen_end = static_cast<int32_t>(all.size());
  }
  std::vector<int32_t> tok(chunk);
  std::vector<float> lp(chunk);
  for (int start = 0; start < n; start += chunk) {
    for (int r = 0; r < chunk; ++r) rows[r].step = start + r;
    cpu::sample(logits.data(), chunk, kV, rows.data(), all.data(), 0, tok.data(), lp.data(), nullptr, nullptr);
    for (int r = 0; r < chunk; ++r) ++counts[tok[r]];
  }
  return counts;
}

// Pearson's chi-square of counts against probabilities (tokens of probability 0 must have count 0).
void expect_distribution(const std::vector<int>& counts, const std::vector<double>& prob, const char* what) {
  const double n = std::accumulate(counts.begin(), counts.end(), 0.0);
  double chi2 = 0;
  int df = -1;
  for (int i = 0; i < kV; ++i) {
    if (prob[i] == 0) {
      EXPECT_EQ(counts[i], 0) << what << ": token " << i << " is excluded";
      continue;
    }
    const double e = n * prob[i];
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
    ++df;
  }
  // 99.9% quantiles of chi-square for df = 1..7.
  const double crit[] = {0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32};
  EXPECT_LT(chi2, crit[std::max(df, 1)]) << what << ": chi2 " << chi2 << " with " << df << " dof";
}

// softmax(l / t) over the tokens `keep` says.
std::vector<double> softmax(const std::vector<double>& l, double t, const std::vector<bool>& keep) {
  std::vector<double> p(kV, 0.0);
  double sum = 0;
  for (int i = 0; i < kV; ++i)
    if (keep[i]) sum += p[i] = std::exp(l[i] / t);
  for (auto& x : p) x /= sum;
  return p;
}

}  // namespace

TEST(Sampling, EmpiricalFrequenciesMatch) {
  const int n = 20000;
  const std::vector<double> l(kLogits, kLogits + kV);
  const std::vector<bool> all(kV, true);
  SampleRowParams p;
  p.seed_lo = 12345;
  expect_distribution(draw(p, n), softmax(l, 1.0, all), "temperature 1");
  p.temperature = 0.6f;
  expect_distribution(draw(p, n), softmax(l, 0.6, all), "temperature 0.6");
  p.temperature = 1.f;
  p.top_k = 3;  // logits 2.2, 2.0, 1.5
  expect_distribution(draw(p, n), softmax(l, 1.0, {false, true, false, false, true, false, true, false}), "top-k 3");
  p.top_k = 0;
  p.top_p = 0.7f;  // sorted probs .331 .271 .165 .100 ...: the top 3 reach 0.7
  expect_distribution(draw(p, n), softmax(l, 1.0, {false, true, false, false, true, false, true, false}), "top-p 0.7");
  p.top_p = 1.f;
  p.min_p = 0.3f;  // keep p >= 0.3 * p_max: l >= 2.2 + log(0.3) = 1.0
  expect_distribution(draw(p, n), softmax(l, 1.0, {true, true, false, false, true, false, true, false}), "min-p 0.3");
  p.min_p = 0.f;
  p.top_k = 4;  // then top-p within the top 4 (2.2, 2.0, 1.5, 1.0)
  p.top_p = 0.7f;
  expect_distribution(draw(p, n), softmax(l, 1.0, {false, true, false, false, true, false, true, false}),
                      "top-k 4 + top-p 0.7");
  p = SampleRowParams{};
  p.seed_lo = 99;
  p.repetition_penalty = 2.f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  // token 6 generated twice: (2.2 / 2) - 0.5 - 0.5; token 3 in the prompt only: -1 * 2
  std::vector<double> pl = l;
  pl[6] = 2.2 / 2 - 0.5 - 0.5;
  pl[3] = -2.0;
  expect_distribution(draw(p, n, {{3, 0, 0.f}, {6, 2, 0.f}}), softmax(pl, 1.0, all), "penalties");
}

TEST(Sampling, SeedsReproduceGreedyIsArgmaxLogprobs) {
  SampleRowParams p;
  p.seed_lo = 7;
  const auto a = draw(p, 2000), b = draw(p, 2000);
  EXPECT_EQ(a, b);
  p.seed_lo = 8;
  EXPECT_NE(draw(p, 2000), a);
  std::vector<float> logits(kLogits, kLogits + kV);
  SampleRowParams g;
  g.temperature = 0.f;
  int32_t tok = -1, top_ids[3];
  float lp = 0, top_lp[3];
  cpu::sample(logits.data(), 1, kV, &g, nullptr, 3, &tok, &lp, top_ids, top_lp);
  EXPECT_EQ(tok, 6);
  double sum = 0;
  for (float x : kLogits) sum += std::exp(x);
  EXPECT_NEAR(lp, 2.2 - std::log(sum), 1e-5);
  EXPECT_EQ(top_ids[0], 6);
  EXPECT_EQ(top_ids[1], 1);
  EXPECT_EQ(top_ids[2], 4);
  EXPECT_NEAR(top_lp[2], 1.5 - std::log(sum), 1e-5);
}

// ---- the CLI ----

namespace {

std::pair<int, std::string> run_cli(const std::string& args) {
  const std::string cmd = "OMP_NUM_THREADS=1 " + std::string(MINILLM_CLI) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace

TEST(Cli, GenerateGreedyMatchesTheEngine) {
  const auto [code, out] =
      run_cli("generate --model tiny --prompt-ids 3,1,4,1,5 --max-tokens 6 --temperature 0 --device cpu");
  ASSERT_EQ(code, 0) << out;
  const auto want = make_llm(1024).generate({{3, 1, 4, 1, 5}}, greedy(6))[0].token_ids;
  std::string ids;
  for (size_t i = 0; i < want.size(); ++i) {
    if (i) ids.push_back(' ');
    ids.append(std::to_string(want[i]));
  }
  EXPECT_EQ(out.rfind(ids + "\n", 0), 0u) << out;
  EXPECT_NE(out.find("time to first token"), std::string::npos) << out;
  EXPECT_NE(out.find("tokens/s"), std::string::npos) << out;
  const auto [c2, bad] = run_cli("generate --model tiny --prompt-ids 1,2 --top-p 0 --device cpu");
  EXPECT_EQ(c2, 1);
  EXPECT_NE(bad.find("error: sampling: top_p = 0"), std::string::npos) << bad;
  const auto [c3, bad_id] = run_cli("generate --model tiny --prompt-ids 1,999 --device cpu");
  EXPECT_EQ(c3, 1);
  EXPECT_NE(bad_id.find("prompt_token_ids[1] = 999"), std::string::npos) << bad_id;
}

// ---- golden greedy continuations from transformers (tests/fixtures/make_generation_goldens.py) ----

TEST(LLMEngine, GreedyMatchesTransformersGenerate) {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(MINILLM_SOURCE_DIR) / "tests/fixtures/hf";
  int models = 0;
  for (const char* name : {"mixtral", "olmoe", "qwen2_moe", "qwen3_moe", "qwen3_moe_e128"}) {
    const fs::path dir = root / name;
    std::ifstream f(dir / "generation.json");
    ASSERT_TRUE(f) << (dir / "generation.json");
    if (!fs::exists(dir / "config.json")) continue;  // the checkpoint arrives with its fixture commit
    const auto doc = nlohmann::json::parse(f);
    LLMOptions o;
    o.device = "cpu";
    LLMEngine llm(dir.string(), o);
    for (const auto& c : doc["cases"]) {
      const auto prompt = c["prompt"].get<std::vector<int32_t>>();
      const auto want = c["output"].get<std::vector<int32_t>>();
      const auto got = llm.generate({prompt}, greedy(32))[0];
      EXPECT_EQ(got.token_ids, want) << name << ", prompt of " << prompt.size() << " (smallest top-2 logit gap "
                                     << c["min_margin"].get<double>() << ")";
      EXPECT_EQ(got.finish_reason, want.size() < 32 ? "stop" : "length") << name;
    }
    ++models;
  }
  if (models == 0) GTEST_SKIP() << "no model directories under " << root;
}
