/* llama.cpp's reference k-quant quantizers as a filter, for make_kquants.py:
 * reads little-endian f32 values (a multiple of 256) from stdin and writes
 * ggml_quantize_chunk's bytes (no importance matrix) for the type named by
 * argv[1] (q4_k, q5_k or q6_k) to stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: kquants_ref q4_k|q5_k|q6_k < f32 > blocks\n");
        return 2;
    }
    enum ggml_type t = !strcmp(argv[1], "q4_k") ? GGML_TYPE_Q4_K
                     : !strcmp(argv[1], "q5_k") ? GGML_TYPE_Q5_K
                     : !strcmp(argv[1], "q6_k") ? GGML_TYPE_Q6_K
                     : GGML_TYPE_COUNT;
    if (t == GGML_TYPE_COUNT) {
        fprintf(stderr, "unknown type %s\n", argv[1]);
        return 2;
    }
    size_t cap = 1 << 20, n = 0;
    float *x = malloc(cap * sizeof(float));
    size_t got;
    while ((got = fread(x + n, sizeof(float), cap - n, stdin)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            x = realloc(x, cap * sizeof(float));
        }
    }
    if (n == 0 || n % 256) {
        fprintf(stderr, "%zu values: not a positive multiple of 256\n", n);
        return 1;
    }
    size_t bytes = ggml_row_size(t, (int64_t) n);
    void *out = malloc(bytes);
    ggml_quantize_chunk(t, x, out, 0, 1, (int64_t) n, NULL);
    fwrite(out, 1, bytes, stdout);
    return 0;
}
