// decode_image: JPEG (libjpeg-turbo) and PNG (libpng) files to 8-bit RGB, as prtk's Python loader (PIL, then
// `rgb_image`) makes them: grayscale replicated, alpha dropped (not composited), palettes looked up, 16-bit samples
// cut to their high byte, except 16-bit grayscale, scaled by 255 / 65535 and rounded.
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include "artifact_files.hpp"
#include "prtk/embedder.hpp"

namespace prtk {

namespace {

constexpr uint64_t kMaxPixels = 2ull * 89478485ull;  // PIL's decompression-bomb limit (2 x MAX_IMAGE_PIXELS)

bool size_fits(uint64_t width, uint64_t height, std::string& message) {
  if (width == 0 || height == 0) {
    message = "it has no pixels";
    return false;
  }
  if (width * height > kMaxPixels) {
    message = std::to_string(width) + " x " + std::to_string(height) + " pixels is over the limit of " +
              std::to_string(kMaxPixels) + " (PIL's decompression-bomb limit)";
    return false;
  }
  return true;
}

struct JpegErrors {
  jpeg_error_mgr manager;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = "";
  bool truncated = false;
};

void jpeg_fail(j_common_ptr info) {
  auto* errors = reinterpret_cast<JpegErrors*>(info->err);
  (*info->err->format_message)(info, errors->message);
  longjmp(errors->jump, 1);
}

void jpeg_note(j_common_ptr info, int level) {
  auto* errors = reinterpret_cast<JpegErrors*>(info->err);
  if (level < 0 && info->err->msg_code == JWRN_JPEG_EOF) errors->truncated = true;  // PIL: "image file is truncated"
}

// The decoders' state lives outside the functions that call setjmp, so that nothing a longjmp returns over is
// left indeterminate; they return false with `message` set, and the callers throw.
struct Decoding {
  RgbImage image;
  std::vector<uint8_t> samples;  // PNG rows after libpng's transforms
  std::vector<png_bytep> rows;
  std::string message;
  bool gray16 = false;
};

bool jpeg_into(const std::string& bytes, Decoding& out) {
  jpeg_decompress_struct info{};
  JpegErrors errors;
  info.err = jpeg_std_error(&errors.manager);
  errors.manager.error_exit = jpeg_fail;
  errors.manager.emit_message = jpeg_note;
  if (setjmp(errors.jump)) {
    jpeg_destroy_decompress(&info);
    out.message = std::string("corrupt JPEG (") + errors.message + ")";
    return false;
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  jpeg_read_header(&info, TRUE);
  if (info.jpeg_color_space == JCS_CMYK || info.jpeg_color_space == JCS_YCCK) {
    jpeg_destroy_decompress(&info);
    out.message = "CMYK JPEGs are not supported (convert it to RGB)";
    return false;
  }
  if (!size_fits(info.image_width, info.image_height, out.message)) {
    jpeg_destroy_decompress(&info);
    return false;
  }
  info.out_color_space = JCS_RGB;  // grayscale replicated, YCbCr converted, as PIL's convert("RGB")
  jpeg_start_decompress(&info);
  out.image.width = static_cast<int>(info.output_width);
  out.image.height = static_cast<int>(info.output_height);
  out.image.pixels.resize(static_cast<size_t>(info.output_width) * info.output_height * 3);
  while (info.output_scanline < info.output_height) {
    JSAMPROW row = out.image.pixels.data() + static_cast<size_t>(info.output_scanline) * info.output_width * 3;
    jpeg_read_scanlines(&info, &row, 1);
  }
  jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  if (errors.truncated) out.message = "the JPEG is truncated";
  return !errors.truncated;
}

struct PngSource {
  const std::string& bytes;
  size_t offset = 0;
};

void png_read_bytes(png_structp png, png_bytep out, png_size_t count) {
  auto* source = static_cast<PngSource*>(png_get_io_ptr(png));
  if (count > source->bytes.size() - source->offset) png_error(png, "the file ends early: truncated");
  std::memcpy(out, source->bytes.data() + source->offset, count);
  source->offset += count;
}

void png_fail(png_structp png, png_const_charp message) {
  *static_cast<std::string*>(png_get_error_ptr(png)) = message;
  png_longjmp(png, 1);
}

void png_ignore_warning(png_structp, png_const_charp) {}

bool png_into(const std::string& bytes, Decoding& out) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &out.message, png_fail, png_ignore_warning);
  if (!png) {
    out.message = "out of memory";
    return false;
  }
  png_infop info = png_create_info_struct(png);
  PngSource source{bytes};
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    out.message = "corrupt PNG (" + out.message + ")";
    return false;
  }
  if (!info) png_error(png, "out of memory");
  png_set_read_fn(png, &source, png_read_bytes);
  png_read_info(png, info);
  const png_uint_32 width = png_get_image_width(png, info);
  const png_uint_32 height = png_get_image_height(png, info);
  std::string too_large;
  if (!size_fits(width, height, too_large)) png_error(png, too_large.c_str());
  const int color_type = png_get_color_type(png, info);
  const int depth = png_get_bit_depth(png, info);
  out.gray16 = color_type == PNG_COLOR_TYPE_GRAY && depth == 16;  // scaled below, like prtk's rgb_image
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if ((color_type & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, info, PNG_INFO_tRNS)) png_set_strip_alpha(png);
  if (depth == 16 && !out.gray16) png_set_strip_16(png);  // PIL keeps the high byte
  if (out.gray16) png_set_swap(png);                      // 16-bit samples in host (little-endian) order
  if (!out.gray16 && !(color_type & PNG_COLOR_MASK_COLOR)) png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const size_t row_bytes = png_get_rowbytes(png, info);
  out.samples.resize(row_bytes * height);
  out.rows.resize(height);
  for (png_uint_32 y = 0; y < height; ++y) out.rows[y] = out.samples.data() + y * row_bytes;
  png_read_image(png, out.rows.data());
  png_destroy_read_struct(&png, &info, nullptr);
  out.image.width = static_cast<int>(width);
  out.image.height = static_cast<int>(height);
  return true;
}

