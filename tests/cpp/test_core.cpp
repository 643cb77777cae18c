// core/: dtype conversions, error messages, tensors and the workspace arena.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "minillm/core/check.h"
#include "minillm/core/dtype.h"
#include "minillm/core/tensor.h"

using minillm::Error;

TEST(Core, Bf16RoundsToNearestEven) {
  using minillm::bf16_to_f32;
  using minillm::f32_to_bf16;
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xc000);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0); a hair above rounds up.
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256 + 1.0f / 65536)), 1.0f + 1.0f / 128);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::infinity()))));
}

TEST(Core, Fp16RoundTripsAndRounds) {
  using minillm::f16_to_f32;
  using minillm::f32_to_f16;
  // Every finite fp16 value converts to fp32 and back unchanged.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00) continue;  // inf / nan
    EXPECT_EQ(f32_to_f16(f16_to_f32(static_cast<uint16_t>(h))), h) << h;
  }
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);     // max finite
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);     // rounds to inf
  EXPECT_EQ(f16_to_f32(f32_to_f16(5.96e-8f)), 5.9604644775390625e-8f);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(1.0f + 1.0f / 2048), 0x3c00);  // tie to even
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::nanf("")))));
  EXPECT_THROW(minillm::parse_dtype("fp8"), Error);
  EXPECT_EQ(minillm::parse_dtype("bfloat16"), minillm::DType::bf16);
}

TEST(Core, ErrorMessagesFormatNumbersWithoutIostreams) {
  try {
    MINILLM_FAIL("x = " << 42 << ", y = " << -7L << ", z = " << 2.5f << ", s = " << std::string("ok") << " " << true);
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "x = 42, y = -7, z = 2.5, s = ok true");
  }
  try {
    MINILLM_CHECK(1 + 1 == 3, "size " << size_t{3});
    ADD_FAILURE();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("size 3 [check '1 + 1 == 3' failed at "), std::string::npos) << m;
  }
}

TEST(Core, TensorViewsAndShapeChecks) {
  minillm::OwnedTensor t(minillm::DType::f32, minillm::Device::cpu, {2, 3, 4});
  EXPECT_EQ(t.t.numel(), 24);
  EXPECT_TRUE(t.t.is_contiguous());
  EXPECT_EQ(t.t.shape_str(), "[2, 3, 4]");
  EXPECT_EQ(t.t.view({6, 4}).size(-1), 4);
  EXPECT_THROW(t.t.view({5, 5}), Error);
  try {
    minillm::check_tensor(t.t, "w", minillm::DType::bf16, {2, 3, 4});
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "w: expected bf16 [2, 3, 4], got f32 [2, 3, 4]");
  }
}

TEST(Core, WorkspaceIsABoundedArena) {
  minillm::Workspace ws(4096, minillm::Device::cpu);
  auto a = ws.alloc(minillm::DType::f32, {100});
  const size_t mark = ws.used();
  auto b = ws.alloc(minillm::DType::bf16, {10});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data) % 256, 0u);
  EXPECT_GT(b.data, a.data);
  ws.rewind(mark);
  EXPECT_EQ(ws.alloc(minillm::DType::bf16, {10}).data, b.data);  // space reused after rewind
  try {
    ws.alloc(minillm::DType::f32, {4096});
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds the planned capacity of 4096 bytes"), std::string::npos);
  }
  EXPECT_GE(ws.peak(), mark);
}
