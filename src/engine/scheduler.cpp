// Scheduler (scheduler.h).
#include "engine/scheduler.h"

#include <algorithm>

#include "minillm/core/check.h"

namespace minillm {

Scheduler::Scheduler(int num_pages, int page_size, int max_num_seqs, int max_step_tokens)
    : blocks_(num_pages), page_size_(page_size), max_num_seqs_(max_num_seqs), max_step_tokens_(max_step_tokens) {
  MINILLM_CHECK(page_size > 0 && max_num_seqs > 0 && max_step_tokens > 0,
                "scheduler: page_size " << page_size << ", max_num_seqs " << max_num_seqs << ", max_step_tokens "
                                        << max_step_tokens << " must be positive");
}

void Scheduler::preempt(Sequence* s) {
  running_.erase(std::find(running_.begin(), running_.end(), s));
  blocks_.release(s->pages);
  s->num_computed = 0;
  s->scheduled = 0;
  s->admitted = -1;
  waiting_.push_front(s);
  ++preemptions_;
}

std::vector<Sequence*> Scheduler::schedule() {
  std::vector<Sequence*> out;
  int budget = max_step_tokens_;
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* s = running_[i];
    const int n = std::min(static_cast<int>(s->tokens.size()) - s->num_computed, budget);
    const int need = pages_for(s->num_computed + n) - static_cast<int>(s->pages.size());
    bool preempted_self = false;
    while (need > blocks_.num_free()) {  // out of pages: the most recent admission goes back
      Sequence* victim = running_.back();
      preempt(victim);
      if (victim == s) {
        preempted_self = true;
        break;
      }
    }
    if (preempted_self) break;  // s was the last running sequence
    blocks_.allocate(need, s->pages);
    s->scheduled = n;
    budget -= n;
    out.push_back(s);
    ++i;
  }
  while (!waiting_.empty() && budget > 0 && static_cast<int>(running_.size()) < max_num_seqs_) {
    Sequence* s = waiting_.front();
    const int n = std::min(static_cast<int>(s->tokens.size()), budget);
    if (!blocks_.allocate(pages_for(n), s->pages)) break;
    waiting_.pop_front();
    s->num_computed = 0;
    s->scheduled = n;
    s->admitted = admissions_++;
    budget -= n;
    running_.push_back(s);
    out.push_back(s);
  }
  return out;
}

void Scheduler::commit(const std::vector<Sequence*>& seqs) {
  for (Sequence* s : seqs) {
    s->num_computed += s->scheduled;
    s->scheduled = 0;
  }
}

void Scheduler::remove(Sequence* s) {
  auto it = std::find(running_.begin(), running_.end(), s);
  if (it != running_.end()) running_.erase(it);
  auto w = std::find(waiting_.begin(), waiting_.end(), s);
  if (w != waiting_.end()) waiting_.erase(w);
  blocks_.release(s->pages);
  s->scheduled = 0;
}

}  // namespace minillm
