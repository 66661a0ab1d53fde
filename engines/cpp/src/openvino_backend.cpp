// The OpenVINO backend: the .onnx graph read by OpenVINO and compiled for the chosen device once per batch size, with
// that batch size fixed (a static shape runs faster than the graph's dynamic batch: 1.17x at batch 1, 1.09x at 32
// on the CIFAR-10 test bed's keep-0.6 graph); on the CPU with the settings of prtk's Python runner (latency hint,
// float parts in fp32).
#include <openvino/openvino.hpp>

#include <map>
#include <set>

#include "backends.hpp"
#include "text.hpp"

namespace prtk {

namespace {

class OpenVinoBackend : public Backend {
 public:
  OpenVinoBackend(const Description& description, const Options& options)
      : description_(description), device_(options.device) {
    try {
      model_ = core_.read_model(description.path);
    } catch (const std::exception& error) {
      throw Error("OpenVINO cannot read " + description.path + ": " + first_line(error.what()));
    }
    check_against(*model_);
    if (device_ == "CPU") {
      settings_ = {ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY),
                   ov::hint::inference_precision(ov::element::f32)};
      if (options.threads > 0) settings_.emplace(ov::inference_num_threads(options.threads));
    }
    check_device();
  }

  std::vector<Tensor> run(const float* images, int batch) override {
    const auto size = static_cast<size_t>(description_.preprocessing.size);
    const ov::Tensor input(ov::element::f32, ov::Shape{static_cast<size_t>(batch), 3, size, size},
                           const_cast<float*>(images));
    ov::InferRequest& request = request_for(batch);
    request.set_tensor(description_.input_name, input);
    request.infer();
    std::vector<Tensor> outputs;
    for (const OutputSpec& spec : description_.outputs) outputs.push_back(fetch(request, spec.name));
    return outputs;
  }

  std::string name() const override { return "openvino (" + device_ + ")"; }

  std::string version() const override { return openvino_version(); }

 private:
  static constexpr size_t kCompiledBatchSizes = 4;  // at most this many compiled batch sizes are kept

  const Description& description_;
  std::string device_;
  ov::Core core_;
  std::shared_ptr<ov::Model> model_;
  ov::AnyMap settings_;
  std::map<int, std::pair<ov::CompiledModel, ov::InferRequest>> compiled_;  // by batch size

  // Refuses a device OpenVINO does not see here (before any image; the graph compiles at its first batch).
  void check_device() {
    for (const char* virtual_device : {"AUTO", "MULTI", "HETERO", "BATCH"}) {
      if (device_.rfind(virtual_device, 0) == 0) return;  // they choose among the real ones themselves
    }
    const std::vector<std::string> seen = core_.get_available_devices();
    for (const std::string& device : seen) {
      if (device == device_ || device.substr(0, device.find('.')) == device_) return;
    }
    throw Error("OpenVINO has no device " + device_ + " here (it sees " + (seen.empty() ? "none" : joined(seen)) + ")");
  }

  // The request of the graph compiled with its batch fixed to `batch` (compiled on first use).
  ov::InferRequest& request_for(int batch) {
    const auto found = compiled_.find(batch);
    if (found != compiled_.end()) return found->second.second;
    if (compiled_.size() >= kCompiledBatchSizes) compiled_.clear();
    const std::shared_ptr<ov::Model> fixed = model_->clone();
    const int64_t size = description_.preprocessing.size;
    try {
      fixed->reshape({{description_.input_name, ov::PartialShape{batch, 3, size, size}}});
      ov::CompiledModel compiled = core_.compile_model(fixed, device_, settings_);
      ov::InferRequest request = compiled.create_infer_request();
      return compiled_.emplace(batch, std::make_pair(compiled, request)).first->second.second;
    } catch (const std::exception& error) {
      throw Error("OpenVINO cannot compile " + description_.path + " for device " + device_ + " at batch " +
                  std::to_string(batch) + ": " + first_line(error.what()));
    }
  }

  static std::string first_line(const std::string& text) {
    const size_t end = text.find('\n');
    return end == std::string::npos ? text : text.substr(0, end);
  }

  // The graph's input and outputs against the description: names, and the input's [batch, 3, size, size].
  void check_against(const ov::Model& model) const {
    const std::string& path = description_.path;
    if (model.inputs().size() != 1) throw Error(path + " has " + std::to_string(model.inputs().size()) + " inputs, "
                                                "its description one");
    const ov::Output<const ov::Node> input = model.input(0);
    if (!input.get_names().count(description_.input_name)) {
      throw Error("the description of " + path + " names the input '" + description_.input_name +
                  "', the graph's is '" + input.get_any_name() + "'");
    }
    const ov::PartialShape shape = input.get_partial_shape();
    const int64_t size = description_.preprocessing.size;
    if (shape.rank().is_dynamic() || shape.rank().get_length() != 4 || shape[1] != 3 || shape[2] != size ||
        shape[3] != size) {
      throw Error("the graph " + path + " takes " + shape.to_string() + ", its description [batch, 3, " +
                  std::to_string(size) + ", " + std::to_string(size) + "]");
    }
    std::set<std::string> graph_outputs;
    for (const auto& output : model.outputs()) {
      for (const std::string& name : output.get_names()) graph_outputs.insert(name);
    }
    if (model.outputs().size() != description_.outputs.size()) {
      throw Error("the graph " + path + " has " + std::to_string(model.outputs().size()) +
                  " outputs, its description " + std::to_string(description_.outputs.size()));
    }
    for (const OutputSpec& spec : description_.outputs) {
      if (!graph_outputs.count(spec.name)) {
        throw Error("the description of " + path + " lists the output '" + spec.name + "', which the graph lacks");
      }
    }
  }

  Tensor fetch(ov::InferRequest& request, const std::string& name) {
    const ov::Tensor value = request.get_tensor(name);
    Tensor out;
    out.name = name;
    for (const size_t dimension : value.get_shape()) out.shape.push_back(static_cast<int64_t>(dimension));
    const size_t count = value.get_size();
    const ov::element::Type type = value.get_element_type();
    if (type == ov::element::f32) {
      out.dtype = "float32";
      out.floats.assign(value.data<const float>(), value.data<const float>() + count);
    } else if (type == ov::element::i64) {
      out.dtype = "int64";
      out.ints.assign(value.data<const int64_t>(), value.data<const int64_t>() + count);
    } else if (type == ov::element::i32) {
      out.dtype = "int64";
      out.ints.assign(value.data<const int32_t>(), value.data<const int32_t>() + count);
    } else {
      throw Error("the output '" + name + "' of " + description_.path + " is of element type " +
                  type.get_type_name() + " (float32 and int64 are read)");
    }
    return out;
  }
};

}  // namespace

std::string openvino_version() { return std::string("OpenVINO ") + ov::get_openvino_version().buildNumber; }

std::unique_ptr<Backend> make_openvino_backend(const Description& description, const Options& options) {
  return std::make_unique<OpenVinoBackend>(description, options);
}

}  // namespace prtk
