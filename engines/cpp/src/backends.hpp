// The backends behind Embedder (internal): each checks the graph against its description when it loads it.
#pragma once

#include <memory>

#include "prtk/embedder.hpp"

namespace prtk {

std::unique_ptr<Backend> make_openvino_backend(const Description& description, const Options& options);
std::string openvino_version();

#ifdef PRTK_WITH_TENSORRT
std::unique_ptr<Backend> make_tensorrt_backend(const Description& description, const Options& options);
#endif

}  // namespace prtk
