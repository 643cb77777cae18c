// Python bindings of generation: SamplingParams, StepOutput and the engine behind minillm.LLM
// (python/minillm/__init__.py wraps it and builds RequestOutput). step() releases the GIL while the
// C++ engine runs, so a server can drive the engine from its own thread.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <optional>
#include <sstream>

#include "bindings.h"
#include "minillm/checkpoint.h"
#include "minillm/core/check.h"
#include "minillm/llm_engine.h"

namespace nb = nanobind;

namespace minillm::py {
namespace {

class PyLLM {
 public:
  PyLLM(const std::string& config, const std::optional<std::string>& weights, uint64_t weight_seed,
        const std::vector<int32_t>& eos, const std::string& device, int max_model_len, double gpu_memory_fraction,
        int64_t num_kv_tokens, int max_num_seqs, int max_step_tokens, uint64_t seed, bool cuda_graphs) {
    LLMOptions o;
    o.device = device;
    o.max_model_len = max_model_len;
    o.gpu_memory_fraction = gpu_memory_fraction;
    o.num_kv_tokens = num_kv_tokens;
    o.max_num_seqs = max_num_seqs;
    o.max_step_tokens = max_step_tokens;
    o.seed = seed;
    o.cuda_graphs = cuda_graphs;
    o.eos_token_ids = eos;
    if (is_model_dir(config)) {
      if (weights) MINILLM_FAIL("LLM: weights = '" << *weights << "' with a model directory (it has its own)");
      engine_ = std::make_unique<LLMEngine>(config, o);
      return;
    }
    const ModelConfig c = config_from_arg(config);
    const WeightStore ws = weights ? WeightStore::load(*weights, c) : WeightStore::random(c, weight_seed, c.dtype);
    engine_ = std::make_unique<LLMEngine>(c, ws, o);
  }
  LLMEngine& engine() { return *engine_; }

