// StepBatchBuilder: the host side of a StepBatch (step_batch.h).
#include "engine/step_batch.h"

#include <algorithm>

namespace minillm {

void StepBatchBuilder::reset(int max_pages, int page_size) {
  max_pages_ = max_pages;
  page_size_ = page_size;
  uniform_len_ = max_q_ = max_ctx_ = 0;
  no_prefix_ = true;
  ids_.clear();
  pos_.clear();
  cu_.assign(1, 0);
  ctx_.clear();
  table_.clear();
  slots_.clear();
  rows_.clear();
}

void StepBatchBuilder::add(const int32_t* tokens, int n, int start, const int32_t* pages, int num_pages, bool logits) {
  MINILLM_CHECK(n >= 1 && start >= 0, "step batch: " << n << " new tokens after " << start);
  const int ctx = start + n;
  const int need = max_pages_ > 0 ? (ctx + page_size_ - 1) / page_size_ : 0;
  MINILLM_CHECK(max_pages_ == 0 || (num_pages >= need && num_pages <= max_pages_),
                "step batch: " << num_pages << " pages for " << ctx << " tokens (max " << max_pages_ << ")");
  for (int i = 0; i < n; ++i) {
    const int p = start + i;
    ids_.push_back(tokens ? tokens[i] : 0);
    pos_.push_back(p);
    slots_.push_back(max_pages_ > 0 ? pages[p / page_size_] * page_size_ + p % page_size_ : 0);
  }
  if (logits) rows_.push_back(static_cast<int32_t>(ids_.size()) - 1);
  cu_.push_back(static_cast<int32_t>(ids_.size()));
  ctx_.push_back(ctx);
  for (int j = 0; j < max_pages_; ++j) table_.push_back(j < num_pages ? pages[j] : 0);
  max_q_ = std::max(max_q_, n);
  max_ctx_ = std::max(max_ctx_, ctx);
  no_prefix_ = no_prefix_ && start == 0;
}

size_t StepBatchBuilder::packed_size() const {
  const size_t T = ids_.size(), S = ctx_.size(), R = uniform_len_ > 0 ? T : rows_.size();
  return 3 * T + (S + 1) + S + table_.size() + R;
}

void StepBatchBuilder::pack(int32_t* dst) const {
  auto put = [&](const std::vector<int32_t>& v) { dst = std::copy(v.begin(), v.end(), dst); };
  put(ids_);
  put(pos_);
  put(cu_);
  put(ctx_);
  put(table_);
  put(slots_);
  if (uniform_len_ > 0) {
    for (size_t t = 0; t < ids_.size(); ++t) *dst++ = static_cast<int32_t>(t);
  } else {
    put(rows_);
  }
}

StepBatch StepBatchBuilder::view(void* device_base, Device device) const {
  StepBatch b;
  b.T = num_tokens();
  b.S = num_seqs();
  b.R = uniform_len_ > 0 ? b.T : static_cast<int>(rows_.size());
  b.max_pages = max_pages_;
  b.max_q_len = max_q_;
  b.max_context = max_ctx_;
  b.uniform_len = uniform_len_;
  b.no_prefix = no_prefix_;
  b.all_rows = b.R == b.T;
  for (int r = 0; b.all_rows && r < b.R && uniform_len_ == 0; ++r) b.all_rows = rows_[r] == r;
  auto* p = static_cast<int32_t*>(device_base);
  auto take = [&](int64_t n) {
    Tensor t(p, DType::i32, device, {n});
    p += n;
    return t;
  };
  b.token_ids = take(b.T);
  b.positions = take(b.T);
  b.cu_seqlens_q = take(b.S + 1);
  b.context_lens = take(b.S);
  b.block_table = Tensor(p, DType::i32, device, {b.S, max_pages_});
  p += static_cast<int64_t>(b.S) * max_pages_;
  b.slot_mapping = take(b.T);
  b.logits_rows = take(b.R);
  return b;
}

}  // namespace minillm
