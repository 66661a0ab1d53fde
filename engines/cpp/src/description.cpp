// read_description: an artifact's description, from the graph's embedded metadata and its sidecar.
#include <sys/stat.h>

#include <set>

#include "artifact_files.hpp"
#include "json.hpp"
#include "preprocess.hpp"
#include "prtk/embedder.hpp"
#include "text.hpp"

namespace prtk {

namespace {

const char* const kFormat = "prtk-onnx/2";
const std::string kScale = "pixel / 255, then (x - mean) / std per channel";  // prtk.models.preprocessing.SCALE
const std::set<std::string> kNotEmbedded = {"files", "tensorrt"};  // added to a sidecar after the graph was written

bool is_file(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

std::string sidecar_path(const std::string& artifact) {
  const size_t slash = artifact.find_last_of('/');
  const size_t dot = artifact.find_last_of('.');
  const bool has_suffix = dot != std::string::npos && (slash == std::string::npos || dot > slash);
  return (has_suffix ? artifact.substr(0, dot) : artifact) + ".json";
}

// Reads the description's fields, naming the dotted key of anything missing or of the wrong type.
class Fields {
 public:
  Fields(const json::Value& root, const std::string& where) : root_(root), where_(where) {}

  const json::Value& get(const std::string& dotted, json::Value::Kind kind) const {
    const json::Value* value = &root_;
    size_t start = 0;
    while (true) {
      const size_t dot = dotted.find('.', start);
      const std::string key = dotted.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      if (!value->has(key)) fail("has no '" + dotted + "'");
      value = &value->object.at(key);
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    if (value->kind != kind) fail("'" + dotted + "' has the wrong type");
    return *value;
  }

  std::string text(const std::string& dotted) const { return get(dotted, json::Value::Kind::String).string; }

  int integer(const json::Value& value, const std::string& dotted) const {
    if (value.kind != json::Value::Kind::Number || value.number != static_cast<int>(value.number)) {
      fail("'" + dotted + "' must be an integer");
    }
    return static_cast<int>(value.number);
  }

  void three_floats(const std::string& dotted, float* out) const {
    const json::Value& list = get(dotted, json::Value::Kind::Array);
    if (list.array.size() != 3) fail("'" + dotted + "' must hold 3 numbers (R, G, B)");
    for (int channel = 0; channel < 3; ++channel) {
      if (list.array[channel].kind != json::Value::Kind::Number) fail("'" + dotted + "' must hold numbers");
      out[channel] = static_cast<float>(list.array[channel].number);  // as torch.as_tensor(float32) rounds it
    }
  }

  [[noreturn]] void fail(const std::string& what) const { throw Error("the description of " + where_ + " " + what); }

 private:
  const json::Value& root_;
  const std::string& where_;
};

json::Value parse_description(const std::string& text, const std::string& where) {
  try {
    json::Value value = json::parse(text);
    if (value.kind != json::Value::Kind::Object) throw Error(where + " is not a JSON object");
    return value;
  } catch (const std::runtime_error& error) {
    if (dynamic_cast<const Error*>(&error)) throw;
    throw Error(where + " is not a prtk description: " + error.what());
  }
}

// The first key of `sidecar` (less the keys added after embedding) whose value differs from `embedded`.
std::string first_difference(const json::Value& sidecar, const json::Value& embedded) {
  std::set<std::string> keys;
  for (const auto& [key, value] : sidecar.object) {
    if (!kNotEmbedded.count(key)) keys.insert(key);
  }
  for (const auto& [key, value] : embedded.object) keys.insert(key);
  for (const std::string& key : keys) {
    if (!sidecar.has(key) || !embedded.has(key) || sidecar.object.at(key) != embedded.object.at(key)) return key;
  }
  return "";
}

Description facts(const json::Value& root, const std::string& artifact) {
  const Fields fields(root, artifact);
  Description description;
  description.path = artifact;
  description.format = fields.text("format");
  if (description.format != kFormat) {
    fields.fail("is of format '" + description.format + "', this program reads " + kFormat +
                ": export it again with this prtk");
  }
  description.model = fields.text("model");
  description.precision = fields.text("precision");
  description.input_name = fields.text("input.name");
  if (fields.text("input.layout") != "NCHW" || fields.text("input.color") != "RGB" ||
      fields.text("input.dtype") != "float32") {
    fields.fail("describes an input other than NCHW RGB float32");
  }
  const json::Value& shape = fields.get("input.shape", json::Value::Kind::Array);
  if (shape.array.size() != 4) fields.fail("'input.shape' must have 4 dimensions");
  Preprocessing& preprocessing = description.preprocessing;
  preprocessing.size = fields.integer(fields.get("input.resize.size", json::Value::Kind::Number), "input.resize.size");
  if (fields.integer(shape.array[1], "input.shape[1]") != 3 ||
      fields.integer(shape.array[2], "input.shape[2]") != preprocessing.size ||
      fields.integer(shape.array[3], "input.shape[3]") != preprocessing.size) {
    fields.fail("says 'input.shape' is not [batch, 3, size, size] for its resize size " +
                std::to_string(preprocessing.size));
  }
  if (preprocessing.size < 1) fields.fail("has a resize size below 1");
  preprocessing.resize_mode = fields.text("input.resize.mode");
  preprocessing.interpolation = fields.text("input.resize.interpolation");
  const std::string lacking = unimplemented(preprocessing);
  if (!lacking.empty()) fields.fail("has " + lacking);
  const std::string crop = fields.text("input.resize.crop");
  const std::string expected_crop = preprocessing.resize_mode == "squash" ? "none" : "center";
  if (crop != expected_crop) {
    fields.fail("has the crop '" + crop + "' after a '" + preprocessing.resize_mode + "' resize, which this " +
                "program does not implement ('" + expected_crop + "')");
  }
  if (fields.text("input.scale") != kScale) {
    fields.fail("has the scaling '" + fields.text("input.scale") + "', which this program does not implement ('" +
                kScale + "')");
  }
  fields.three_floats("input.mean", preprocessing.mean);
  fields.three_floats("input.std", preprocessing.std);
  for (const json::Value& output : fields.get("outputs", json::Value::Kind::Array).array) {
    const Fields output_fields(output, artifact);
    OutputSpec spec{output_fields.text("name"), output_fields.text("dtype"), {}};
    for (const json::Value& dimension : output_fields.get("shape", json::Value::Kind::Array).array) {
      spec.shape.push_back(dimension.kind == json::Value::Kind::Number ? static_cast<int64_t>(dimension.number) : -1);
    }
    description.outputs.push_back(spec);
    if (description.outputs.back().name == "embedding" && output.has("l2_normalized")) {
      description.l2_normalized = output.at("l2_normalized").boolean;
    }
  }
  if (description.outputs.empty() || description.outputs.front().name != "embedding" ||
      description.outputs.front().shape.size() != 2 || description.outputs.front().shape[1] < 1) {
    fields.fail("lists no 'embedding' output [batch, E] first");
  }
  for (const json::Value& runtime : fields.get("runtimes", json::Value::Kind::Array).array) {
    description.runtimes.push_back(runtime.string);
  }
  return description;
}

}  // namespace

Description read_description(const std::string& artifact) {
  CommitLock lock(folder_of(artifact));  // the graph and its sidecar as one pair
  return read_description_unlocked(artifact);
}

Description read_description_unlocked(const std::string& artifact) {
  if (!is_file(artifact)) throw Error("artifact not found: " + artifact);
  const bool engine = ends_with(artifact, ".engine");
  if (!engine && !ends_with(artifact, ".onnx")) {
    throw Error("an artifact is a prtk .onnx graph or .engine, got " + artifact);
  }
  const std::string sidecar = sidecar_path(artifact);
  std::optional<json::Value> sidecar_value;
  if (is_file(sidecar)) sidecar_value = parse_description(read_text(sidecar), sidecar);
  if (engine) {
    if (!sidecar_value) throw Error(artifact + " has no sidecar " + sidecar + ": build it with prtk build-engine");
    return facts(*sidecar_value, artifact);
  }
  const std::optional<std::string> embedded_text = onnx_metadata(artifact, "prtk");
  if (!embedded_text) {
    throw Error(artifact + " carries no embedded prtk description (metadata_props 'prtk'): export it with prtk "
                "export");
  }
  const json::Value embedded = parse_description(*embedded_text, artifact + "'s embedded description");
  if (sidecar_value) {
    const std::string key = first_difference(*sidecar_value, embedded);
    if (!key.empty()) {
      throw Error("sidecar " + sidecar + " contradicts the description embedded in " + artifact + " (key '" + key +
                  "'): export it again, or remove the edited sidecar");
    }
  }
  return facts(embedded, artifact);
}

}  // namespace prtk
