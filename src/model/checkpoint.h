// A validated Hugging Face model directory as a WeightSource: shard by shard, each mmapped, its
// tensors handed over under our names (docs/WEIGHTS.md) straight from the mapping, then unmapped.
#pragma once
#include "engine/backend.h"
#include "minillm/checkpoint.h"

namespace minillm {

class CheckpointSource final : public WeightSource {
 public:
  // `info` from inspect_checkpoint; `progress` (may be empty) is called after each shard.
  CheckpointSource(const CheckpointInfo& info, LoadProgressFn progress) : info_(info), progress_(std::move(progress)) {}
  void for_each(const Sink& sink) const override;

 private:
  const CheckpointInfo& info_;
  LoadProgressFn progress_;
};

}  // namespace minillm
