#include "npy.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "prtk/embedder.hpp"

namespace prtk {

namespace {

std::string header(const char* descr, const std::vector<int64_t>& shape) {
  std::string dims;
  for (const int64_t dimension : shape) dims += std::to_string(dimension) + ", ";
  if (shape.size() > 1) dims.resize(dims.size() - 2);  // (N,) keeps its comma
  std::string dict = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  const size_t unpadded = 10 + dict.size() + 1;  // magic, version, length, dict, newline
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  const auto length = static_cast<uint16_t>(dict.size());
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(length & 0xFF);
  out += static_cast<char>(length >> 8);
  return out + dict;
}

void write_atomically(const std::string& path, const std::string& head, const void* data, size_t bytes) {
  const size_t slash = path.find_last_of('/');
  const std::string temporary = (slash == std::string::npos ? "" : path.substr(0, slash + 1)) + "." +
                                path.substr(slash == std::string::npos ? 0 : slash + 1) + ".partial";
  FILE* file = std::fopen(temporary.c_str(), "wb");
  if (!file) throw Error("cannot write " + path + ": " + std::strerror(errno));
  const bool written = std::fwrite(head.data(), 1, head.size(), file) == head.size() &&
                       (bytes == 0 || std::fwrite(data, 1, bytes, file) == bytes) && std::fflush(file) == 0 &&
                       ::fsync(fileno(file)) == 0;
  const int error = errno;
  if (std::fclose(file) != 0 || !written || std::rename(temporary.c_str(), path.c_str()) != 0) {
    std::remove(temporary.c_str());
    throw Error("cannot write " + path + ": " + std::strerror(written ? errno : error));
  }
}

}  // namespace

void write_npy(const std::string& path, const std::vector<int64_t>& shape, const std::vector<float>& values) {
  write_atomically(path, header("<f4", shape), values.data(), values.size() * sizeof(float));
}

void write_npy(const std::string& path, const std::vector<int64_t>& shape, const std::vector<int64_t>& values) {
  write_atomically(path, header("<i8", shape), values.data(), values.size() * sizeof(int64_t));
}

void write_file(const std::string& path, const std::string& contents) { write_atomically(path, contents, nullptr, 0); }

}  // namespace prtk
