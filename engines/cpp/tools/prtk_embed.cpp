// prtk-embed: images in, a prtk artifact's outputs out (embeddings, kept patch indices, logits), on OpenVINO (or
// TensorRT where built with it). Run `prtk-embed --help`.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include "npy.hpp"
#include "prtk/embedder.hpp"

namespace {

const char* const kUsage = R"(usage: prtk-embed ARTIFACT IMAGE_OR_DIR... [options]

Embeds JPEG and PNG images with a prtk artifact (an .onnx graph from `prtk export`), preprocessing each image
as the artifact's description says (resize, crop, mean/std), exactly as prtk's Python side does. A folder
stands for every .jpg, .jpeg and .png file under it, in sorted path order.

options:
  --device D         OpenVINO device: CPU (default), GPU, NPU or AUTO
  --backend B        openvino (default), or tensorrt for a .engine (where built with TensorRT)
  --batch N          images per inference, 1-4096 (default 32)
  --threads N        OpenVINO CPU inference threads (default 0: every core)
  --files-from LIST  also embed the image paths listed in LIST, one per line
  --out FILE.npy     write the embeddings, [N, E] float32
  --outputs DIR      write every output of the graph as DIR/<output>.npy (embedding, kept_indices, logits
                     where the graph has them) and the images, in order, as DIR/images.txt
  --save-inputs FILE.npy
                     also write the preprocessed images, [N, 3, size, size] float32: what the graph was given
  --force            replace output files that exist
  --bench ROUNDS     time ROUNDS inferences of one preprocessed batch of --batch images (after 3 warm-up
                     runs) instead of embedding; prints the times as JSON
  --json             print a JSON summary instead of the human one
  --version          print the build (compiler, runtime) and exit
  -h, --help         show this help and exit

Exit status: 0 done, 2 bad input (one line on stderr: the artifact, an image or an option), 1 other failures.
)";

struct Arguments {
  std::string artifact;
  std::vector<std::string> inputs;
  std::string files_from, out, outputs_dir, save_inputs;
  prtk::Options options;
  int batch = 32;
  int bench_rounds = 0;
  bool force = false, json = false;
};

int parse_int(const std::string& option, const std::string& text, int low, int high) {
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || value < low || value > high) {
    throw prtk::Error(option + " must be an integer in [" + std::to_string(low) + ", " + std::to_string(high) +
                   "], got '" + text + "'");
  }
  return static_cast<int>(value);
}

Arguments parse(int argc, char** argv) {
  Arguments arguments;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw prtk::Error(word + " needs a value");
      return argv[++i];
    };
    if (word == "--device") arguments.options.device = value();
    else if (word == "--backend") arguments.options.backend = value();
    else if (word == "--batch") arguments.batch = parse_int(word, value(), 1, 4096);
    else if (word == "--threads") arguments.options.threads = parse_int(word, value(), 0, 4096);
    else if (word == "--files-from") arguments.files_from = value();
    else if (word == "--out") arguments.out = value();
    else if (word == "--outputs") arguments.outputs_dir = value();
    else if (word == "--save-inputs") arguments.save_inputs = value();
    else if (word == "--bench") arguments.bench_rounds = parse_int(word, value(), 1, 1000000);
    else if (word == "--force") arguments.force = true;
    else if (word == "--json") arguments.json = true;
    else if (word.size() > 1 && word[0] == '-') throw prtk::Error("unknown option " + word + " (see --help)");
    else positional.push_back(word);
  }
  if (positional.empty()) throw prtk::Error("no ARTIFACT given (see --help)");
  arguments.artifact = positional[0];
  arguments.inputs.assign(positional.begin() + 1, positional.end());
  if (arguments.inputs.empty() && arguments.files_from.empty()) throw prtk::Error("no images given (see --help)");
  if (arguments.options.backend != "openvino" && arguments.options.backend != "tensorrt") {
    throw prtk::Error("--backend must be openvino or tensorrt, got '" + arguments.options.backend + "'");
  }
  return arguments;
}

