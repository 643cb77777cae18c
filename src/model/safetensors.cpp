// safetensors reader (mmap + full validation) and writer.
#include "minillm/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/file.h"
#include "core/json.h"
#include "minillm/core/check.h"

namespace minillm {
namespace {

using json = nlohmann::json;

DType parse_st_dtype(const std::string& s, const std::string& where) {
  if (s == "F32") return DType::f32;
  if (s == "F16") return DType::f16;
  if (s == "BF16") return DType::bf16;
  if (s == "I32") return DType::i32;
  if (s == "I64") return DType::i64;
  MINILLM_FAIL(where << ": unsupported dtype " << excerpt(s) << " (supported: F32, F16, BF16, I32, I64)");
}

const char* st_dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
  }
  return "?";
}

}  // namespace

int64_t SafeTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

SafeTensorsIndex parse_safetensors(const uint8_t* bytes, size_t size, const std::string& source) {
  const std::string file = "weights: " + excerpt(source, 256);
  if (size < 8)
    MINILLM_FAIL(file << " is truncated: " << size << " bytes, less than the 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > size - 8)
    MINILLM_FAIL(file << " is truncated or corrupt: header length " << header_len << " exceeds the " << size - 8
                      << " bytes after it");
  if (header_len > kMaxSafeTensorsHeaderBytes)
    MINILLM_FAIL(file << ": header length " << header_len << " exceeds the limit of " << kMaxSafeTensorsHeaderBytes
                      << " bytes");
  const json h = parse_json_strict(
      std::string_view(reinterpret_cast<const char*>(bytes) + 8, static_cast<size_t>(header_len)), file + ": header");
  if (!h.is_object()) MINILLM_FAIL(file << ": header is not a JSON object");
  SafeTensorsIndex out;
  out.data_offset = 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) MINILLM_FAIL(file << ": __metadata__ must be an object, got " << json_excerpt(*it));
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string())
          MINILLM_FAIL(file << ": __metadata__." << excerpt(m.key()) << " must be a string, got " << json_excerpt(*m));
        out.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const std::string where = file + ": tensor " + excerpt(it.key(), 128);
    const json& e = *it;
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      MINILLM_FAIL(where << ": entry needs dtype, shape and data_offsets");
    for (auto f = e.begin(); f != e.end(); ++f) {
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets")
        MINILLM_FAIL(where << ": unknown field " << excerpt(f.key()) << " (allowed: dtype shape data_offsets)");
    }
    if (!e["dtype"].is_string()) MINILLM_FAIL(where << ": dtype must be a string, got " << json_excerpt(e["dtype"]));
    SafeTensorInfo t;
    t.name = it.key();
    t.dtype = parse_st_dtype(e["dtype"].get<std::string>(), where);
    const json& shape = e["shape"];
    if (!shape.is_array()) MINILLM_FAIL(where << ": shape must be an array, got " << json_excerpt(shape));
    if (shape.size() > kMaxTensorRank)
      MINILLM_FAIL(where << ": shape has " << shape.size() << " dims, more than the supported " << kMaxTensorRank);
    int64_t bytes_needed = static_cast<int64_t>(dtype_size(t.dtype));
    for (const json& s : shape) {
      if (!s.is_number_integer() || (!s.is_number_unsigned() && s.get<int64_t>() < 0) ||
          (s.is_number_unsigned() && s.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)))
        MINILLM_FAIL(where << ": bad shape entry " << json_excerpt(s) << " (dims are non-negative integers)");
      t.shape.push_back(s.get<int64_t>());
      if (__builtin_mul_overflow(bytes_needed, t.shape.back(), &bytes_needed))
        MINILLM_FAIL(where << ": shape " << json_excerpt(shape, 120) << " x " << dtype_size(t.dtype)
                           << " bytes overflows 64 bits");
    }
    const json& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      MINILLM_FAIL(where << ": data_offsets must be two non-negative integers, got " << json_excerpt(off, 120));
    t.begin = off[0].get<uint64_t>();
    t.end = off[1].get<uint64_t>();
    if (t.begin > t.end || t.end > data_size)
      MINILLM_FAIL(where << ": data_offsets [" << t.begin << ", " << t.end << "] out of range of the " << data_size
                         << "-byte data block (truncated file?)");
    if (t.end - t.begin != static_cast<uint64_t>(bytes_needed))
      MINILLM_FAIL(where << ": " << t.end - t.begin << " bytes for shape x dtype needing " << bytes_needed);
    out.tensors.push_back(std::move(t));
  }
  // The tensors must tile the data block: sorted by offset, each starts where the previous ended,
  // the first at 0 and the last at the end of the file.
  std::vector<const SafeTensorInfo*> order;
  for (const auto& t : out.tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
  uint64_t reach = 0;
  const SafeTensorInfo* prev = nullptr;
  for (const SafeTensorInfo* t : order) {
    if (t->begin < reach)
      MINILLM_FAIL(file << ": tensors " << excerpt(prev->name, 128) << " and " << excerpt(t->name, 128)
                        << " overlap in the data block");
    if (t->begin > reach)
      MINILLM_FAIL(file << ": " << t->begin - reach << " unused bytes before tensor " << excerpt(t->name, 128)
                        << " at data offset " << reach << " (the tensors must tile the data block)");
    reach = t->end;
    prev = t;
  }
  if (reach != data_size)
    MINILLM_FAIL(file << ": " << data_size - reach << " trailing bytes after the last tensor (the data block is "
                      << data_size << " bytes, the tensors cover " << reach
                      << "; a header length off by some bytes shifts every tensor)");
  return out;
}

