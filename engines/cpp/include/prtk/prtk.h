/* prtk's C API: embed images with a prtk artifact from C, Rust, Go or any language with a C FFI.
 *
 *   char error[512];
 *   prtk_embedder* embedder = prtk_embedder_create("model_keep0.60.onnx", "CPU", error, sizeof error);
 *   if (!embedder) { fprintf(stderr, "%s\n", error); return 1; }
 *   float* embedding = malloc(prtk_embedder_embedding_size(embedder) * sizeof(float));
 *   if (prtk_embedder_embed_file(embedder, "cat.jpg", embedding, error, sizeof error) != 0) ...
 *   prtk_embedder_destroy(embedder);
 *
 * Every function that can fail returns NULL or a non-zero status and writes one line into `error` (at most
 * `error_size` bytes, NUL-terminated; `error` may be NULL). An embedder is not safe to use from two threads at once.
 */
#ifndef PRTK_PRTK_H
#define PRTK_PRTK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct prtk_embedder prtk_embedder;

/* Loads `artifact` (a prtk .onnx graph) on OpenVINO `device` ("CPU", "GPU", "NPU", "AUTO"; NULL: "CPU"). */
prtk_embedder* prtk_embedder_create(const char* artifact, const char* device, char* error, size_t error_size);

/* E: the number of floats of one image's embedding. */
int prtk_embedder_embedding_size(const prtk_embedder* embedder);

/* The side of the square image the graph takes (its input is [B, 3, size, size]). */
int prtk_embedder_input_size(const prtk_embedder* embedder);

/* Decodes and preprocesses the JPEG or PNG file `path` and writes its embedding (E floats) to `embedding`. */
int prtk_embedder_embed_file(prtk_embedder* embedder, const char* path, float* embedding, char* error,
                             size_t error_size);

/* `count` images, each `width` x `height` 8-bit RGB pixels (rows of width x 3 bytes), to `count` x E floats. */
int prtk_embedder_embed_rgb(prtk_embedder* embedder, const uint8_t* const* pixels, const int* widths,
                            const int* heights, int count, float* embeddings, char* error, size_t error_size);

void prtk_embedder_destroy(prtk_embedder* embedder);

#ifdef __cplusplus
}
#endif

#endif /* PRTK_PRTK_H */