bool is_directory(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

bool exists(const std::string& path) {
  struct stat info {};
  return ::lstat(path.c_str(), &info) == 0;
}

bool is_image_name(const std::string& name) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* suffix : {".jpg", ".jpeg", ".png"}) {
    const size_t length = std::strlen(suffix);
    if (lower.size() > length && lower.compare(lower.size() - length, length, suffix) == 0) return true;
  }
  return false;
}

void list_images(const std::string& folder, std::vector<std::string>& found) {
  DIR* directory = ::opendir(folder.c_str());
  if (!directory) throw prtk::Error("cannot read folder " + folder + ": " + std::strerror(errno));
  std::vector<std::string> names;
  while (const dirent* entry = ::readdir(directory)) {
    const std::string name = entry->d_name;
    if (name != "." && name != ".." && name[0] != '.') names.push_back(name);
  }
  ::closedir(directory);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const std::string path = folder + (folder.back() == '/' ? "" : "/") + name;
    if (is_directory(path)) list_images(path, found);
    else if (is_image_name(name)) found.push_back(path);
  }
}

std::vector<std::string> image_paths(const Arguments& arguments) {
  std::vector<std::string> paths;
  for (const std::string& input : arguments.inputs) {
    if (is_directory(input)) {
      const size_t before = paths.size();
      list_images(input, paths);
      if (paths.size() == before) throw prtk::Error("no JPEG or PNG images in folder " + input);
    } else if (exists(input)) {
      paths.push_back(input);
    } else {
      throw prtk::Error("image not found: " + input);
    }
  }
  if (!arguments.files_from.empty()) {
    std::ifstream list(arguments.files_from);
    if (!list) throw prtk::Error("cannot read --files-from " + arguments.files_from);
    const size_t before = paths.size();
    for (std::string line; std::getline(list, line);) {
      if (!line.empty()) paths.push_back(line);
    }
    if (paths.size() == before) throw prtk::Error("--files-from " + arguments.files_from + " lists no images");
  }
  return paths;
}

std::string real(const std::string& path) {
  char* resolved = ::realpath(path.c_str(), nullptr);
  if (!resolved) return path;
  std::string out = resolved;
  std::free(resolved);
  return out;
}

// The files this run writes, refused before any work when they would replace an input or another output, or an
// existing file without --force.
std::vector<std::string> planned_outputs(const Arguments& arguments, const prtk::Description& description) {
  std::vector<std::string> planned;
  if (!arguments.out.empty()) planned.push_back(arguments.out);
  if (!arguments.save_inputs.empty()) planned.push_back(arguments.save_inputs);
  if (!arguments.outputs_dir.empty()) {
    const std::string& folder = arguments.outputs_dir;
    if (exists(folder) && !is_directory(folder)) throw prtk::Error("--outputs " + folder + " is a file, not a folder");
    const size_t slash = folder.find_last_of('/', folder.size() > 1 ? folder.size() - 2 : 0);
    if (!exists(folder) && slash != std::string::npos && !is_directory(folder.substr(0, slash + 1))) {
      throw prtk::Error("the folder holding --outputs " + folder + " does not exist");
    }
    for (const prtk::OutputSpec& output : description.outputs) {
      planned.push_back(arguments.outputs_dir + "/" + output.name + ".npy");
    }
    planned.push_back(arguments.outputs_dir + "/images.txt");
  }
  return planned;
}