SafeTensorsFile::SafeTensorsFile(const std::string& path) : path_(path) {
  const int fd = open_regular_file(path, "weights", &map_size_);
  if (map_size_ < 8) {
    ::close(fd);
    MINILLM_FAIL("weights: " << excerpt(path, 256) << " is truncated: " << map_size_
                             << " bytes, less than the 8-byte header length");
  }
  map_ = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    MINILLM_FAIL("weights: cannot mmap " << excerpt(path, 256) << ": " << std::strerror(errno));
  }
  try {
    SafeTensorsIndex idx = parse_safetensors(static_cast<const uint8_t*>(map_), map_size_, path);
    data_ = static_cast<const uint8_t*>(map_) + idx.data_offset;
    tensors_ = std::move(idx.tensors);
    metadata_ = std::move(idx.metadata);
    for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  } catch (...) {
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
}

SafeTensorsFile::~SafeTensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

const SafeTensorInfo* SafeTensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void write_safetensors(const std::string& path, std::vector<SafeTensorOut> tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  for (size_t i = 1; i < tensors.size(); ++i)
    if (tensors[i].name == tensors[i - 1].name)
      MINILLM_FAIL("weights: cannot write " << excerpt(path, 256) << ": tensor " << excerpt(tensors[i].name)
                                            << " given twice");
  json h = json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t off = 0;
  std::vector<uint64_t> sizes;
  for (const auto& t : tensors) {
    uint64_t n = dtype_size(t.dtype);
    for (int64_t s : t.shape) n *= static_cast<uint64_t>(s);
    h[t.name] = {{"dtype", st_dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + n}}};
    sizes.push_back(n);
    off += n;
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');  // data block starts 8-byte aligned
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) MINILLM_FAIL("weights: cannot write '" << path << "'");
  uint8_t len[8];
  uint64_t hl = header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(hl >> (8 * i));
  f.write(reinterpret_cast<const char*>(len), 8);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (size_t i = 0; i < tensors.size(); ++i)
    f.write(static_cast<const char*>(tensors[i].data), static_cast<std::streamsize>(sizes[i]));
  if (!f) MINILLM_FAIL("weights: error writing '" << path << "'");
}

}  // namespace minillm