 private:
  std::unique_ptr<LLMEngine> engine_;
};

}  // namespace

void bind_llm(nb::module_& m) {
  nb::class_<SamplingParams>(m, "SamplingParams")
      .def(
          "__init__",
          [](SamplingParams* p, int max_tokens, float temperature, float top_p, int top_k, float min_p,
             float repetition_penalty, float presence_penalty, float frequency_penalty, std::optional<uint64_t> seed,
             std::vector<int32_t> stop_token_ids, std::vector<std::vector<int32_t>> stop_sequences, bool ignore_eos,
             std::optional<int> logprobs) {
            new (p) SamplingParams();
            p->max_tokens = max_tokens;
            p->temperature = temperature;
            p->top_p = top_p;
            p->top_k = top_k;
            p->min_p = min_p;
            p->repetition_penalty = repetition_penalty;
            p->presence_penalty = presence_penalty;
            p->frequency_penalty = frequency_penalty;
            p->seed = seed;
            p->stop_token_ids = std::move(stop_token_ids);
            p->stop_sequences = std::move(stop_sequences);
            p->ignore_eos = ignore_eos;
            p->logprobs = logprobs ? *logprobs : -1;
            if (logprobs && *logprobs < 0) MINILLM_FAIL("sampling: logprobs = " << *logprobs << " must be >= 0 or None");
            p->validate(INT32_MAX);  // the vocabulary checks wait for the engine
          },
          nb::kw_only(), nb::arg("max_tokens") = 16, nb::arg("temperature") = 1.0f, nb::arg("top_p") = 1.0f,
          nb::arg("top_k") = 0, nb::arg("min_p") = 0.0f, nb::arg("repetition_penalty") = 1.0f,
          nb::arg("presence_penalty") = 0.0f, nb::arg("frequency_penalty") = 0.0f,
          nb::arg("seed").none() = nb::none(), nb::arg("stop_token_ids") = std::vector<int32_t>{},
          nb::arg("stop_sequences") = std::vector<std::vector<int32_t>>{}, nb::arg("ignore_eos") = false,
          nb::arg("logprobs").none() = nb::none())
      .def_rw("max_tokens", &SamplingParams::max_tokens)
      .def_rw("temperature", &SamplingParams::temperature)
      .def_rw("top_p", &SamplingParams::top_p)
      .def_rw("top_k", &SamplingParams::top_k)
      .def_rw("min_p", &SamplingParams::min_p)
      .def_rw("repetition_penalty", &SamplingParams::repetition_penalty)
      .def_rw("presence_penalty", &SamplingParams::presence_penalty)
      .def_rw("frequency_penalty", &SamplingParams::frequency_penalty)
      .def_rw("seed", &SamplingParams::seed)
      .def_rw("stop_token_ids", &SamplingParams::stop_token_ids)
      .def_rw("stop_sequences", &SamplingParams::stop_sequences)
      .def_rw("ignore_eos", &SamplingParams::ignore_eos)
      .def_prop_rw(
          "logprobs", [](const SamplingParams& p) { return p.logprobs < 0 ? std::nullopt : std::optional<int>(p.logprobs); },
          [](SamplingParams& p, std::optional<int> v) { p.logprobs = v ? *v : -1; })
      .def("__repr__", [](const SamplingParams& p) {
        std::ostringstream s;
        s << "SamplingParams(max_tokens=" << p.max_tokens << ", temperature=" << p.temperature << ", top_p=" << p.top_p
          << ", top_k=" << p.top_k << ", min_p=" << p.min_p << ")";
        return s.str();
      });

  auto reason = [](const std::string& r) -> std::optional<std::string> {
    return r.empty() ? std::nullopt : std::optional<std::string>(r);
  };
  nb::class_<StepOutput>(m, "StepOutput")
      .def_ro("request_id", &StepOutput::request_id)
      .def_ro("new_token_ids", &StepOutput::new_token_ids)
      .def_prop_ro("logprobs",
                   [](const StepOutput& o) {
                     return o.logprobs.empty() && o.top_logprobs.empty() ? std::nullopt
                                                                         : std::optional<std::vector<float>>(o.logprobs);
                   })
      .def_prop_ro("top_logprobs",
                   [](const StepOutput& o) {
                     using T = std::vector<std::vector<std::pair<int32_t, float>>>;
                     return o.top_logprobs.empty() ? std::nullopt : std::optional<T>(o.top_logprobs);
                   })
      .def_ro("finished", &StepOutput::finished)
      .def_prop_ro("finish_reason", [reason](const StepOutput& o) { return reason(o.finish_reason); })
      .def("__repr__", [](const StepOutput& o) {
        std::ostringstream s;
        s << "StepOutput(request_id=" << o.request_id << ", new_token_ids=[";
        for (size_t i = 0; i < o.new_token_ids.size(); ++i) s << (i ? ", " : "") << o.new_token_ids[i];
        s << "], finished=" << (o.finished ? "True" : "False") << ")";
        return s.str();
      });
  nb::class_<PyLLM>(m, "_LLM")
      .def(nb::init<const std::string&, const std::optional<std::string>&, uint64_t, const std::vector<int32_t>&,
                    const std::string&, int, double, int64_t, int, int, uint64_t, bool>(),
           nb::arg("config"), nb::arg("weights").none(), nb::arg("weight_seed"), nb::arg("eos_token_ids"),
           nb::arg("device"), nb::arg("max_model_len"), nb::arg("gpu_memory_fraction"), nb::arg("num_kv_tokens"),
           nb::arg("max_num_seqs"), nb::arg("max_step_tokens"), nb::arg("seed"), nb::arg("cuda_graphs"))
      .def(
          "add_request",
          [](PyLLM& l, std::vector<int32_t> prompt, const SamplingParams& p) {
            return l.engine().add_request(std::move(prompt), p);
          },
          nb::arg("prompt_token_ids"), nb::arg("params"))
      .def(
          "step", [](PyLLM& l) { return l.engine().step(); }, nb::call_guard<nb::gil_scoped_release>())
      .def("abort", [](PyLLM& l, int64_t id) { return l.engine().abort(id); }, nb::arg("request_id"))
      .def("has_unfinished", [](PyLLM& l) { return l.engine().has_unfinished(); })
      .def("stats",
           [](PyLLM& l) {
             const EngineStats s = l.engine().stats();
             nb::dict d;
             d["running"] = s.running;
             d["waiting"] = s.waiting;
             d["kv_pages_used"] = s.kv_pages_used;
             d["kv_pages_total"] = s.kv_pages_total;
             d["prompt_tokens"] = s.prompt_tokens;
             d["generation_tokens"] = s.generation_tokens;
             d["preemptions"] = s.preemptions;
             d["steps"] = s.steps;
             return d;
           })
      .def_prop_ro("eos_token_ids", [](PyLLM& l) { return l.engine().eos_token_ids(); })
      .def_prop_ro("device", [](PyLLM& l) { return l.engine().device(); })
      .def_prop_ro("max_model_len", [](PyLLM& l) { return l.engine().options().max_model_len; })
      .def_prop_ro("vocab_size", [](PyLLM& l) { return l.engine().config().vocab_size; })
      .def_prop_ro("kv_cache_bytes", [](PyLLM& l) { return l.engine().kv_cache_bytes(); });
  m.def("read_eos_token_ids", &read_eos_token_ids, nb::arg("model_dir"));
}

}  // namespace minillm::py
