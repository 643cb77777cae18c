// Launcher of the device sampling op (src/engine/sampler.h says what it computes).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/sampler.h"

namespace minillm::cuda::sampling {

// logits: device [R, V] fp32 (penalised in place); a: device arrays (sampler.h). One block per row.
void sample(float* logits, int64_t R, int64_t V, const SampleArgs& a, cudaStream_t stream);

}  // namespace minillm::cuda::sampling
