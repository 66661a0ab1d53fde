// prtk_embed: run a prtk TensorRT engine from C++ (TensorRT 10 API, CUDA runtime).
//
//   prtk_embed ENGINE INPUT.f32 BATCH
//
// ENGINE is `<model>_keep0.60_fp16.engine` from `prtk build-engine`; its `.json` sidecar gives what this
// program hard-codes below: the input name ("images"), its shape [batch, 3, H, W], and the preprocessing
// (RGB, resize the shorter side to H with the sidecar's interpolation, center crop, pixel / 255, then
// (x - mean) / std per channel, NCHW float32). INPUT.f32 holds BATCH such images, already preprocessed.
// Prints the first values of each image's L2-normalised embedding (output "embedding" [batch, E]).
// Build: g++ -std=c++17 prtk_embed.cpp -lnvinfer -lcudart -o prtk_embed
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

namespace {

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << message << "\n";
  }
};

std::vector<char> readFile(const std::string& path) {
  std::ifstream stream(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(stream), std::istreambuf_iterator<char>()};
}

int64_t volume(const nvinfer1::Dims& dims) {
  int64_t count = 1;
  for (int i = 0; i < dims.nbDims; ++i) count *= dims.d[i];
  return count;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: prtk_embed ENGINE INPUT.f32 BATCH\n";
    return 2;
  }
  Logger logger;
  const std::vector<char> plan = readFile(argv[1]);
  const int batch = std::stoi(argv[3]);
  std::unique_ptr<nvinfer1::IRuntime> runtime{nvinfer1::createInferRuntime(logger)};
  std::unique_ptr<nvinfer1::ICudaEngine> engine{runtime->deserializeCudaEngine(plan.data(), plan.size())};
  if (!engine) return 1;
  std::unique_ptr<nvinfer1::IExecutionContext> context{engine->createExecutionContext()};

  nvinfer1::Dims input = engine->getTensorShape("images");  // [-1, 3, H, W]: the batch is dynamic
  input.d[0] = batch;
  context->setInputShape("images", input);
  const std::vector<char> pixels = readFile(argv[2]);
  if (pixels.size() != static_cast<size_t>(volume(input)) * sizeof(float)) {
    std::cerr << "INPUT.f32 must hold " << volume(input) << " floats\n";
    return 2;
  }

  cudaStream_t stream;
  cudaStreamCreate(&stream);
  std::vector<void*> buffers;
  void* inputBuffer = nullptr;
  cudaMalloc(&inputBuffer, pixels.size());
  cudaMemcpyAsync(inputBuffer, pixels.data(), pixels.size(), cudaMemcpyHostToDevice, stream);
  context->setTensorAddress("images", inputBuffer);
  buffers.push_back(inputBuffer);

  // Outputs: "embedding" [batch, E] float32, and "kept_indices" [batch, k] int64 when exported with it.
  void* embedding = nullptr;
  nvinfer1::Dims embeddingShape{};
  for (int i = 0; i < engine->getNbIOTensors(); ++i) {
    const char* name = engine->getIOTensorName(i);
    if (engine->getTensorIOMode(name) != nvinfer1::TensorIOMode::kOUTPUT) continue;
    const nvinfer1::Dims shape = context->getTensorShape(name);
    const size_t bytes = volume(shape) * (engine->getTensorDataType(name) == nvinfer1::DataType::kINT64 ? 8 : 4);
    void* buffer = nullptr;
    cudaMalloc(&buffer, bytes);
    context->setTensorAddress(name, buffer);
    buffers.push_back(buffer);
    if (std::string(name) == "embedding") {
      embedding = buffer;
      embeddingShape = shape;
    }
  }
  if (!embedding || !context->enqueueV3(stream)) return 1;
  std::vector<float> host(volume(embeddingShape));
  cudaMemcpyAsync(host.data(), embedding, host.size() * sizeof(float), cudaMemcpyDeviceToHost, stream);
  cudaStreamSynchronize(stream);
  const int64_t width = embeddingShape.d[1];
  for (int image = 0; image < batch; ++image) {
    std::printf("image %d: %.5f %.5f %.5f ...\n", image, host[image * width], host[image * width + 1],
                host[image * width + 2]);
  }
  for (void* buffer : buffers) cudaFree(buffer);
  cudaStreamDestroy(stream);
  return 0;
}
