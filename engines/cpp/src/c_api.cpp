#include <cstring>

#include "prtk/embedder.hpp"
#include "prtk/prtk.h"

struct prtk_embedder {
  std::unique_ptr<prtk::Embedder> embedder;
};

namespace {

void set_error(char* error, size_t error_size, const char* message) {
  if (!error || error_size == 0) return;
  std::strncpy(error, message, error_size - 1);
  error[error_size - 1] = '\0';
}

// Runs `work`; a thrown exception becomes status 1 and its message.
template <typename Work>
int guarded(char* error, size_t error_size, Work&& work) {
  try {
    work();
    set_error(error, error_size, "");
    return 0;
  } catch (const std::exception& failure) {
    set_error(error, error_size, failure.what());
  } catch (...) {
    set_error(error, error_size, "unknown error");
  }
  return 1;
}

void copy_embeddings(const std::vector<prtk::Tensor>& outputs, float* embeddings) {
  const prtk::Tensor& embedding = outputs.front();  // the description lists "embedding" first
  std::memcpy(embeddings, embedding.floats.data(), embedding.floats.size() * sizeof(float));
}

}  // namespace

extern "C" {

prtk_embedder* prtk_embedder_create(const char* artifact, const char* device, char* error, size_t error_size) {
  auto handle = std::make_unique<prtk_embedder>();
  const int status = guarded(error, error_size, [&] {
    if (!artifact) throw prtk::Error("no artifact given");
    prtk::Options options;
    if (device) options.device = device;
    handle->embedder = std::make_unique<prtk::Embedder>(artifact, options);
  });
  return status == 0 ? handle.release() : nullptr;
}

int prtk_embedder_embedding_size(const prtk_embedder* embedder) {
  return embedder ? static_cast<int>(embedder->embedder->description().outputs.front().shape[1]) : 0;
}

int prtk_embedder_input_size(const prtk_embedder* embedder) {
  return embedder ? embedder->embedder->description().preprocessing.size : 0;
}

int prtk_embedder_embed_file(prtk_embedder* embedder, const char* path, float* embedding, char* error,
                             size_t error_size) {
  return guarded(error, error_size, [&] {
    if (!embedder || !path || !embedding) throw prtk::Error("prtk_embedder_embed_file: a NULL argument");
    copy_embeddings(embedder->embedder->embed({prtk::decode_image(path)}), embedding);
  });
}

int prtk_embedder_embed_rgb(prtk_embedder* embedder, const uint8_t* const* pixels, const int* widths,
                            const int* heights, int count, float* embeddings, char* error, size_t error_size) {
  return guarded(error, error_size, [&] {
    if (!embedder || !pixels || !widths || !heights || !embeddings) {
      throw prtk::Error("prtk_embedder_embed_rgb: a NULL argument");
    }
    if (count < 1) throw prtk::Error("prtk_embedder_embed_rgb: count must be at least 1, got " + std::to_string(count));
    std::vector<prtk::RgbImage> images(count);
    for (int i = 0; i < count; ++i) {
      if (!pixels[i] || widths[i] < 1 || heights[i] < 1) {
        throw prtk::Error("prtk_embedder_embed_rgb: image " + std::to_string(i) + " has no pixels");
      }
      images[i].width = widths[i];
      images[i].height = heights[i];
      images[i].pixels.assign(pixels[i], pixels[i] + static_cast<size_t>(widths[i]) * heights[i] * 3);
    }
    copy_embeddings(embedder->embedder->embed(images), embeddings);
  });
}

void prtk_embedder_destroy(prtk_embedder* embedder) { delete embedder; }

}  // extern "C"
