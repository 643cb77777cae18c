// Element types and host-side conversions between fp32 and the 16-bit float formats.
// bf16: round-to-nearest-even on the upper 16 bits of the fp32 pattern (NaN kept quiet).
// fp16: IEEE binary16, round-to-nearest-even, overflow to inf, subnormals kept.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace minillm {

enum class DType : uint8_t { f32, f16, bf16, i32, i64 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::i32: return 4;
    case DType::i64: return 8;
  }
  return 0;
}

const char* dtype_name(DType t);                 // "f32", "f16", "bf16", "i32", "i64"
DType parse_dtype(std::string_view s);           // accepts f32/fp32/float32, f16/fp16/float16, bf16/bfloat16; throws
bool is_float(DType t);

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);

// Rounds an fp32 value to the nearest value representable in `t` (identity for f32).
float round_to(DType t, float x);
// Index of the first NaN or Inf among the `n` elements of a float tensor's raw bytes `p`, or -1.
int64_t first_non_finite(DType t, const uint8_t* p, int64_t n);

}  // namespace minillm