void check_outputs(const std::vector<std::string>& planned, const Arguments& arguments,
                   const std::vector<std::string>& images) {
  std::set<std::string> inputs = {real(arguments.artifact)};
  const std::string artifact = arguments.artifact;
  inputs.insert(real(artifact.substr(0, artifact.find_last_of('.')) + ".json"));
  if (!arguments.files_from.empty()) inputs.insert(real(arguments.files_from));
  for (const std::string& image : images) inputs.insert(real(image));
  std::set<std::string> seen;
  for (const std::string& path : planned) {
    const std::string resolved = real(path);
    if (inputs.count(resolved)) throw prtk::Error("output " + path + " is one of the inputs: choose another path");
    if (!seen.insert(resolved).second) {
      throw prtk::Error("two outputs of this run are " + path + ": choose another path");
    }
    if (exists(path) && !arguments.force) throw prtk::Error("output " + path + " exists: pass --force to replace it");
    const size_t slash = path.find_last_of('/');
    const std::string folder = slash == std::string::npos ? "." : path.substr(0, slash);
    if (folder != arguments.outputs_dir && !is_directory(folder)) {
      throw prtk::Error("the folder of output " + path + " does not exist");
    }
  }
}

std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') out += std::string("\\") + c;
    else if (c == '\n') out += "\\n";
    else if (static_cast<unsigned char>(c) < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
      out += escaped;
    } else out += c;
  }
  return out + "\"";
}

std::string build_json(const prtk::Embedder& embedder) {
  return "{\"program\": \"prtk-embed\", \"compiler\": " + json_string(prtk::compiler()) +
         ", \"runtime\": " + json_string(embedder.backend().version()) +
         ", \"backend\": " + json_string(embedder.backend().name()) + "}";
}

