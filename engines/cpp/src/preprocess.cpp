// preprocess: open_clip's eval transform over a PIL image, reproduced bit for bit: torchvision's Resize (shorter
// side to `size`, the other truncated as `int(size * long / short)`; or both sides for "squash") by PIL's
// antialiased resampling (Pillow 13's Resample.c: separable convolution with 22-bit fixed-point coefficients, each
// pass rounded and clipped to 8 bits), torchvision's CenterCrop (offsets rounded half to even, zero
// padding where the image is smaller), then ToTensor and Normalize in float32: (pixel / 255 - mean) / std.
#include <cmath>

#include "preprocess.hpp"

namespace prtk {

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double bilinear(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

struct Filter {
  double (*weight)(double);
  double support;
};

Filter filter_named(const std::string& interpolation) {
  return interpolation == "bicubic" ? Filter{bicubic, 2.0} : Filter{bilinear, 1.0};  // unimplemented() checked it
}

// For each output position: the first input index, the tap count, and `taps` fixed-point weights.
struct Coefficients {
  int taps = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;
};

Coefficients coefficients(int in_size, int out_size, const Filter& filter) {
  const double scale = static_cast<double>(static_cast<float>(in_size) - 0.0f) / out_size;
  const double filter_scale = scale < 1.0 ? 1.0 : scale;
  const double support = filter.support * filter_scale;
  Coefficients c;
  c.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<size_t>(out_size) * c.taps, 0);
  std::vector<double> k(c.taps);
  const double inverse = 1.0 / filter_scale;
  for (int out = 0; out < out_size; ++out) {
    const double center = (out + 0.5) * scale;
    int low = static_cast<int>(center - support + 0.5);
    if (low < 0) low = 0;
    int high = static_cast<int>(center + support + 0.5);
    if (high > in_size) high = in_size;
    high -= low;
    double total = 0.0;
    for (int x = 0; x < high; ++x) {
      k[x] = filter.weight((x + low - center + 0.5) * inverse);
      total += k[x];
    }
    for (int x = 0; x < high; ++x) {
      const double w = total != 0.0 ? k[x] / total : k[x];
      c.weights[static_cast<size_t>(out) * c.taps + x] =
          static_cast<int32_t>(w < 0 ? -0.5 + w * (1 << kPrecisionBits) : 0.5 + w * (1 << kPrecisionBits));
    }
    c.first[out] = low;
    c.count[out] = high;
  }
  return c;
}

uint8_t clip8(int value) {
  const int shifted = value >> kPrecisionBits;
  return static_cast<uint8_t>(shifted < 0 ? 0 : (shifted > 255 ? 255 : shifted));
}

// One separable pass over an interleaved RGB image along columns (horizontal) or rows (vertical).
RgbImage resample_pass(const RgbImage& in, int out_size, bool horizontal, const Filter& filter) {
  const Coefficients c = coefficients(horizontal ? in.width : in.height, out_size, filter);
  RgbImage out;
  out.width = horizontal ? out_size : in.width;
  out.height = horizontal ? in.height : out_size;
  out.pixels.resize(static_cast<size_t>(out.width) * out.height * 3);
  const size_t in_row = static_cast<size_t>(in.width) * 3;
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      const int position = horizontal ? x : y;
      const int32_t* k = &c.weights[static_cast<size_t>(position) * c.taps];
      for (int channel = 0; channel < 3; ++channel) {
        int sum = 1 << (kPrecisionBits - 1);
        for (int t = 0; t < c.count[position]; ++t) {
          const int source = c.first[position] + t;
          const uint8_t sample = horizontal ? in.pixels[y * in_row + static_cast<size_t>(source) * 3 + channel]
                                            : in.pixels[source * in_row + static_cast<size_t>(x) * 3 + channel];
          sum += sample * k[t];
        }
        out.pixels[(static_cast<size_t>(y) * out.width + x) * 3 + channel] = clip8(sum);
      }
    }
  }
  return out;
}

// PIL's Image.resize((width, height), filter), each pass only if its side changes: the horizontal pass first, unless
// the height shrinks by more than twice what the width does (Pillow 13's order; Pillow 12 and earlier always went
// horizontal first, and the two orders can differ by one level in some pixels). Returns `image` itself when neither
// side changes, else the resized image, held in `scratch`.
const RgbImage& resize(const RgbImage& image, int width, int height, const Filter& filter, RgbImage& scratch) {
  const int shrink_y = image.height - height, shrink_x = image.width - width;
  const bool vertical_first = shrink_y > 0 && shrink_y > shrink_x * 2;
  const RgbImage* current = &image;
  for (const bool horizontal : {!vertical_first, vertical_first}) {
    const int target = horizontal ? width : height;
    if (target != (horizontal ? current->width : current->height)) {
      scratch = resample_pass(*current, target, horizontal, filter);
      current = &scratch;
    }
  }
  return *current;
}

// torchvision's CenterCrop along a side of `side` pixels: where smaller than `size`, padded with zeros by
// (size - side) // 2 before it; else cut from int(round((side - size) / 2)), rounded half to even. Negative: padding.
int crop_offset(int side, int size) {
  if (side < size) return -((size - side) / 2);
  return static_cast<int>(std::nearbyint((side - size) / 2.0));
}

}  // namespace

std::string unimplemented(const Preprocessing& preprocessing) {
  if (preprocessing.resize_mode != "shortest" && preprocessing.resize_mode != "squash") {
    return "the resize mode '" + preprocessing.resize_mode + "', which this program does not implement "
           "(shortest, squash)";
  }
  if (preprocessing.interpolation != "bicubic" && preprocessing.interpolation != "bilinear") {
    return "the interpolation '" + preprocessing.interpolation + "', which this program does not implement "
           "(bicubic, bilinear)";
  }
  return "";
}

void preprocess(const RgbImage& image, const Preprocessing& preprocessing, std::vector<float>& out) {
  const std::string lacking = unimplemented(preprocessing);
  if (!lacking.empty()) throw Error("cannot preprocess with " + lacking);
  const int size = preprocessing.size;
  int width = size, height = size;
  if (preprocessing.resize_mode == "shortest") {
    const bool portrait = image.width <= image.height;
    const long shorter = portrait ? image.width : image.height, longer = portrait ? image.height : image.width;
    const int resized_long = static_cast<int>(static_cast<double>(size * longer) / shorter);
    (portrait ? height : width) = resized_long;
  }
  RgbImage scratch;
  const RgbImage& resized = resize(image, width, height, filter_named(preprocessing.interpolation), scratch);
  const int top = crop_offset(resized.height, size), left = crop_offset(resized.width, size);
  const size_t base = out.size();
  out.resize(base + static_cast<size_t>(3) * size * size);
  for (int channel = 0; channel < 3; ++channel) {
    const float mean = preprocessing.mean[channel], std = preprocessing.std[channel];
    float* plane = out.data() + base + static_cast<size_t>(channel) * size * size;
    for (int y = 0; y < size; ++y) {
      for (int x = 0; x < size; ++x) {
        const int source_y = y + top, source_x = x + left;
        const bool inside = source_y >= 0 && source_y < resized.height && source_x >= 0 && source_x < resized.width;
        const uint8_t pixel =
            inside ? resized.pixels[(static_cast<size_t>(source_y) * resized.width + source_x) * 3 + channel] : 0;
        plane[static_cast<size_t>(y) * size + x] = (static_cast<float>(pixel) / 255.0f - mean) / std;
      }
    }
  }
}

}  // namespace prtk
