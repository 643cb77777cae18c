// Ablation variants of the Hopper FlashAttention forward kernel (bf16 only), for the measurements in
// docs/HOPPER_ATTENTION.md: built only with -DMINILLM_ATTN_ABLATION (e.g. CMAKE_CUDA_FLAGS), selected
// with MINILLM_SM90_VARIANT=serial|nopingpong|serial_nopingpong|exp2_quarter|exp2_third|exp2_half
// (head dim 64: 192-row tiles).
#include "cuda/attention/flash_fwd_sm90.cuh"

namespace minillm::cuda::attn {

#ifdef MINILLM_ATTN_ABLATION
namespace {

template <int D, int kConsumers, int kStages, int kExp2Poly>
bool run_variant(const FlashFwdArgs& args, const Sm90Options& opt, cudaStream_t stream) {
  using T = __nv_bfloat16;
  switch (opt.variant) {
    case Sm90Variant::kSerial:
      return launch_flash_fwd_sm90<Sm90FwdTraits<D, kConsumers, 128, kStages, false, true, kExp2Poly>, T>(args, opt,
                                                                                                           stream);
    case Sm90Variant::kNoPingPong:
      return launch_flash_fwd_sm90<Sm90FwdTraits<D, kConsumers, 128, kStages, true, false, kExp2Poly>, T>(args, opt,
                                                                                                           stream);
    case Sm90Variant::kSerialNoPingPong:
      return launch_flash_fwd_sm90<Sm90FwdTraits<D, kConsumers, 128, kStages, false, false, kExp2Poly>, T>(args, opt,
                                                                                                            stream);
    default:
      break;
  }
  constexpr int kC = D == 64 ? 3 : 2;  // the default kernels' tiles: 192 x 128 (D64), 128 x 128 (D128)
  switch (opt.variant) {
    case Sm90Variant::kExp2Quarter:
      return launch_flash_fwd_sm90<Sm90FwdTraits<D, kC, 128, kStages, true, true, 4>, T>(args, opt, stream);
    case Sm90Variant::kExp2Third:
      return launch_flash_fwd_sm90<Sm90FwdTraits<D, kC, 128, kStages, true, true, 3>, T>(args, opt, stream);
    case Sm90Variant::kExp2Half:
      return launch_flash_fwd_sm90<Sm90FwdTraits<D, kC, 128, kStages, true, true, 2>, T>(args, opt, stream);
    default:
      break;
  }
  MINILLM_CHECK(false, "unknown sm90 variant");
  return false;
}

}  // namespace

bool run_flash_fwd_sm90_ablation(const FlashFwdArgs& args, const Sm90Options& opt, cudaStream_t stream) {
  MINILLM_CHECK(args.p.dtype == DType::bf16, "MINILLM_SM90_VARIANT: the ablation variants are built for bf16 only");
  return args.p.head_dim == 64 ? run_variant<64, 3, 3, 0>(args, opt, stream)
                               : run_variant<128, 2, 2, 0>(args, opt, stream);
}
#else
bool run_flash_fwd_sm90_ablation(const FlashFwdArgs&, const Sm90Options&, cudaStream_t) {
  MINILLM_CHECK(false, "MINILLM_SM90_VARIANT: the ablation variants were not built (-DMINILLM_ATTN_ABLATION)");
  return false;
}
#endif

}  // namespace minillm::cuda::attn