int bench(prtk::Embedder& embedder, const std::vector<std::string>& paths, const Arguments& arguments) {
  std::vector<prtk::RgbImage> decoded;
  for (size_t i = 0; i < paths.size() && static_cast<int>(i) < arguments.batch; ++i) {
    decoded.push_back(prtk::decode_image(paths[i]));
  }
  std::vector<float> batch;
  for (int i = 0; i < arguments.batch; ++i) {
    prtk::preprocess(decoded[i % decoded.size()], embedder.description().preprocessing, batch);
  }
  for (int i = 0; i < 3; ++i) embedder.run(batch.data(), arguments.batch);
  std::vector<double> times;
  for (int round = 0; round < arguments.bench_rounds; ++round) {
    const auto start = std::chrono::steady_clock::now();
    embedder.run(batch.data(), arguments.batch);
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  const size_t middle = sorted.size() / 2;
  const double median = sorted.size() % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
  std::ostringstream out;
  out << "{\"build\": " << build_json(embedder) << ", \"artifact\": " << json_string(arguments.artifact)
      << ", \"batch\": " << arguments.batch << ", \"median_ms\": " << median << ", \"times_ms\": [";
  for (size_t i = 0; i < times.size(); ++i) out << (i ? ", " : "") << times[i];
  out << "]}\n";
  std::cout << out.str();
  return 0;
}

// Appends a batch's output to the whole run's (concatenated along the batch dimension).
void append(prtk::Tensor& total, const prtk::Tensor& part) {
  if (total.shape.empty()) {
    total = part;
    return;
  }
  total.shape[0] += part.shape[0];
  total.floats.insert(total.floats.end(), part.floats.begin(), part.floats.end());
  total.ints.insert(total.ints.end(), part.ints.begin(), part.ints.end());
}

void write_tensor(const std::string& path, const prtk::Tensor& tensor) {
  if (tensor.dtype == "int64") prtk::write_npy(path, tensor.shape, tensor.ints);
  else prtk::write_npy(path, tensor.shape, tensor.floats);
}

int embed(prtk::Embedder& embedder, const std::vector<std::string>& paths, const Arguments& arguments) {
  const auto start = std::chrono::steady_clock::now();
  const bool progress = ::isatty(STDERR_FILENO) && !arguments.json;
  const prtk::Preprocessing& preprocessing = embedder.description().preprocessing;
  std::vector<prtk::Tensor> totals(embedder.description().outputs.size());
  std::vector<float> inputs, batch;
  for (size_t first = 0; first < paths.size(); first += arguments.batch) {
    const size_t last = std::min(paths.size(), first + arguments.batch);
    batch.clear();
    for (size_t i = first; i < last; ++i) prtk::preprocess(prtk::decode_image(paths[i]), preprocessing, batch);
    const std::vector<prtk::Tensor> outputs = embedder.run(batch.data(), static_cast<int>(last - first));
    for (size_t i = 0; i < outputs.size(); ++i) append(totals[i], outputs[i]);
    if (!arguments.save_inputs.empty()) inputs.insert(inputs.end(), batch.begin(), batch.end());
    if (progress) std::cerr << "\rprtk-embed: " << last << "/" << paths.size() << " images" << std::flush;
  }
  if (progress) std::cerr << "\n";
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!arguments.out.empty()) write_tensor(arguments.out, totals.front());
  if (!arguments.save_inputs.empty()) {
    const int64_t size = preprocessing.size;
    prtk::write_npy(arguments.save_inputs, {static_cast<int64_t>(paths.size()), 3, size, size}, inputs);
  }
  if (!arguments.outputs_dir.empty()) {
    if (!is_directory(arguments.outputs_dir) && ::mkdir(arguments.outputs_dir.c_str(), 0777) != 0) {
      throw prtk::Error("cannot create --outputs " + arguments.outputs_dir + ": " + std::strerror(errno));
    }
    for (const prtk::Tensor& tensor : totals) write_tensor(arguments.outputs_dir + "/" + tensor.name + ".npy", tensor);
    std::string listing;
    for (const std::string& path : paths) listing += path + "\n";
    prtk::write_file(arguments.outputs_dir + "/images.txt", listing);
  }
  std::ostringstream shapes;
  for (size_t i = 0; i < totals.size(); ++i) {
    shapes << (i ? ", " : "") << (arguments.json ? "\"" + totals[i].name + "\": [" : totals[i].name + " [");
    for (size_t d = 0; d < totals[i].shape.size(); ++d) shapes << (d ? ", " : "") << totals[i].shape[d];
    shapes << "]";
  }
  if (arguments.json) {
    std::cout << "{\"build\": " << build_json(embedder) << ", \"artifact\": " << json_string(arguments.artifact)
              << ", \"images\": " << paths.size() << ", \"batch\": " << arguments.batch << ", \"outputs\": {"
              << shapes.str() << "}, \"seconds\": " << seconds << "}\n";
  } else {
    std::cout << "prtk-embed: " << paths.size() << " images with " << arguments.artifact << " on "
              << embedder.backend().name() << " in " << seconds << " s (" << paths.size() / seconds
              << " images/s): " << shapes.str() << "\n";
    if (!arguments.out.empty()) std::cout << "  embeddings: " << arguments.out << "\n";
    if (!arguments.outputs_dir.empty()) std::cout << "  outputs: " << arguments.outputs_dir << "/\n";
    if (arguments.out.empty() && arguments.outputs_dir.empty()) {
      const prtk::Tensor& embedding = totals.front();
      const int64_t width = embedding.shape[1];
      for (size_t i = 0; i < paths.size(); ++i) {
        std::cout << paths[i] << ":";
        for (int64_t j = 0; j < std::min<int64_t>(width, 4); ++j) std::cout << " " << embedding.floats[i * width + j];
        std::cout << (width > 4 ? " ...\n" : "\n");
      }
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    if (word == "-h" || word == "--help") {
      std::cout << kUsage;
      return 0;
    }
    if (word == "--version") {
      std::cout << "prtk-embed: " << prtk::build_info() << "\n";
      return 0;
    }
  }
  try {
    const Arguments arguments = parse(argc, argv);
    const std::vector<std::string> paths = image_paths(arguments);
    check_outputs(planned_outputs(arguments, prtk::read_description(arguments.artifact)), arguments, paths);
    prtk::Embedder embedder(arguments.artifact, arguments.options);
    return arguments.bench_rounds ? bench(embedder, paths, arguments) : embed(embedder, paths, arguments);
  } catch (const prtk::Error& error) {  // bad input: an option, the artifact, an image
    std::cerr << "prtk-embed: error: " << error.what() << "\n";
    return 2;
  } catch (const std::exception& error) {
    std::cerr << "prtk-embed: failed: " << error.what() << "\n";
    return 1;
  }
}
