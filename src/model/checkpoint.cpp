// Hugging Face model directories: config.json (hf_config.cpp), model.safetensors or the shards of
// model.safetensors.index.json, validated completely before any upload (inspect_checkpoint), then
// streamed shard by shard (CheckpointSource): each shard is mmapped (SafeTensorsFile validates its
// header, offsets and sizes again), its pages are asked for up front (MADV_WILLNEED / POPULATE_READ,
// best effort), each tensor goes to upload_weights under our name, and the mapping is dropped before
// the next shard. Host memory: the page cache of one shard plus upload_weights' bounded staging.
#include "model/checkpoint.h"

#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/json.h"
#include "minillm/core/check.h"
#include "minillm/safetensors.h"
#include "minillm/weights.h"
#include "model/hf_config.h"

namespace minillm {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string read_text(const fs::path& p) {
  std::ifstream f(p);
  if (!f) MINILLM_FAIL("model directory: cannot open '" << p.string() << "'");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

HfConfig read_hf_config(const std::string& dir) {
  const fs::path p = fs::path(dir) / "config.json";
  if (!fs::is_directory(dir)) MINILLM_FAIL("model directory '" << dir << "' does not exist or is not a directory");
  if (!fs::exists(p)) MINILLM_FAIL("model directory '" << dir << "': missing config.json");
  return parse_hf_config(read_text(p), p.string());
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// HF name -> our name for every tensor the config needs, with its shape.
std::map<std::string, WeightSpec> expected_tensors(const std::string& model_type, const ModelConfig& c) {
  std::map<std::string, WeightSpec> m;
  for (WeightSpec& s : weight_specs(c)) m.emplace(hf_tensor_name(model_type, s.name), std::move(s));
  return m;
}

// Asks the kernel for the pages of [p, p + n) ahead of the copy (best effort: errors are ignored).
void prefetch(const void* p, size_t n) {
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t a = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
  const size_t len = n + (reinterpret_cast<uintptr_t>(p) - a);
#ifdef MADV_POPULATE_READ
  if (madvise(reinterpret_cast<void*>(a), len, MADV_POPULATE_READ) == 0) return;
#endif
  madvise(reinterpret_cast<void*>(a), len, MADV_WILLNEED);
}

}  // namespace

bool is_model_dir(const std::string& path) {
  for (const char* const* n = preset_names(); *n; ++n)
    if (path == *n) return false;  // a preset name means the preset (a directory of that name: ./name)
  std::error_code ec;
  return fs::is_directory(path, ec) && fs::exists(fs::path(path) / "config.json", ec);
}

ModelConfig load_model_dir_config(const std::string& dir) { return read_hf_config(dir).config; }

CheckpointInfo inspect_checkpoint(const std::string& dir) {
  const HfConfig h = read_hf_config(dir);
  CheckpointInfo info;
  info.dir = dir;
  info.model_type = h.model_type;
  info.config = h.config;
  const fs::path root(dir);

  // Shards: the index's files (sorted, each once), or the single model.safetensors.
  std::map<std::string, std::string> index;  // tensor -> file (sharded only)
  const fs::path index_path = root / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    const std::string where = index_path.string();
    json j;
    try {
      j = parse_json_strict(read_text(index_path), where);
    } catch (const json::parse_error& e) {
      MINILLM_FAIL(where << ": malformed JSON: " << e.what());
    }
    if (!j.is_object() || !j.contains("weight_map") || !j.at("weight_map").is_object())
      MINILLM_FAIL(where << ": missing object 'weight_map'");
    std::set<std::string> files;
    for (auto it = j.at("weight_map").begin(); it != j.at("weight_map").end(); ++it) {
      if (!it.value().is_string())
        MINILLM_FAIL(where << ": weight_map['" << it.key() << "'] must be a file name, got " << json_excerpt(it.value()));
      const std::string f = it.value().get<std::string>();
      if (f.empty() || f.find('/') != std::string::npos || f.find('\\') != std::string::npos || f == "." || f == "..")
        MINILLM_FAIL(where << ": weight_map['" << it.key() << "'] = '" << f << "' is not a file name in the directory");
      index[it.key()] = f;
      files.insert(f);
    }
    for (const std::string& f : files) {
      const fs::path p = root / f;
      if (!fs::exists(p)) MINILLM_FAIL(where << ": shard '" << f << "' is named in the index but missing");
      info.shards.push_back(p.string());
    }
  } else if (fs::exists(root / "model.safetensors")) {
    info.shards.push_back((root / "model.safetensors").string());
  } else {
    MINILLM_FAIL("model directory '" << dir << "': no model.safetensors or model.safetensors.index.json");
  }

