// libFuzzer target: the safetensors reader (parse_safetensors, the validation SafeTensorsFile runs
// on a mapped file) on arbitrary bytes.
// Contract: any input either throws minillm::Error with a bounded message, or yields tensors whose
// byte ranges lie inside the image, tile the data block exactly and match shape x dtype; reading
// every byte of every tensor then stays in bounds (ASan watches). Run: scripts/fuzz.sh [seconds];
// seeds in fuzz/corpus/safetensors/, dictionary fuzz/safetensors.dict.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "minillm/core/check.h"
#include "minillm/safetensors.h"

uint8_t fuzz_safetensors_sink = 0;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A copy of exactly `size` bytes, so that ASan sees any read past the image.
  std::vector<uint8_t> image(data, data + size);
  minillm::SafeTensorsIndex idx;
  try {
    idx = minillm::parse_safetensors(image.data(), image.size(), "fuzz.safetensors");
  } catch (const minillm::Error& e) {
    if (std::string(e.what()).size() > 1024) std::abort();
    return 0;
  }
  uint64_t covered = 0;
  uint8_t sum = 0;
  for (const auto& t : idx.tensors) {
    if (t.end < t.begin || idx.data_offset + t.end > image.size()) std::abort();
    if (static_cast<uint64_t>(t.numel()) * minillm::dtype_size(t.dtype) != t.end - t.begin) std::abort();
    for (uint64_t i = t.begin; i < t.end; ++i) sum = static_cast<uint8_t>(sum + image[idx.data_offset + i]);
    covered += t.end - t.begin;
  }
  if (idx.data_offset + covered != image.size()) std::abort();  // no gap, no trailing byte
  fuzz_safetensors_sink = sum;  // a global: the reads cannot be optimised away
  return 0;
}
