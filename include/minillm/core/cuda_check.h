// MINILLM_CUDA_CHECK(expr): throws minillm::Error naming the CUDA error, the expression, file and line.
#pragma once
#include <cuda_runtime.h>

#include "minillm/core/check.h"

#define MINILLM_CUDA_CHECK(expr)                                                          \
  do {                                                                                    \
    cudaError_t minillm_err_ = (expr);                                                    \
    if (minillm_err_ != cudaSuccess) {                                                    \
      ::minillm::detail::fail(__FILE__, __LINE__, #expr,                                  \
                              std::string("CUDA error: ") + cudaGetErrorName(minillm_err_) + \
                                  ": " + cudaGetErrorString(minillm_err_));               \
    }                                                                                     \
  } while (0)

// After a kernel launch: reports launch-configuration errors at the launch site.
#define MINILLM_CUDA_CHECK_LAUNCH() MINILLM_CUDA_CHECK(cudaGetLastError())
