// safetensors reader (mmap + full validation) and writer.
#include "minillm/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

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
  MINILLM_FAIL(where << ": unsupported dtype '" << s << "' (supported: F32, F16, BF16, I32, I64)");
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

SafeTensorsFile::SafeTensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) MINILLM_FAIL("weights: cannot open '" << path << "': " << std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    MINILLM_FAIL("weights: cannot stat '" << path << "'");
  }
  map_size_ = static_cast<size_t>(st.st_size);
  if (map_size_ < 8) {
    ::close(fd);
    MINILLM_FAIL("weights: '" << path << "' is truncated: " << map_size_ << " bytes, less than the 8-byte header length");
  }
  map_ = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    MINILLM_FAIL("weights: cannot mmap '" << path << "'");
  }
  try {
    const auto* bytes = static_cast<const uint8_t*>(map_);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
    if (header_len > map_size_ - 8)
      MINILLM_FAIL("weights: '" << path << "' is truncated or corrupt: header length " << header_len << " exceeds the "
                                << map_size_ - 8 << " bytes after it");
    if (header_len > (100u << 20)) MINILLM_FAIL("weights: '" << path << "': header length " << header_len << " exceeds 100 MB");
    json h;
    try {
      h = json::parse(bytes + 8, bytes + 8 + header_len);
    } catch (const json::parse_error& e) {
      MINILLM_FAIL("weights: '" << path << "': malformed JSON header: " << e.what());
    }
    if (!h.is_object()) MINILLM_FAIL("weights: '" << path << "': header is not a JSON object");
    data_ = bytes + 8 + header_len;
    const uint64_t data_size = map_size_ - 8 - header_len;
    for (auto it = h.begin(); it != h.end(); ++it) {
      const std::string where = "weights: '" + path + "': tensor '" + it.key() + "'";
      if (it.key() == "__metadata__") {
        if (!it->is_object()) MINILLM_FAIL("weights: '" << path << "': __metadata__ must be an object");
        for (auto m = it->begin(); m != it->end(); ++m) {
          if (!m->is_string()) MINILLM_FAIL("weights: '" << path << "': __metadata__." << m.key() << " must be a string");
          metadata_[m.key()] = m->get<std::string>();
        }
        continue;
      }
      const json& e = *it;
      if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
        MINILLM_FAIL(where << ": entry needs dtype, shape and data_offsets");
      if (!e["dtype"].is_string()) MINILLM_FAIL(where << ": dtype must be a string");
      SafeTensorInfo t;
      t.name = it.key();
      t.dtype = parse_st_dtype(e["dtype"].get<std::string>(), where);
      if (!e["shape"].is_array()) MINILLM_FAIL(where << ": shape must be an array");
      for (const json& s : e["shape"]) {
        if (!s.is_number_integer() || s.get<int64_t>() < 0) MINILLM_FAIL(where << ": bad shape entry " << s.dump());
        t.shape.push_back(s.get<int64_t>());
      }
      const json& off = e["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        MINILLM_FAIL(where << ": data_offsets must be two non-negative integers, got " << off.dump());
      t.begin = off[0].get<uint64_t>();
      t.end = off[1].get<uint64_t>();
      if (t.begin > t.end || t.end > data_size)
        MINILLM_FAIL(where << ": data_offsets [" << t.begin << ", " << t.end << "] out of range of the " << data_size
                           << "-byte data block (truncated file?)");
      const uint64_t want = static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype);
      if (t.end - t.begin != want)
        MINILLM_FAIL(where << ": " << t.end - t.begin << " bytes for shape x dtype needing " << want);
      tensors_.push_back(std::move(t));
    }
    std::vector<const SafeTensorInfo*> order;
    for (const auto& t : tensors_) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
    const SafeTensorInfo* reach = nullptr;  // the tensor reaching furthest so far
    for (const SafeTensorInfo* t : order) {
      if (t->end == t->begin) continue;
      if (reach && t->begin < reach->end)
        MINILLM_FAIL("weights: '" << path << "': tensors '" << reach->name << "' and '" << t->name
                                  << "' overlap in the data block");
      if (!reach || t->end > reach->end) reach = t;
    }
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
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

void write_safetensors(const std::string& path, std::vector<SafeTensorOut> tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
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
