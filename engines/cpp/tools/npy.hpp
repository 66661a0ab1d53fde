// Writing the program's output files atomically (a temporary name in the same folder, then rename): .npy files
// (NumPy format 1.0: a little-endian float32 or int64 array) and text.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace prtk {

void write_npy(const std::string& path, const std::vector<int64_t>& shape, const std::vector<float>& values);
void write_npy(const std::string& path, const std::vector<int64_t>& shape, const std::vector<int64_t>& values);

// `contents` as the file `path`, written the same way.
void write_file(const std::string& path, const std::string& contents);

}  // namespace prtk
