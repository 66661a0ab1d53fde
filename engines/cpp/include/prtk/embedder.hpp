// prtk's C++ side: load a prtk artifact (an exported .onnx graph, or a TensorRT .engine where built with TensorRT)
// and turn images into embeddings, with `kept_indices` and `logits` where the graph has them.
//
// Everything the program must know comes from the artifact's description (the graph's embedded description, or
// the sidecar `<artifact>.json`, which must agree with it): the input's name and size, the preprocessing (RGB,
// resize mode and interpolation, crop, pixel / 255, (x - mean) / std), the outputs. Preprocessing reproduces
// prtk's Python preprocessing (PIL decoding and resampling, open_clip's eval transform) bit for bit.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace prtk {

// Every refusal: one sentence that names the file or value at fault.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An 8-bit RGB image, rows of `width` x 3 bytes (R, G, B).
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;  // [height, width, 3]
};

// How an image becomes the graph's input (the description's `input`).
struct Preprocessing {
  int size = 0;                       // the graph takes [B, 3, size, size]
  std::string resize_mode;            // "shortest" (then a center crop) or "squash"
  std::string interpolation;          // "bicubic" or "bilinear" (PIL's antialiased filters)
  float mean[3] = {0, 0, 0};
  float std[3] = {1, 1, 1};
};

struct OutputSpec {
  std::string name;            // "embedding" [B, E] float32, "kept_indices" [B, k] int64, "logits" [B, C] float32
  std::string dtype;           // "float32" or "int64"
  std::vector<int64_t> shape;  // -1 where the description names a dimension ("batch")
};

// The facts of an artifact's description that the program acts on.
struct Description {
  std::string path;         // the artifact
  std::string format;       // "prtk-onnx/2"
  std::string model;
  std::string precision;    // "fp32", "fp16", "int8"
  std::string input_name;
  Preprocessing preprocessing;
  std::vector<OutputSpec> outputs;
  std::vector<std::string> runtimes;  // the runtimes whose export checks passed
  bool l2_normalized = false;
};

// Reads and checks the description of `artifact` (.onnx: embedded and sidecar, which must agree; .engine: its
// sidecar). Throws Error when it is missing, unreadable or of another format.
Description read_description(const std::string& artifact);

// Decodes a JPEG or PNG file to 8-bit RGB as prtk's Python loader does (PIL, then RGB; 16-bit grayscale scaled by
// 255 / 65535). Throws Error naming the file for an unreadable, corrupt, truncated or unsupported image.
RgbImage decode_image(const std::string& path);

// `image` -> float32 [3, size, size] (appended to `out`), exactly as open_clip's eval transform over PIL does it.
void preprocess(const RgbImage& image, const Preprocessing& preprocessing, std::vector<float>& out);

// One output of a batch: float32 or int64 values, row-major.
struct Tensor {
  std::string name;
  std::string dtype;           // "float32" (in `floats`) or "int64" (in `ints`)
  std::vector<int64_t> shape;
  std::vector<float> floats;
  std::vector<int64_t> ints;
};

struct Options {
  std::string backend = "openvino";  // "openvino", or "tensorrt" where built with it
  std::string device = "CPU";        // OpenVINO device: CPU, GPU, NPU, AUTO
  int threads = 0;                   // OpenVINO CPU threads; 0: OpenVINO's default (every core)
};

// A runtime that runs preprocessed batches; OpenVINO and TensorRT implement it.
class Backend {
 public:
  virtual ~Backend() = default;
  // `images` holds `batch` x 3 x size x size floats; returns the outputs in the description's order.
  virtual std::vector<Tensor> run(const float* images, int batch) = 0;
  virtual std::string name() const = 0;     // "openvino (CPU)", "tensorrt"
  virtual std::string version() const = 0;  // the runtime's build
};

// Loads the artifact with its description and turns images into its outputs.
class Embedder {
 public:
  explicit Embedder(const std::string& artifact, const Options& options = Options());
  ~Embedder();
  Embedder(const Embedder&) = delete;
  Embedder& operator=(const Embedder&) = delete;

  const Description& description() const { return description_; }
  const Backend& backend() const { return *backend_; }

  // Decoded images -> outputs ([B, ...] each, the description's order).
  std::vector<Tensor> embed(const std::vector<RgbImage>& images);
  // Preprocessed images ([batch, 3, size, size] floats) -> outputs.
  std::vector<Tensor> run(const float* images, int batch);

 private:
  Description description_;
  std::unique_ptr<Backend> backend_;
};

// The backends this library was built with ("openvino", and "tensorrt" where CMake found it).
std::vector<std::string> available_backends();

// The compiler this library was built with (for reports).
std::string compiler();

// The build in one line: compiler, OpenVINO version, backends.
std::string build_info();

}  // namespace prtk
