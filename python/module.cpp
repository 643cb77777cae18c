// The nanobind extension `minillm._minillm`; the package python/minillm re-exports it.
#include "bindings.h"

NB_MODULE(_minillm, m) {
  m.doc() = "minillm: a small, fast inference engine for Mixture-of-Experts transformers";
  minillm::py::bind_engine(m);
  minillm::py::bind_tokenizer(m);
  minillm::py::bind_paged(m);
  minillm::py::bind_llm(m);
#ifdef MINILLM_PY_ATTENTION
  minillm::py::bind_attention(m);
#endif
#ifdef MINILLM_PY_MOE
  minillm::py::bind_moe(m);
#endif
}
