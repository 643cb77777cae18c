// Each area of the Python module registers its functions here; module.cpp calls them in order.
#pragma once
#include <nanobind/nanobind.h>

#include <string>

#include "minillm/config.h"

namespace minillm::py {
void bind_engine(nanobind::module_& m);     // python/engine.cpp: config, InferenceEngine
void bind_attention(nanobind::module_& m);  // python/attention.cpp: flash_attention, flash_attention_varlen
void bind_paged(nanobind::module_& m);      // python/paged.cpp: paged_attention, kv_cache_write
void bind_moe(nanobind::module_& m);        // python/moe.cpp: MoELayer
void bind_tokenizer(nanobind::module_& m);  // python/tokenizer.cpp: Tokenizer, IncrementalDecoder, StopStringMatcher
void bind_llm(nanobind::module_& m);        // python/llm.cpp: LLM engine, SamplingParams, outputs

// A config argument: inline JSON (starts with '{'), a preset name, a .json file or a model directory.
ModelConfig config_from_arg(const std::string& s);  // python/engine.cpp
}  // namespace minillm::py
