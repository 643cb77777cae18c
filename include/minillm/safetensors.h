// safetensors: an 8-byte little-endian header length N, N bytes of JSON header
// {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {...}},
// then the data block. The reader mmaps the file and validates everything before use, strictly
// (docs/WEIGHTS.md): header length within the file and at most 100 MB; the header strict JSON (no
// NUL byte, no duplicate key, so no tensor named twice; nesting at most 64); known dtypes; shapes of
// at most 8 dims whose byte size fits 64 bits and equals the offsets' span; and the tensors tiling
// the data block exactly: no overlap, no gap, no trailing byte (so a header length that is off by
// one, which shifts every tensor, is an error rather than garbage weights).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "minillm/core/dtype.h"

namespace minillm {

struct SafeTensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data block
  int64_t numel() const;  // validated by the reader to fit in 64 bits
};

// The validated header of a safetensors image: tensors in header order, string metadata, and where
// the data block starts (8 + header length).
struct SafeTensorsIndex {
  std::vector<SafeTensorInfo> tensors;
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;
};
inline constexpr uint64_t kMaxSafeTensorsHeaderBytes = 100u << 20;
inline constexpr size_t kMaxTensorRank = 8;
// Validates a whole safetensors image of `size` bytes (the file reader and the fuzzer call it).
// Throws minillm::Error "weights: '<source>': ..." naming the tensor and field.
SafeTensorsIndex parse_safetensors(const uint8_t* bytes, size_t size, const std::string& source);

class SafeTensorsFile {
 public:
  explicit SafeTensorsFile(const std::string& path);  // throws minillm::Error naming the file and problem
  ~SafeTensorsFile();
  SafeTensorsFile(const SafeTensorsFile&) = delete;
  SafeTensorsFile& operator=(const SafeTensorsFile&) = delete;

  const std::vector<SafeTensorInfo>& tensors() const { return tensors_; }
  const SafeTensorInfo* find(const std::string& name) const;  // nullptr when absent
  const void* data(const SafeTensorInfo& t) const { return data_ + t.begin; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;
  std::vector<SafeTensorInfo> tensors_;
  std::map<std::string, size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

struct SafeTensorOut {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // numel x dtype_size bytes
};
// Writes a safetensors file (tensors sorted by name, data 8-byte aligned). Throws on I/O errors
// and on a name given twice.
void write_safetensors(const std::string& path, std::vector<SafeTensorOut> tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace minillm
