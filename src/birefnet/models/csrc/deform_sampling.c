/*
 * Bilinear sampling of the modulated deformable convolution for float32 CPU inference on AVX-512: the
 * columns (pixel, kernel point x channel) that the convolution's product multiplies, computed straight
 * from the offsets and the mask.
 *
 * Built on first use by birefnet.models.cpu_kernels and called by deform_conv._GatherSampler in place of
 * its ~20 elementwise operations (clamping, floors, fractions, corner indices and weights, written out as
 * tensors of 4 indices and 4 weights per sample) and F.embedding_bag. The same function, term for term:
 * the sample position is clamped to [-1, H] x [-1, W] (outside, every corner is on the zero border), the
 * mask multiplies the two row weights, and the four corners are summed in the same order
 * (top-left, top-right, bottom-left, bottom-right).
 *
 * Layouts:
 *   table    ((H + 3) * (W + 3) per sample, C) float32, row-major: the input with a zero border, channels
 *            last; pixel (-1, -1) of sample b at row b * (H + 3) * (W + 3).
 *   base_y   (R, K) row of each output row's kernel points (float, integer values).
 *   base_x   (Wo, K) column of each output column's kernel points.
 *   offset   (B, R, Wo, K, 2) (dy, dx), any strides (given in floats).
 *   mask     (B, R, Wo, K) modulation, any strides, or NULL.
 *   columns  (B, R * Wo, K * C) float32, contiguous, written.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

int birefnet_deform_columns_f32(const float *table, int64_t height, int64_t width, int64_t channels,
                                const float *base_y, const float *base_x, int64_t batch, int64_t rows,
                                int64_t out_w, int64_t points, const float *offset, const int64_t *off_stride,
                                const float *mask, const int64_t *mask_stride, float *columns, int threads) {
    if (channels < 1 || points < 1 || rows < 0 || out_w < 0 || batch < 0) return 1;
    const int64_t pw = width + 3, plane = (height + 3) * pw;
    const int64_t pixels = batch * rows * out_w;
    const float fh = (float)height, fw = (float)width;
    const __mmask16 tail = (__mmask16)((1u << (channels % 16)) - 1u);
    if (threads < 1) threads = 1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t p = 0; p < pixels; p++) {
        const int64_t b = p / (rows * out_w), r = (p / out_w) % rows, x = p % out_w;
        const float *off = offset + b * off_stride[0] + r * off_stride[1] + x * off_stride[2];
        const float *m = mask ? mask + b * mask_stride[0] + r * mask_stride[1] + x * mask_stride[2] : 0;
        const float *t = table + b * plane * channels;
        float *col = columns + p * points * channels;
        for (int64_t k = 0; k < points; k++, col += channels) {
            const float by = base_y[r * points + k], bx = base_x[x * points + k];
            float dy = off[k * off_stride[3]], dx = off[k * off_stride[3] + off_stride[4]];
            /* clamp as torch.clamp: a NaN stays NaN (the comparisons are false) */
            if (dy < -1.0f - by) dy = -1.0f - by;
            if (dy > fh - by) dy = fh - by;
            if (dx < -1.0f - bx) dx = -1.0f - bx;
            if (dx > fw - bx) dx = fw - bx;
            const float fy = floorf(dy), fx = floorf(dx);
            const float ty = dy - fy, tx = dx - fx;
            float near_y = 1.0f - ty, far_y = ty;
            if (m) {
                const float mk = m[k * mask_stride[3]];
                near_y = near_y * mk, far_y = far_y * mk;
            }
            const float near_x = 1.0f - tx, far_x = tx;
            const float w0 = near_y * near_x, w1 = near_y * far_x, w2 = far_y * near_x, w3 = far_y * far_x;
            /* top-left corner's row; a NaN offset reads pixel (-1, -1) (its NaN weights keep the NaN) */
            int64_t row = 0;
            if (!isnan(dy) && !isnan(dx)) row = (int64_t)(by + fy + 1.0f) * pw + (int64_t)(bx + fx + 1.0f);
            const float *c0 = t + row * channels, *c1 = c0 + channels, *c2 = c0 + pw * channels;
            const float *c3 = c2 + channels;
            const __m512 v0 = _mm512_set1_ps(w0), v1 = _mm512_set1_ps(w1);
            const __m512 v2 = _mm512_set1_ps(w2), v3 = _mm512_set1_ps(w3);
            int64_t c = 0;
            for (; c + 16 <= channels; c += 16) {
                __m512 s = _mm512_mul_ps(v0, _mm512_loadu_ps(c0 + c));
                s = _mm512_add_ps(s, _mm512_mul_ps(v1, _mm512_loadu_ps(c1 + c)));
                s = _mm512_add_ps(s, _mm512_mul_ps(v2, _mm512_loadu_ps(c2 + c)));
                s = _mm512_add_ps(s, _mm512_mul_ps(v3, _mm512_loadu_ps(c3 + c)));
                _mm512_storeu_ps(col + c, s);
            }
            if (c < channels) {
                __m512 s = _mm512_mul_ps(v0, _mm512_maskz_loadu_ps(tail, c0 + c));
                s = _mm512_add_ps(s, _mm512_mul_ps(v1, _mm512_maskz_loadu_ps(tail, c1 + c)));
                s = _mm512_add_ps(s, _mm512_mul_ps(v2, _mm512_maskz_loadu_ps(tail, c2 + c)));
                s = _mm512_add_ps(s, _mm512_mul_ps(v3, _mm512_maskz_loadu_ps(tail, c3 + c)));
                _mm512_mask_storeu_ps(col + c, tail, s);
            }
        }
    }
    return 0;
}
