// Reading an artifact's files as prtk writes them: the description embedded in an ONNX graph's metadata_props,
// the sidecar, and the folder's commit lock that prtk holds while it moves a graph and its sidecar into place.
#pragma once

#include <optional>
#include <string>

namespace prtk {

// The value of metadata_props[`key`] of the ONNX file `path` (nullopt when absent). Walks the ModelProto's
// top-level fields only; throws Error for a file that is not a well-formed protobuf message.
std::optional<std::string> onnx_metadata(const std::string& path, const std::string& key);

// The whole of file `path`; throws Error naming it when it cannot be read.
std::string read_text(const std::string& path);

// The folder of `path` ("." for a bare name).
std::string folder_of(const std::string& path);

// read_description without taking the commit lock (for a caller that holds it).
struct Description;
Description read_description_unlocked(const std::string& artifact);

// Holds `folder`/.prtk-commit.lock (flock, exclusive) the way prtk's Python side does, so that a graph and its
// sidecar are read as one pair. A folder where the lock cannot be created (read-only) is not locked.
class CommitLock {
 public:
  explicit CommitLock(const std::string& folder);
  ~CommitLock();
  CommitLock(const CommitLock&) = delete;
  CommitLock& operator=(const CommitLock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace prtk
