#include <algorithm>

#include "artifact_files.hpp"
#include "backends.hpp"
#include "prtk/embedder.hpp"
#include "text.hpp"

namespace prtk {

std::vector<std::string> available_backends() {
  std::vector<std::string> backends = {"openvino"};
#ifdef PRTK_WITH_TENSORRT
  backends.push_back("tensorrt");
#endif
  return backends;
}

std::string compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("g++ ") + __VERSION__;
#else
  return "unknown compiler";
#endif
}

std::string build_info() {
  return compiler() + "; " + openvino_version() + "; backends: " + joined(available_backends());
}

Embedder::Embedder(const std::string& artifact, const Options& options) {
  const std::vector<std::string> backends = available_backends();
  if (std::find(backends.begin(), backends.end(), options.backend) == backends.end()) {
    throw Error("backend '" + options.backend + "' is not built into this program (built: " +
                joined(backends) + ")" +
                (options.backend == "tensorrt" ? ": rebuild with TensorRT (prtk cpp build --tensorrt)" : ""));
  }
  CommitLock lock(folder_of(artifact));  // the description and the graph read as one pair
  description_ = read_description_unlocked(artifact);
  const bool engine = ends_with(artifact, ".engine");
  if (engine != (options.backend == "tensorrt")) {
    throw Error(engine ? artifact + " is a TensorRT engine: run it with --backend tensorrt"
                       : "the TensorRT backend runs .engine files from prtk build-engine, got " + artifact);
  }
  const std::vector<std::string>& runtimes = description_.runtimes;
  if (!engine && std::find(runtimes.begin(), runtimes.end(), options.backend) == runtimes.end()) {
    throw Error(artifact + " runs on " + (runtimes.empty() ? "no runtime" : joined(runtimes)) +
                " only (its description's runtimes), not on " + options.backend);
  }
#ifdef PRTK_WITH_TENSORRT
  if (engine) {
    backend_ = make_tensorrt_backend(description_, options);
    return;
  }
#endif
  backend_ = make_openvino_backend(description_, options);
}

Embedder::~Embedder() = default;

std::vector<Tensor> Embedder::embed(const std::vector<RgbImage>& images) {
  if (images.empty()) throw Error("no images to embed");
  std::vector<float> batch;
  const size_t per_image = static_cast<size_t>(3) * description_.preprocessing.size * description_.preprocessing.size;
  batch.reserve(per_image * images.size());
  for (const RgbImage& image : images) preprocess(image, description_.preprocessing, batch);
  return run(batch.data(), static_cast<int>(images.size()));
}

std::vector<Tensor> Embedder::run(const float* images, int batch) {
  if (batch < 1) throw Error("a batch holds at least one image, got " + std::to_string(batch));
  return backend_->run(images, batch);
}

}  // namespace prtk
