// The TensorRT backend (TensorRT 10 API, CUDA runtime): a prtk .engine from `prtk build-engine`, deserialized and
// run on the current CUDA device. Built only where CMake finds TensorRT and CUDA (PRTK_WITH_TENSORRT).
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include "artifact_files.hpp"
#include "backends.hpp"

namespace prtk {

namespace {

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kERROR) last_error = message;
  }

 public:
  std::string last_error;
};

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw Error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(status));
}

int64_t volume(const nvinfer1::Dims& dims) {
  int64_t count = 1;
  for (int i = 0; i < dims.nbDims; ++i) count *= dims.d[i];
  return count;
}

class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) { check_cuda(cudaMalloc(&data_, bytes), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
};

class TensorRtBackend : public Backend {
 public:
  TensorRtBackend(const Description& description, const Options&) : description_(description) {
    const std::string plan = read_text(description.path);
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (runtime_) engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
    if (!engine_) throw Error("TensorRT cannot load " + description.path + ": " + logger_.last_error);
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw Error("TensorRT cannot create an execution context: " + logger_.last_error);
    check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }

  ~TensorRtBackend() override { cudaStreamDestroy(stream_); }

  std::vector<Tensor> run(const float* images, int batch) override {
    const char* input_name = description_.input_name.c_str();
    nvinfer1::Dims input = engine_->getTensorShape(input_name);  // [-1, 3, H, W]: the batch is dynamic
    const int64_t size = description_.preprocessing.size;
    if (input.nbDims != 4 || input.d[1] != 3 || input.d[2] != size || input.d[3] != size) {
      throw Error("the engine " + description_.path + " has no input '" + description_.input_name +
                  "' [batch, 3, " + std::to_string(size) + ", " + std::to_string(size) + "] as its description says");
    }
    input.d[0] = batch;
    if (!context_->setInputShape(input_name, input)) {
      throw Error("the engine " + description_.path + " does not take a batch of " + std::to_string(batch) + ": " +
                  logger_.last_error);
    }
    const size_t input_bytes = static_cast<size_t>(volume(input)) * sizeof(float);
    DeviceBuffer input_buffer(input_bytes);
    check_cuda(cudaMemcpyAsync(input_buffer.data(), images, input_bytes, cudaMemcpyHostToDevice, stream_),
               "copy to the device");
    context_->setTensorAddress(input_name, input_buffer.data());
    std::vector<std::unique_ptr<DeviceBuffer>> buffers;
    std::vector<Tensor> outputs;
    for (const OutputSpec& spec : description_.outputs) {
      const nvinfer1::Dims shape = context_->getTensorShape(spec.name.c_str());
      const bool wide = engine_->getTensorDataType(spec.name.c_str()) == nvinfer1::DataType::kINT64;
      buffers.push_back(std::make_unique<DeviceBuffer>(static_cast<size_t>(volume(shape)) * (wide ? 8 : 4)));
      context_->setTensorAddress(spec.name.c_str(), buffers.back()->data());
      Tensor out;
      out.name = spec.name;
      out.dtype = wide ? "int64" : "float32";
      for (int i = 0; i < shape.nbDims; ++i) out.shape.push_back(shape.d[i]);
      outputs.push_back(std::move(out));
    }
    if (!context_->enqueueV3(stream_)) throw Error("TensorRT inference failed: " + logger_.last_error);
    for (size_t i = 0; i < outputs.size(); ++i) {
      Tensor& out = outputs[i];
      int64_t count = 1;
      for (const int64_t dimension : out.shape) count *= dimension;
      void* host = nullptr;
      size_t bytes = 0;
      if (out.dtype == "int64") {
        out.ints.resize(count);
        host = out.ints.data();
        bytes = count * sizeof(int64_t);
      } else {
        out.floats.resize(count);
        host = out.floats.data();
        bytes = count * sizeof(float);
      }
      check_cuda(cudaMemcpyAsync(host, buffers[i]->data(), bytes, cudaMemcpyDeviceToHost, stream_),
                 "copy from the device");
    }
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    return outputs;
  }

  std::string name() const override { return "tensorrt"; }

  std::string version() const override {
    return "TensorRT " + std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
           std::to_string(NV_TENSORRT_PATCH);
  }

 private:
  const Description& description_;
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  cudaStream_t stream_ = nullptr;
};

}  // namespace

std::unique_ptr<Backend> make_tensorrt_backend(const Description& description, const Options& options) {
  return std::make_unique<TensorRtBackend>(description, options);
}

}  // namespace prtk
