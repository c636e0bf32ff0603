/*
 * Swin window attention for float32 CPU inference on AVX-512: one head of one window at a time,
 * softmax(q k^T / sqrt(d) + mask) v computed in the cache and written straight to each query's token row.
 *
 * Built on first use by birefnet.models.cpu_kernels (cc -O3 -mavx512f -mavx512dq -mfma -fopenmp) and called
 * through ctypes from SwinBlock.forward_streamed. It replaces, per chunk of windows, the batched products,
 * the softmax, the query-row selection and the scatter of the outputs (PyTorch: ~10 operator calls and
 * ~2 MB of scores per call) with one call that keeps each head's 144 x 144 scores (83 KB) in the L2 cache.
 * The parallel loop runs on the OpenMP runtime PyTorch has loaded (the same libgomp.so.1), so it shares
 * PyTorch's worker threads instead of competing with them.
 *
 * Layouts (all float32, row-major):
 *   qkv   (windows, 144, 3, heads, 32): the qkv projection of each window's 144 token slots.
 *   rows  (nq,) int64 query slots to compute (NULL: all 144, nq = 144); keys and values are all slots.
 *   mask  (windows or 1, heads, 144, 144): additive bias (relative position bias, plus the shift mask's
 *         0 / -inf), window stride mask_window_stride (0: the same for every window). Every query row must
 *         have at least one finite entry.
 *   out   output rows of out_stride floats; query i of window w goes to row out_rows[w * nq + i], head h
 *         to columns [32 h, 32 h + 32).
 *
 * Numerics: the products accumulate in float32 in another order than MKL's (a few 1e-7 relative); exp is a
 * degree-7 polynomial after the usual ln 2 range reduction (relative error below 1e-7, exp(-inf) = 0).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#define D 32          /* head dimension (every Swin of BiRefNet) */
#define N 144         /* tokens per window (12 x 12) */
#define ROW_PAD 24    /* query rows computed in blocks of 6 (scores) and 8 (outputs) */

typedef struct {
    const float *qkv;
    int64_t heads;
    const int64_t *rows;
    int64_t nq;
    const float *mask;
    int64_t mask_window_stride;
    float *out;
    const int64_t *out_rows;
    int64_t out_stride;
    float scale;
} job_t;

typedef struct {
    float q[N * D];   /* scaled queries, row-major */
    float kt[D * N];  /* keys transposed */
    float s[N * N];   /* scores, then unnormalised probabilities */
    float inv[N];     /* 1 / row sums */
    const float *mask_row[N];
} scratch_t;

/* exp(x) for x <= 0 (and -inf -> 0). */
static inline __m512 exp_nonpositive(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x); /* exp(-104) underflows to 0; a NaN x stays NaN */
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x); /* ln 2, high part */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r); /* ln 2, low part */
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n); /* p * 2^n */
}

/* Scores of 6 query rows x 48 key columns: q k^T + mask, 18 accumulators in registers. */
static inline void scores_6x48(const float *q, const float *kt, const float *const *mask, float *s) {
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
    __m512 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
    __m512 a40 = a00, a41 = a00, a42 = a00, a50 = a00, a51 = a00, a52 = a00;
#pragma GCC unroll 32
    for (int d = 0; d < D; d++) {
        __m512 b0 = _mm512_load_ps(kt + d * N), b1 = _mm512_load_ps(kt + d * N + 16);
        __m512 b2 = _mm512_load_ps(kt + d * N + 32), x;
#define ROW(r)                                 \
    x = _mm512_set1_ps(q[(r) * D + d]);        \
    a##r##0 = _mm512_fmadd_ps(x, b0, a##r##0); \
    a##r##1 = _mm512_fmadd_ps(x, b1, a##r##1); \
    a##r##2 = _mm512_fmadd_ps(x, b2, a##r##2);
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)
#undef ROW
    }