RgbImage png_image(Decoding& decoded) {
  RgbImage image = std::move(decoded.image);
  const size_t count = static_cast<size_t>(image.width) * image.height;
  if (!decoded.gray16) {
    decoded.samples.resize(count * 3);
    image.pixels = std::move(decoded.samples);
    return image;
  }
  image.pixels.resize(count * 3);
  for (size_t i = 0; i < count; ++i) {
    uint16_t sample = 0;
    std::memcpy(&sample, decoded.samples.data() + 2 * i, 2);
    const auto gray = static_cast<uint8_t>((static_cast<uint32_t>(sample) * 255 + 32767) / 65535);
    image.pixels[3 * i] = image.pixels[3 * i + 1] = image.pixels[3 * i + 2] = gray;
  }
  return image;
}

}  // namespace

RgbImage decode_image(const std::string& path) {
  std::string bytes;
  try {
    bytes = read_text(path);
  } catch (const Error&) {
    throw Error("cannot decode image " + path + ": the file cannot be read");
  }
  const auto* start = reinterpret_cast<const unsigned char*>(bytes.data());
  Decoding decoded;
  if (bytes.size() >= 3 && start[0] == 0xFF && start[1] == 0xD8 && start[2] == 0xFF) {
    if (!jpeg_into(bytes, decoded)) throw Error("cannot decode image " + path + ": " + decoded.message);
    return std::move(decoded.image);
  }
  if (bytes.size() >= 8 && png_sig_cmp(start, 0, 8) == 0) {
    if (!png_into(bytes, decoded)) throw Error("cannot decode image " + path + ": " + decoded.message);
    return png_image(decoded);
  }
  throw Error("cannot decode image " + path + ": not a JPEG or PNG file");
}

}  // namespace prtk
