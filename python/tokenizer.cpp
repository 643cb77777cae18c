// Python bindings of the tokenizer: minillm.Tokenizer(path), its streaming decoder and the stop
// string matcher. Text goes in as str (UTF-8) or bytes (must be valid UTF-8); a str that cannot be
// encoded as UTF-8 (lone surrogates) or invalid bytes raise ValueError. Batch calls release the GIL.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/string_view.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <filesystem>

#include "bindings.h"
#include "minillm/core/check.h"
#include "minillm/tokenizer.h"

namespace nb = nanobind;

namespace minillm::py {
namespace {

// str or bytes -> UTF-8 bytes
std::string text_arg(nb::handle h, const char* what) {
  if (PyUnicode_Check(h.ptr())) {
    Py_ssize_t n = 0;
    const char* s = PyUnicode_AsUTF8AndSize(h.ptr(), &n);
    if (!s) {
      PyErr_Clear();
      MINILLM_FAIL(what << " is not valid Unicode (it has lone surrogates) and cannot be encoded as UTF-8");
    }
    return std::string(s, static_cast<size_t>(n));
  }
  if (PyBytes_Check(h.ptr())) {
    std::string s(PyBytes_AsString(h.ptr()), static_cast<size_t>(PyBytes_Size(h.ptr())));
    check_utf8(s, what);
    return s;
  }
  throw nb::type_error("text must be str or bytes");
}

nb::str to_py(const std::string& s) {
  // decoded text is valid UTF-8 (lossy decoding puts U+FFFD where bytes were invalid)
  return nb::str(s.data(), s.size());
}

std::vector<int32_t> ids_arg(nb::handle h) { return nb::cast<std::vector<int32_t>>(h); }

}  // namespace

void bind_tokenizer(nb::module_& m) {
  nb::class_<IncrementalDecoder>(m, "IncrementalDecoder",
                                 "Streaming detokenizer: push(id) -> the text now final (whole characters); "
                                 "flush() -> the rest. Concatenated, they equal Tokenizer.decode(ids).")
      .def("push", [](IncrementalDecoder& d, int32_t id) { return to_py(d.push(id)); }, nb::arg("id"))
      .def("flush", [](IncrementalDecoder& d) { return to_py(d.flush()); });

  nb::class_<StopStringMatcher>(m, "StopStringMatcher",
                                "Stop strings matched across pieces of streamed text: feed(text) -> text to show now; "
                                "stopped, matched; flush() -> held text at the end.")
      .def(nb::init<std::vector<std::string>>(), nb::arg("stops"))
      .def("feed", [](StopStringMatcher& s, nb::handle t) { return to_py(s.feed(text_arg(t, "text"))); }, nb::arg("text"))
      .def("flush", [](StopStringMatcher& s) { return to_py(s.flush()); })
      .def_prop_ro("stopped", &StopStringMatcher::stopped)
      .def_prop_ro("matched", [](const StopStringMatcher& s) { return to_py(s.matched()); });

  nb::class_<TextStreamer>(m, "TextStreamer",
                           "Generated ids -> text to print: the incremental decoder then the stop strings. "
                           "push(id) -> text to show now; stopped; matched; finish() -> the held rest.")
      .def("push", [](TextStreamer& s, int32_t id) { return to_py(s.push(id)); }, nb::arg("id"))
      .def("finish", [](TextStreamer& s) { return to_py(s.finish()); })
      .def_prop_ro("stopped", &TextStreamer::stopped)
      .def_prop_ro("matched", [](const TextStreamer& s) { return to_py(s.matched()); });

  nb::class_<Tokenizer>(m, "Tokenizer",
                        "Tokenizer(path): a model directory (tokenizer.json, else tokenizer.model, with "
                        "tokenizer_config.json), or a tokenizer.json / .model file. Exact to Hugging Face tokenizers.")
      .def(nb::new_([](nb::handle path) {
             const std::string p = nb::cast<std::string>(nb::str(path));
             return std::filesystem::is_directory(p) ? Tokenizer::from_dir(p) : Tokenizer::from_file(p);
           }),
           nb::arg("path"))
      .def("encode",
           [](const Tokenizer& t, nb::handle text, bool add_special_tokens) {
             const std::string s = text_arg(text, "text");
             nb::gil_scoped_release r;
             return t.encode(s, add_special_tokens);
           },
           nb::arg("text"), nb::arg("add_special_tokens") = true)
      .def("decode",
           [](const Tokenizer& t, nb::handle ids, bool skip) { return to_py(t.decode(ids_arg(ids), skip)); },
           nb::arg("ids"), nb::arg("skip_special_tokens") = false)
      .def("encode_batch",
           [](const Tokenizer& t, nb::handle texts, bool add_special_tokens) {
             std::vector<std::string> in;
             for (nb::handle h : texts) in.push_back(text_arg(h, "text"));
             std::vector<std::vector<int32_t>> out(in.size());
             nb::gil_scoped_release r;
             for (size_t i = 0; i < in.size(); ++i) out[i] = t.encode(in[i], add_special_tokens);
             return out;
           },
           nb::arg("texts"), nb::arg("add_special_tokens") = true)
      .def("decode_batch",
           [](const Tokenizer& t, nb::handle batch, bool skip) {
             nb::list out;
             for (nb::handle ids : batch) out.append(to_py(t.decode(ids_arg(ids), skip)));
             return out;
           },
           nb::arg("ids"), nb::arg("skip_special_tokens") = false)
      .def("decoder", [](const Tokenizer& t, bool skip) { return std::make_unique<IncrementalDecoder>(t, skip); },
           nb::arg("skip_special_tokens") = false, nb::keep_alive<0, 1>())
      .def("streamer",
           [](const Tokenizer& t, std::vector<std::string> stops, bool skip) {
             return std::make_unique<TextStreamer>(t, std::move(stops), skip);
           },
           nb::arg("stop") = std::vector<std::string>{}, nb::arg("skip_special_tokens") = true, nb::keep_alive<0, 1>())
      .def("id_to_token", [](const Tokenizer& t, int32_t id) { return to_py(t.id_to_token(id)); }, nb::arg("id"))
      .def("token_to_id", [](const Tokenizer& t, nb::handle s) {
             const int32_t id = t.token_to_id(text_arg(s, "token"));
             return id < 0 ? nb::object(nb::none()) : nb::object(nb::int_(id));
           }, nb::arg("token"))
      .def("is_special", &Tokenizer::is_special, nb::arg("id"))
      .def_prop_ro("vocab_size", &Tokenizer::vocab_size)
      .def_prop_ro("bos_token_id", &Tokenizer::bos_token_id)
      .def_prop_ro("eos_token_id", &Tokenizer::eos_token_id)
      .def_prop_ro("kind", &Tokenizer::kind)
      .def("__repr__", [](const Tokenizer& t) {
        return "Tokenizer(" + t.kind() + ", vocab_size=" + std::to_string(t.vocab_size()) + ")";
      });
}

}  // namespace minillm::py