#define STORE(r)                                                                               \
    _mm512_store_ps(s + (r) * N, _mm512_add_ps(a##r##0, _mm512_loadu_ps(mask[r])));             \
    _mm512_store_ps(s + (r) * N + 16, _mm512_add_ps(a##r##1, _mm512_loadu_ps(mask[r] + 16)));   \
    _mm512_store_ps(s + (r) * N + 32, _mm512_add_ps(a##r##2, _mm512_loadu_ps(mask[r] + 32)));
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5)
#undef STORE
}

/* Outputs of 8 query rows: p v over the 144 keys, 16 accumulators in registers. */
static inline void values_8x32(const float *p, const float *v, int64_t ld, __m512 *acc) {
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
    __m512 a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
    __m512 a60 = a00, a61 = a00, a70 = a00, a71 = a00;
#pragma GCC unroll 4
    for (int c = 0; c < N; c++) {
        __m512 v0 = _mm512_loadu_ps(v + c * ld), v1 = _mm512_loadu_ps(v + c * ld + 16), x;
#define ROW(r)                                 \
    x = _mm512_set1_ps(p[(r) * N + c]);        \
    a##r##0 = _mm512_fmadd_ps(x, v0, a##r##0); \
    a##r##1 = _mm512_fmadd_ps(x, v1, a##r##1);
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6) ROW(7)
#undef ROW
    }
    acc[0] = a00, acc[1] = a01, acc[2] = a10, acc[3] = a11, acc[4] = a20, acc[5] = a21;
    acc[6] = a30, acc[7] = a31, acc[8] = a40, acc[9] = a41, acc[10] = a50, acc[11] = a51;
    acc[12] = a60, acc[13] = a61, acc[14] = a70, acc[15] = a71;
}

/* One head of one window. */
static void attend(const job_t *job, int64_t w, int64_t h, scratch_t *t) {
    const int64_t ld = 3 * job->heads * D, nq = job->nq;
    const int64_t rows = (nq + ROW_PAD - 1) / ROW_PAD * ROW_PAD; /* padded with copies of the first query */
    const float *q_base = job->qkv + w * N * ld + h * D;
    const float *k_base = q_base + job->heads * D, *v_base = q_base + 2 * job->heads * D;
    const float *mask = job->mask + w * job->mask_window_stride + h * N * N;
    const __m512 scale = _mm512_set1_ps(job->scale);

    for (int64_t i = 0; i < rows; i++) {
        int64_t slot = i < nq ? (job->rows ? job->rows[i] : i) : (job->rows ? job->rows[0] : 0);
        const float *q = q_base + slot * ld;
        _mm512_store_ps(t->q + i * D, _mm512_mul_ps(_mm512_loadu_ps(q), scale)); /* as q * d^-0.5 */
        _mm512_store_ps(t->q + i * D + 16, _mm512_mul_ps(_mm512_loadu_ps(q + 16), scale));
        t->mask_row[i] = mask + slot * N;
    }
    /* k^T: the strided key rows copied into a block with vector loads (scores' space, unused yet), then
     * transposed within the L1 cache (reading the strided rows element by element cost 5x more). */
    for (int c = 0; c < N; c++) {
        _mm512_store_ps(t->s + c * D, _mm512_loadu_ps(k_base + c * ld));
        _mm512_store_ps(t->s + c * D + 16, _mm512_loadu_ps(k_base + c * ld + 16));
    }
    for (int d = 0; d < D; d++)
        for (int c = 0; c < N; c++) t->kt[d * N + c] = t->s[c * D + d];

    for (int64_t i0 = 0; i0 < rows; i0 += 6) {
        for (int c0 = 0; c0 < N; c0 += 48) {
            const float *m[6];
            for (int r = 0; r < 6; r++) m[r] = t->mask_row[i0 + r] + c0;
            scores_6x48(t->q + i0 * D, t->kt + c0, m, t->s + i0 * N + c0);
        }
    }
    for (int64_t i = 0; i < rows; i++) { /* softmax numerators and 1 / denominators */
        float *s = t->s + i * N;
        __m512 mx = _mm512_load_ps(s);
        for (int c = 16; c < N; c += 16) mx = _mm512_max_ps(mx, _mm512_load_ps(s + c));
        const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
        __m512 sum = _mm512_setzero_ps();
        for (int c = 0; c < N; c += 16) {
            __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_load_ps(s + c), m));
            _mm512_store_ps(s + c, e);
            sum = _mm512_add_ps(sum, e);
        }
        t->inv[i] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    __m512 acc[16];
    for (int64_t i0 = 0; i0 < rows; i0 += 8) {
        values_8x32(t->s + i0 * N, v_base, ld, acc);
        for (int r = 0; r < 8 && i0 + r < nq; r++) {
            float *o = job->out + job->out_rows[w * nq + i0 + r] * job->out_stride + h * D;
            const __m512 inv = _mm512_set1_ps(t->inv[i0 + r]);
            _mm512_storeu_ps(o, _mm512_mul_ps(acc[2 * r], inv));
            _mm512_storeu_ps(o + 16, _mm512_mul_ps(acc[2 * r + 1], inv));
        }
    }
}

/* Returns 0 on success (out written), 1 for unsupported sizes, 3 for a query slot outside [0, 144) or an
 * output row outside [0, out_limit) (nothing written then), 2 when scratch memory could not be allocated. */
int birefnet_window_attention_f32(const float *qkv, int64_t windows, int64_t tokens, int64_t heads,
                                  const int64_t *rows, int64_t nq, const float *mask,
                                  int64_t mask_window_stride, float *out, const int64_t *out_rows,
                                  int64_t out_limit, int64_t out_stride, float scale, int threads) {
    if (tokens != N || nq < 1 || nq > N || windows < 0 || heads < 1) return 1;
    for (int64_t i = 0; rows && i < nq; i++)
        if (rows[i] < 0 || rows[i] >= N) return 3;
    for (int64_t i = 0; i < windows * nq; i++)
        if (out_rows[i] < 0 || out_rows[i] >= out_limit) return 3;
    const job_t job = {qkv, heads, rows, nq, mask, mask_window_stride, out, out_rows, out_stride, scale};
    const int64_t items = windows * heads;
    int failed = 0;
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        scratch_t *t = aligned_alloc(64, (sizeof(scratch_t) + 63) / 64 * 64);
        if (!t) failed = 1;
#pragma omp for schedule(static)
        for (int64_t k = 0; k < items; k++)
            if (t) attend(&job, k / heads, k % heads, t);
        free(t);
    }
    return failed ? 2 : 0;
}
