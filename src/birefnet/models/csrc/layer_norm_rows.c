/*
 * LayerNorm of gathered rows for float32 CPU inference on AVX-512: out[i] = LayerNorm(concat of the
 * `pieces` source rows index[i * pieces .. i * pieces + pieces)), one pass over each output row while it is
 * in the L1 cache.
 *
 * Built on first use by birefnet.models.cpu_kernels and called by the Swin backbone, where PyTorch writes
 * the gathered rows out (index_select, or the 2x2 patch-merging permute), then LayerNorm reads them back
 * and writes its output: two passes over a map-sized tensor become one.
 *   - SwinBlock.forward_streamed: the window chunk's tokens, gathered and normalised by norm1 (pieces = 1).
 *   - PatchMerging: each 2x2 neighbourhood's four tokens, concatenated and normalised (pieces = 4).
 *   - SwinBlock.forward_streamed's norm2 on each chunk of the attention's residual sum (no index).
 *
 * Layouts (float32, row-major, contiguous):
 *   src     (src_rows, channels).
 *   index   (rows * pieces) int64 rows of src, each in [0, src_rows); NULL: rows 0, 1, 2, ... in order
 *           (a plain LayerNorm of the first rows * pieces source rows).
 *   weight, bias  (pieces * channels) LayerNorm affine.
 *   out     (rows, pieces * channels), written.
 *
 * Numerics: the mean and the variance (biased, as LayerNorm's) are taken in two passes over the row with
 * float32 lanes and a float64 final sum; y = (x - mean) * rstd * weight + bias. Against PyTorch's kernel:
 * the same function rounded in another order (~1e-7 relative).
 */
#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* Sum of the 16 lanes in float64 (the lanes themselves are partial sums of width / 16 values). */
static inline double lanes_sum(__m512 v) {
    __m256 lo = _mm512_castps512_ps256(v);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    __m512d a = _mm512_cvtps_pd(lo), b = _mm512_cvtps_pd(hi);
    return _mm512_reduce_add_pd(_mm512_add_pd(a, b));
}

static void norm_row(const float *src, const int64_t *index, int64_t first, int64_t pieces, int64_t channels,
                     const float *weight, const float *bias, float eps, float *out) {
    const int64_t width = pieces * channels;
    /* copy the pieces into the output row, summing on the way */
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;
    for (int64_t p = 0; p < pieces; p++) {
        const float *row = src + (index ? index[p] : first + p) * channels;
        float *dst = out + p * channels;
        int64_t c = 0;
        for (; c + 32 <= channels; c += 32) {
            __m512 a = _mm512_loadu_ps(row + c), b = _mm512_loadu_ps(row + c + 16);
            _mm512_storeu_ps(dst + c, a);
            _mm512_storeu_ps(dst + c + 16, b);
            s0 = _mm512_add_ps(s0, a);
            s1 = _mm512_add_ps(s1, b);
        }
        for (; c < channels; c += 16) {
            __m512 a = _mm512_loadu_ps(row + c);
            _mm512_storeu_ps(dst + c, a);
            s0 = _mm512_add_ps(s0, a);
        }
    }
    const float mean = (float)(lanes_sum(_mm512_add_ps(s0, s1)) / (double)width);
    const __m512 m = _mm512_set1_ps(mean);
    __m512 q0 = _mm512_setzero_ps(), q1 = q0;
    int64_t c = 0;
    for (; c + 32 <= width; c += 32) {
        __m512 a = _mm512_sub_ps(_mm512_loadu_ps(out + c), m), b = _mm512_sub_ps(_mm512_loadu_ps(out + c + 16), m);
        q0 = _mm512_fmadd_ps(a, a, q0);
        q1 = _mm512_fmadd_ps(b, b, q1);
    }
    for (; c < width; c += 16) {
        __m512 a = _mm512_sub_ps(_mm512_loadu_ps(out + c), m);
        q0 = _mm512_fmadd_ps(a, a, q0);
    }
    const double var = lanes_sum(_mm512_add_ps(q0, q1)) / (double)width;
    const __m512 rstd = _mm512_set1_ps((float)(1.0 / sqrt(var + (double)eps)));
    for (c = 0; c < width; c += 16) {
        __m512 x = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(out + c), m), rstd);
        _mm512_storeu_ps(out + c, _mm512_fmadd_ps(x, _mm512_loadu_ps(weight + c), _mm512_loadu_ps(bias + c)));
    }
}

/* Returns 0 on success (out written), 1 for unsupported sizes (channels not a multiple of 16), 3 for an index
 * outside [0, src_rows) (nothing written then). */
int birefnet_gather_layer_norm_f32(const float *src, int64_t src_rows, const int64_t *index, int64_t rows,
                                   int64_t pieces, int64_t channels, const float *weight, const float *bias,
                                   float eps, float *out, int threads) {
    if (channels < 16 || channels % 16 || pieces < 1 || rows < 0 || src_rows < 0) return 1;
    if (!index && rows * pieces > src_rows) return 3;
    for (int64_t i = 0; index && i < rows * pieces; i++)
        if (index[i] < 0 || index[i] >= src_rows) return 3;
    if (threads < 1) threads = 1;
    const int64_t width = pieces * channels;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < rows; i++)
        norm_row(src, index ? index + i * pieces : NULL, i * pieces, pieces, channels, weight, bias, eps,
                 out + i * width);
    return 0;
}
