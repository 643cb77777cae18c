#include "minillm/core/dtype.h"

#include <cmath>
#include <cstring>

#include "minillm/core/check.h"

namespace minillm {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
  }
  return "?";
}

DType parse_dtype(std::string_view s) {
  if (s == "f32" || s == "fp32" || s == "float32") return DType::f32;
  if (s == "f16" || s == "fp16" || s == "float16") return DType::f16;
  if (s == "bf16" || s == "bfloat16") return DType::bf16;
  MINILLM_FAIL("unknown dtype '" << s << "' (expected one of bf16, fp16, fp32)");
}

bool is_float(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; }

uint16_t f32_to_f16(float f) {
  const uint32_t u = f32_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {                                              // below 2^-14: subnormal or zero
    // value = abs_float; subnormal unit is 2^-24. Round to nearest even integer multiple.
    const float a = bits_f32(abs);
    const float scaled = a * 16777216.0f;  // exact: multiply by 2^24
    const float r = std::nearbyint(scaled);  // default rounding mode: to nearest even
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(r));
  }
  // Normal: rebias exponent (127 -> 15), keep 10 mantissa bits with round-to-nearest-even.
  uint32_t v = abs - (112u << 23);
  v += 0xfffu + ((v >> 13) & 1u);
  return static_cast<uint16_t>(sign | (v >> 13));
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    const float v = static_cast<float>(man) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_f32(sign | 0x7f800000u | (man << 13));
  return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

float round_to(DType t, float x) {
  switch (t) {
    case DType::bf16: return bf16_to_f32(f32_to_bf16(x));
    case DType::f16: return f16_to_f32(f32_to_f16(x));
    default: return x;
  }
}

// Index of the first NaN or Inf among `n` elements of a float tensor's raw bytes, or -1. Reads
// only the exponent bits (all ones: NaN or Inf), so it runs at memory speed.
int64_t first_non_finite(DType dt, const uint8_t* p, int64_t n) {
  int64_t first = n;
  if (dt == DType::f32) {
#pragma omp parallel for simd reduction(min : first) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      uint32_t u;
      std::memcpy(&u, p + 4 * i, 4);
      if ((u & 0x7f800000u) == 0x7f800000u) first = i < first ? i : first;
    }
  } else if (dt == DType::bf16 || dt == DType::f16) {
    const uint16_t mask = dt == DType::bf16 ? 0x7f80 : 0x7c00;
#pragma omp parallel for simd reduction(min : first) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      if ((h & mask) == mask) first = i < first ? i : first;
    }
  }
  return first == n ? -1 : first;
}

}  // namespace minillm
