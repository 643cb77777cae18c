// upload_weights (src/model/weight_upload.cpp) for a backend that stores a shared expert among the
// routed experts (Backend::shared_expert_chunks, the CUDA backend's layout for Qwen2-MoE): the gate
// and up rows of chunk j and the down_proj columns of chunk j land in expert E + j, in the backend's
// dtype and padded row stride, next to untouched routed experts. The backend here is host memory with
// a bf16 activation dtype and padded expert rows, so the conversion and chunked copies all run.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "engine/backend.h"
#include "minillm/config.h"
#include "minillm/core/check.h"
#include "minillm/weights.h"

namespace minillm {
namespace {

// Host memory as a bf16 "device": only what upload_weights uses; the compute ops are not called.
class HostBf16Backend final : public Backend {
 public:
  explicit HostBf16Backend(int64_t chunks) : chunks_(chunks) {}
  Device device() const override { return Device::cpu; }
  DType act_dtype() const override { return DType::bf16; }
  int64_t expert_row_stride(int64_t cols) const override { return cols + 8; }
  int64_t shared_expert_chunks(const ModelConfig&) const override { return chunks_; }
  void to_device(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void to_host(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }

  void embedding(const Tensor&, const Tensor&, Tensor&) override { unused(); }
  void linear(const Tensor&, const Tensor&, Tensor&) override { unused(); }
  void rope(Tensor&, const StepBatch&, const ModelConfig&) override { unused(); }
  void qkv_bias_norm(Tensor&, const LayerWeights&, const ModelConfig&) override { unused(); }
  void kv_cache_write(const Tensor&, const StepBatch&, const KVCache&, int, const ModelConfig&) override { unused(); }
  void attention(const Tensor&, Tensor&, const StepBatch&, const KVCache*, int, const ModelConfig&,
                 Workspace&) override {
    unused();
  }
  void gather_rows(const Tensor&, const Tensor&, Tensor&) override { unused(); }
  void sample(Tensor&, const SampleArgs&) override { unused(); }
  void add_norm(Tensor&, const Tensor*, const NormWeights&, const ModelConfig&, Tensor&) override { unused(); }
  void moe(const Tensor&, const LayerWeights&, int, const ModelConfig&, Tensor&, Workspace&) override { unused(); }
  size_t op_workspace_bytes(const ModelConfig&, int64_t) const override { return 0; }

 private:
  [[noreturn]] static void unused() { MINILLM_FAIL("HostBf16Backend: compute ops are not part of this test"); }
  int64_t chunks_;
};

// Element (row, col) of a [rows, cols] bf16 weight with row stride t.stride[ndim - 2], as fp32.
float at(const Tensor& t, int64_t row, int64_t col) {
  uint16_t h;
  std::memcpy(&h, static_cast<const char*>(t.data) + 2 * (row * t.stride[t.ndim - 2] + col), 2);
  return bf16_to_f32(h);
}

float src(const WeightStore& ws, const std::string& name, int64_t row, int64_t col) {
  const HostWeight& w = ws.get(name);
  return bf16_to_f32(f32_to_bf16(w.at(row * w.shape.back() + col)));
}

TEST(WeightUpload, SharedExpertStoredAsExpertChunks) {
  ModelConfig c = preset_config("tiny");
  const int64_t E = c.moe.num_experts, F = c.moe.ffn_size, H = c.hidden_size, S = 3;
  c.moe.shared_expert_ffn = static_cast<int>(S * F);
  c.validate();
  const WeightStore store = WeightStore::random(c, 7, DType::f32);
  HostBf16Backend be(S);
  const ModelWeights mw = upload_weights(be, c, *make_store_source(store));
  ASSERT_EQ(mw.layers.size(), static_cast<size_t>(c.num_layers));
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = mw.layers[l];
    EXPECT_EQ(lw.ws13.data, nullptr);
    EXPECT_EQ(lw.ws2.data, nullptr);
    ASSERT_EQ(lw.w1.shape[0], E + S);
    ASSERT_EQ(lw.w2.shape[0], E + S);
    EXPECT_EQ(lw.w1.stride[1], H + 8);  // the backend's padded rows
    EXPECT_EQ(lw.w2.stride[1], F + 8);
    const std::string gate = layer_name(l, "mlp.shared_expert.gate_proj.weight");
    const std::string up = layer_name(l, "mlp.shared_expert.up_proj.weight");
    const std::string down = layer_name(l, "mlp.shared_expert.down_proj.weight");
    int64_t bad = 0;
    for (int64_t j = 0; j < S; ++j) {
      for (int64_t f = 0; f < F; ++f)
        for (int64_t h = 0; h < H; h += 7) {
          bad += at(lw.w1, (E + j) * F + f, h) != src(store, gate, j * F + f, h);
          bad += at(lw.w3, (E + j) * F + f, h) != src(store, up, j * F + f, h);
        }
      for (int64_t h = 0; h < H; ++h)
        for (int64_t f = 0; f < F; f += 5) bad += at(lw.w2, (E + j) * H + h, f) != src(store, down, h, j * F + f);
    }
    for (int64_t e = 0; e < E; ++e)  // the routed experts around them
      for (int64_t f = 0; f < F; f += 9) {
        bad += at(lw.w1, e * F + f, 3) != src(store, expert_name(l, static_cast<int>(e), "w1"), f, 3);
        bad += at(lw.w2, e * H + f % H, f) != src(store, expert_name(l, static_cast<int>(e), "w2"), f % H, f);
      }
    EXPECT_EQ(bad, 0) << "layer " << l;
    EXPECT_EQ(at(lw.shared_gate, 0, 5), src(store, layer_name(l, "mlp.shared_expert_gate.weight"), 0, 5));
  }
}

// A backend without chunks keeps the shared expert apart ([2 Fs, H] gate/up rows, [H, Fs] down).
TEST(WeightUpload, SharedExpertApart) {
  ModelConfig c = preset_config("tiny");
  const int64_t E = c.moe.num_experts, F = c.moe.ffn_size, H = c.hidden_size;
  c.moe.shared_expert_ffn = static_cast<int>(2 * F);
  c.validate();
  const WeightStore store = WeightStore::random(c, 8, DType::f32);
  HostBf16Backend be(0);
  const ModelWeights mw = upload_weights(be, c, *make_store_source(store));
  const LayerWeights& lw = mw.layers[0];
  EXPECT_EQ(lw.w1.shape[0], E);
  ASSERT_EQ(lw.ws13.shape[0], 4 * F);
  EXPECT_EQ(at(lw.ws13, 2 * F + 1, 2), src(store, layer_name(0, "mlp.shared_expert.up_proj.weight"), 1, 2));
  EXPECT_EQ(at(lw.ws2, H - 1, 2 * F - 1), src(store, layer_name(0, "mlp.shared_expert.down_proj.weight"), H - 1, 2 * F - 1));
}

}  // namespace
}  // namespace minillm
