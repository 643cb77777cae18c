// Continuous batching: which tokens of which sequences run in the next step. Plain host code (no
// device), tested on its own and through the CPU engine.
//
// Each schedule():
//   1. running sequences, oldest admission first, each get their remaining tokens (1 when
//      decoding, the rest of the prompt when prefilling) up to what is left of the token budget
//      (chunked prefill); a sequence takes the pages its new tokens need. When the pool is out of
//      pages, the most recently admitted running sequence is preempted (its pages freed, its
//      tokens recomputed later from the front of the queue), possibly the one asking;
//   2. waiting sequences are admitted in order while the budget, max_num_seqs and free pages
//      allow (admission never preempts).
// The oldest running sequence can always proceed as long as the pool holds one whole sequence,
// so every request finishes.
#pragma once
#include <cstdint>
#include <deque>
#include <vector>

#include "engine/block_manager.h"

namespace minillm {

struct Sequence {
  int64_t id = 0;
  std::vector<int32_t> tokens;  // prompt, then the generated tokens
  int prompt_len = 0;
  int num_computed = 0;         // tokens whose K/V are in the cache
  std::vector<int32_t> pages;   // the cache pages of tokens [0, num_computed + scheduled)
  int64_t admitted = -1;        // admission order (-1: waiting)
  int scheduled = 0;            // new tokens in the step being built
  int num_output() const { return static_cast<int>(tokens.size()) - prompt_len; }
  // The step's last new token is the sequence's last token: its logits draw the next token.
  bool samples() const { return num_computed + scheduled == static_cast<int>(tokens.size()); }
};

class Scheduler {
 public:
  Scheduler(int num_pages, int page_size, int max_num_seqs, int max_step_tokens);

  void add(Sequence* s) { waiting_.push_back(s); }
  // The sequences of the next step in batch order (each with s->scheduled > 0); empty when idle.
  std::vector<Sequence*> schedule();
  // After a step: marks the scheduled tokens computed.
  void commit(const std::vector<Sequence*>& seqs);
  // Removes a sequence (finished or aborted) from the queues and returns its pages.
  void remove(Sequence* s);

  int pages_for(int tokens) const { return (tokens + page_size_ - 1) / page_size_; }
  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  const BlockManager& blocks() const { return blocks_; }
  int64_t preemptions() const { return preemptions_; }

 private:
  void preempt(Sequence* s);

  BlockManager blocks_;
  int page_size_, max_num_seqs_, max_step_tokens_;
  std::vector<Sequence*> running_;  // in admission order
  std::deque<Sequence*> waiting_;
  int64_t admissions_ = 0, preemptions_ = 0;
};

}  // namespace minillm