  auto expected = expected_tensors(h.model_type, info.config);
  std::optional<DType> dtype = h.dtype;
  std::set<std::string> seen;
  for (const std::string& path : info.shards) {
    const SafeTensorsFile f(path);  // validates the header, offsets and sizes against the file
    info.shard_bytes.push_back(fs::file_size(path));
    const std::string file = fs::path(path).filename().string();
    for (const SafeTensorInfo& t : f.tensors()) {
      auto it = expected.find(t.name);
      if (it == expected.end())
        MINILLM_FAIL("weights: '" << path << "': unexpected tensor '" << t.name << "' for model_type " << h.model_type);
      if (!index.empty()) {
        auto ix = index.find(t.name);
        if (ix == index.end())
          MINILLM_FAIL("weights: '" << path << "': tensor '" << t.name << "' is not in model.safetensors.index.json");
        if (ix->second != file)
          MINILLM_FAIL("weights: '" << path << "': tensor '" << t.name << "' is here, but the index names '"
                                    << ix->second << "'");
      }
      if (!seen.insert(t.name).second) MINILLM_FAIL("weights: '" << path << "': tensor '" << t.name << "' appears twice");
      if (t.shape != it->second.shape)
        MINILLM_FAIL("weights: '" << path << "': tensor '" << t.name << "' has shape " << shape_str(t.shape)
                                  << ", expected " << shape_str(it->second.shape));
      if (!dtype) dtype = t.dtype;
      if (!is_float(t.dtype) || (t.dtype != *dtype && t.dtype != DType::f32))
        MINILLM_FAIL("weights: '" << path << "': tensor '" << t.name << "' has dtype " << dtype_name(t.dtype)
                                  << ", expected " << dtype_name(*dtype) << " (config.json's dtype) or f32");
      info.tensor_bytes += t.end - t.begin;
    }
  }
  for (const auto& [name, file] : index) {
    if (!seen.count(name)) {
      if (!expected.count(name))
        MINILLM_FAIL("weights: '" << index_path.string() << "': unexpected tensor '" << name << "' for model_type "
                                  << h.model_type);
      MINILLM_FAIL("weights: '" << (root / file).string() << "': tensor '" << name
                                << "' is named in the index but missing from this shard");
    }
  }
  for (const auto& [name, spec] : expected) {
    if (!seen.count(name)) MINILLM_FAIL("weights: '" << dir << "': missing tensor '" << name << "'");
  }
  info.dtype = dtype.value_or(DType::f32);
  return info;
}

void CheckpointSource::for_each(const Sink& sink) const {
  std::map<std::string, std::string> ours;  // HF name -> our name
  for (const WeightSpec& s : weight_specs(info_.config)) ours.emplace(hf_tensor_name(info_.model_type, s.name), s.name);
  const auto t0 = std::chrono::steady_clock::now();
  size_t total = 0, done = 0;
  for (size_t b : info_.shard_bytes) total += b;
  for (size_t i = 0; i < info_.shards.size(); ++i) {
    {
      const SafeTensorsFile f(info_.shards[i]);
      for (const SafeTensorInfo& t : f.tensors()) {
        auto it = ours.find(t.name);
        MINILLM_CHECK(it != ours.end(), "weights: '" << info_.shards[i] << "': unexpected tensor '" << t.name << "'");
        prefetch(f.data(t), t.end - t.begin);
        int64_t n = 1;
        for (int64_t d : t.shape) n *= d;
        const int64_t bad = is_float(t.dtype) ? first_non_finite(t.dtype, static_cast<const uint8_t*>(f.data(t)), n) : -1;
        MINILLM_CHECK(bad < 0, "weights: '" << info_.shards[i] << "': tensor '" << t.name << "' holds NaN or Inf at element "
                                            << bad << "; weights must be finite");
        sink(it->second, t.dtype, t.shape, f.data(t));
      }
    }  // unmapped here
    done += info_.shard_bytes[i];
    if (progress_) {
      LoadProgress p;
      p.shard = static_cast<int>(i + 1);
      p.num_shards = static_cast<int>(info_.shards.size());
      p.file = info_.shards[i];
      p.bytes = done;
      p.total_bytes = total;
      p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      progress_(p);
    }
  }
}

}  // namespace minillm
