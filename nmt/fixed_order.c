/* y[n, out] = x[n, in] w[out, in]^T + b, with every element summed in one order that depends on
 * `in` alone: never on n, on the element's place in the batch or on the number of threads.
 *
 * The order for y[j, i]: 8 lanes, lane l summing x[j, k] * w[i, k] for k = l, l + 8, ... below
 * in8 = in - in % 8 by fused multiply-adds in increasing k; the lanes added in a fixed tree
 * ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)); then the last in % 8 products in order,
 * fused; then the bias. A fused multiply-add is rounded once, so the vector and scalar forms
 * agree, and the result is the same on every CPU with AVX2 and FMA.
 *
 * Speed: tiles of 4 weight rows x 3 sentences (8 rows x 1 sentence for a lone one) keep 12
 * accumulators in registers; the threads split the weight's rows; a panel of 64 weight rows
 * and 48 sentences is reused from the cache. Built by nmt/invariant.py with the C compiler.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define PANEL 64
#define CHUNK 48

static inline float finish(__m256 acc, const float *x, const float *w, int64_t in8, int64_t in,
                           float bias) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    float total = _mm_cvtss_f32(s);
    for (int64_t k = in8; k < in; k++) total = fmaf(x[k], w[k], total);
    return total + bias;
}

/* y[c, r] for r < R weight rows and c < C sentences; R and C are constants after inlining. */
static inline __attribute__((always_inline)) void tile(
        const float *x, int64_t ldx, const float *w, int64_t in, const float *b, float *y,
        int64_t ldy, const int R, const int C) {
    __m256 acc[8][3];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    const int64_t in8 = in & ~(int64_t)7;
    for (int64_t k = 0; k < in8; k += 8) {
        __m256 xv[3];
        for (int c = 0; c < C; c++) xv[c] = _mm256_loadu_ps(x + c * ldx + k);
        for (int r = 0; r < R; r++) {
            const __m256 wv = _mm256_loadu_ps(w + r * in + k);
            for (int c = 0; c < C; c++) acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++)
            y[c * ldy + r] = finish(acc[r][c], x + c * ldx, w + r * in, in8, in, b ? b[r] : 0.0f);
}

/* Weight rows [r0, r1) for sentences [j, j + C). */
static inline __attribute__((always_inline)) void rows(
        const float *x, int64_t in, const float *w, const float *b, float *y, int64_t out,
        int64_t r0, int64_t r1, int64_t j, const int R, const int C) {
    int64_t r = r0;
    for (; r + R <= r1; r += R)
        tile(x + j * in, in, w + r * in, in, b ? b + r : 0, y + j * out + r, out, R, C);
    for (; r < r1; r++)
        tile(x + j * in, in, w + r * in, in, b ? b + r : 0, y + j * out + r, out, 1, C);
}

void nmt_fixed_linear(const float *x, int64_t n, int64_t in, const float *w, int64_t out,
                      const float *b, float *y, int threads) {
    const int64_t panels = (out + PANEL - 1) / PANEL;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t p = 0; p < panels; p++) {
        const int64_t r0 = p * PANEL, r1 = r0 + PANEL < out ? r0 + PANEL : out;
        for (int64_t j0 = 0; j0 < n; j0 += CHUNK) {
            const int64_t j1 = j0 + CHUNK < n ? j0 + CHUNK : n;
            for (int64_t q = r0; q < r1; q += 8) {  /* 8 weight rows stay in L1 across the chunk */
                const int64_t q1 = q + 8 < r1 ? q + 8 : r1;
                int64_t j = j0;
                for (; j + 3 <= j1; j += 3) rows(x, in, w, b, y, out, q, q1, j, 4, 3);
                if (j1 - j == 2) rows(x, in, w, b, y, out, q, q1, j, 4, 2);
                else if (j1 - j == 1) rows(x, in, w, b, y, out, q, q1, j, 8, 1);
            }
        }
    }
}
