// safetensors: an 8-byte little-endian header length N, N bytes of JSON header
// {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {...}},
// then the data block. The reader mmaps the file and validates everything before use: header
// length, JSON, dtypes, shapes, offsets in range, sizes matching shape x dtype, no overlaps.
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
  int64_t numel() const;
};

class SafeTensorsFile {
 public:
  explicit SafeTensorsFile(const std::string& path);  // throws minillm::Error naming the file and problem
  ~SafeTensorsFile();
  SafeTensorsFile(const SafeTensorsFile&) = delete;
  SafeTensorsFile& operator=(const SafeTensorsFile&) = delete;

  const std::vector<SafeTensorInfo>& tensors() const { return tensors_; }
  const SafeTensorInfo* find(const std::string& name) const;
  const void* data(const SafeTensorInfo& t) const { return data_ + t.begin; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;
  std::vector<SafeTensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

struct SafeTensorOut {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // numel x dtype_size bytes
};
// Writes a safetensors file (tensors sorted by name, data 8-byte aligned). Throws on I/O errors.
void write_safetensors(const std::string& path, std::vector<SafeTensorOut> tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace minillm
