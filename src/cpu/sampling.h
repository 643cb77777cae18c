// CPU reference of the sampling op (the math and its order: src/engine/sampler.h).
#pragma once
#include <cstdint>

#include "engine/sampler.h"

namespace minillm::cpu {

// logits: [R, V] fp32 (not modified); params: [R]; penalties: the entries params[r].pen_begin..end
// index; n_top: top logprobs per row (0: none).
// Out: tokens [R], logprobs [R] (the chosen token's), top_ids / top_logprobs [R, n_top] (may be
// null when n_top == 0).
void sample(const float* logits, int64_t R, int64_t V, const SampleRowParams* params, const PenaltyEntry* penalties,
            int n_top, int32_t* tokens, float* logprobs, int32_t* top_ids, float* top_logprobs);

}  // namespace minillm::cpu
