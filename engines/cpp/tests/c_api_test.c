/* Calls prtk's C API from C: c_api_test ARTIFACT IMAGE
 * Prints the embedding of IMAGE (one value per line, %.9g), after checking the API's errors: a missing artifact
 * and a missing image each give a non-zero status with a message, and a solid-color RGB buffer embeds. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prtk/prtk.h"

static int fail(const char* what, const char* error) {
  fprintf(stderr, "c_api_test: %s: %s\n", what, error);
  return 1;
}

int main(int argc, char** argv) {
  char error[512];
  if (argc != 3) return fail("usage", "c_api_test ARTIFACT IMAGE");
  if (prtk_embedder_create("no/such/model.onnx", NULL, error, sizeof error) != NULL || strlen(error) == 0) {
    return fail("a missing artifact was not refused", error);
  }
  prtk_embedder* embedder = prtk_embedder_create(argv[1], "CPU", error, sizeof error);
  if (!embedder) return fail("create", error);
  const int size = prtk_embedder_embedding_size(embedder);
  const int side = prtk_embedder_input_size(embedder);
  float* embedding = malloc(2 * (size_t)size * sizeof(float));
  if (size < 1 || side < 1 || !embedding) return fail("sizes", "not positive");
  if (prtk_embedder_embed_file(embedder, "no/such/image.jpg", embedding, error, sizeof error) == 0 ||
      strstr(error, "no/such/image.jpg") == NULL) {
    return fail("a missing image was not refused with its name", error);
  }
  uint8_t* gray = malloc((size_t)side * side * 3);
  memset(gray, 128, (size_t)side * side * 3);
  const uint8_t* pixels[2] = {gray, gray};
  const int widths[2] = {side, side}, heights[2] = {side, side};
  if (prtk_embedder_embed_rgb(embedder, pixels, widths, heights, 2, embedding, error, sizeof error) != 0) {
    return fail("embed_rgb", error);
  }
  for (int i = 0; i < size; ++i) {
    if (embedding[i] != embedding[size + i]) return fail("embed_rgb", "one image gave two embeddings");
  }
  if (prtk_embedder_embed_file(embedder, argv[2], embedding, error, sizeof error) != 0) return fail("embed", error);
  for (int i = 0; i < size; ++i) printf("%.9g\n", embedding[i]);
  free(gray);
  free(embedding);
  prtk_embedder_destroy(embedder);
  return 0;
}
