#include "artifact_files.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "prtk/embedder.hpp"

namespace prtk {

namespace {

constexpr int kMetadataProps = 14;  // ModelProto.metadata_props: repeated StringStringEntryProto {key = 1; value = 2}

class ProtoReader {
 public:
  ProtoReader(std::istream& stream, uint64_t end, const std::string& path) : stream_(stream), end_(end), path_(path) {}

  bool done() { return position() >= end_; }

  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      const int byte = stream_.get();
      if (byte == EOF) corrupt("ends inside a field");
      value |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if (!(byte & 0x80)) return value;
    }
    corrupt("has a malformed varint");
  }

  // Reads a field's tag; returns {field number, wire type}.
  std::pair<uint64_t, int> tag() {
    const uint64_t key = varint();
    return {key >> 3, static_cast<int>(key & 7)};
  }

  uint64_t length() {
    const uint64_t size = varint();
    if (size > end_ - position()) corrupt("has a field longer than the file");
    return size;
  }

  std::string bytes(uint64_t size) {
    std::string out(size, '\0');
    if (!stream_.read(out.data(), static_cast<std::streamsize>(size))) corrupt("ends inside a field");
    return out;
  }

  void skip(int wire_type) {
    switch (wire_type) {
      case 0: varint(); return;
      case 1: seek(8); return;
      case 2: seek(length()); return;
      case 5: seek(4); return;
      default: corrupt("has a field of unknown wire type " + std::to_string(wire_type));
    }
  }

 private:
  std::istream& stream_;
  uint64_t end_;
  const std::string& path_;

  uint64_t position() { return static_cast<uint64_t>(stream_.tellg()); }

  void seek(uint64_t size) {
    if (size > end_ - position()) corrupt("has a field longer than the file");
    stream_.seekg(static_cast<std::streamoff>(size), std::ios::cur);
  }

  [[noreturn]] void corrupt(const std::string& what) {
    throw Error(path_ + " is not a valid ONNX file: it " + what);
  }
};

}  // namespace

std::optional<std::string> onnx_metadata(const std::string& path, const std::string& key) {
  std::ifstream stream(path, std::ios::binary | std::ios::ate);
  if (!stream) throw Error("cannot read " + path + ": " + std::strerror(errno));
  const uint64_t size = static_cast<uint64_t>(stream.tellg());
  stream.seekg(0);
  ProtoReader model(stream, size, path);
  while (!model.done()) {
    const auto [field, wire_type] = model.tag();
    if (field != kMetadataProps || wire_type != 2) {
      model.skip(wire_type);
      continue;
    }
    const std::string entry = model.bytes(model.length());
    std::istringstream entry_stream(entry);
    ProtoReader reader(entry_stream, entry.size(), path);
    std::string entry_key, value;
    while (!reader.done()) {
      const auto [entry_field, entry_wire] = reader.tag();
      if ((entry_field == 1 || entry_field == 2) && entry_wire == 2) {
        (entry_field == 1 ? entry_key : value) = reader.bytes(reader.length());
      } else {
        reader.skip(entry_wire);
      }
    }
    if (entry_key == key) return value;
  }
  return std::nullopt;
}

std::string folder_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
}

std::string read_text(const std::string& path) {
  std::ifstream stream(path, std::ios::binary);
  if (!stream) throw Error("cannot read " + path + ": " + std::strerror(errno));
  std::ostringstream text;
  text << stream.rdbuf();
  return text.str();
}

CommitLock::CommitLock(const std::string& folder) : path_(folder + "/.prtk-commit.lock") {
  while (true) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) return;  // a read-only folder: nobody moves files into it either
    if (::flock(fd_, LOCK_EX) != 0) {
      ::close(fd_);
      fd_ = -1;
      return;
    }
    struct stat held {}, current {};
    if (::fstat(fd_, &held) == 0 && ::stat(path_.c_str(), &current) == 0 && held.st_dev == current.st_dev &&
        held.st_ino == current.st_ino) {
      return;  // the lock file the other holders use (not one its last holder removed)
    }
    ::close(fd_);
  }
}

CommitLock::~CommitLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());
  ::close(fd_);
}

}  // namespace prtk
