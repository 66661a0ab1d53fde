// What preprocess() implements (internal): read_description refuses other descriptions before any model loads.
#pragma once

#include <string>

#include "prtk/embedder.hpp"

namespace prtk {

// "" when preprocess() implements `preprocessing`'s resize mode and interpolation; else what it lacks, as "the resize
// mode 'longest', which this program does not implement (shortest, squash)".
std::string unimplemented(const Preprocessing& preprocessing);

}  // namespace prtk
