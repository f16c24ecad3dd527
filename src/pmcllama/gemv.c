/* y = W x (+ b) for one row x: the product a one-row decoding step makes with every weight
 * matrix. W is (n, k) row-major fp32, as nn.Linear stores it; x has k floats, y and b n.
 * Built and loaded by pmcllama/gemv.py (AVX2 + FMA, OpenMP: the OpenMP runtime PyTorch has
 * already loaded, so the two share one team of threads).
 *
 * Eight rows of W at a time, each against the same eight floats of x: eight independent sums
 * hide the FMA latency and eight read streams keep the memory busy; the rows left over (n not
 * a multiple of 8) go one by one, and the last k % 8 floats of each row are added in scalar. */
#include <immintrin.h>

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define ROWS 8

static void rows8(const float *w, const float *x, float *y, long k) {
    __m256 acc[ROWS];
    for (int j = 0; j < ROWS; j++) acc[j] = _mm256_setzero_ps();
    long i = 0;
    for (; i + 8 <= k; i += 8) {
        __m256 xv = _mm256_loadu_ps(x + i);
        for (int j = 0; j < ROWS; j++) acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(w + j * k + i), xv, acc[j]);
    }
    for (int j = 0; j < ROWS; j++) {
        float s = hsum(acc[j]);
        for (long t = i; t < k; t++) s += w[j * k + t] * x[t];
        y[j] = s;
    }
}

static float row1(const float *w, const float *x, long k) {
    __m256 acc = _mm256_setzero_ps();
    long i = 0;
    for (; i + 8 <= k; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), acc);
    float s = hsum(acc);
    for (; i < k; i++) s += w[i] * x[i];
    return s;
}

void pmcllama_gemv(const float *w, const float *x, const float *b, float *y, long n, long k, int threads) {
    long blocks = n / ROWS;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long blk = 0; blk <= blocks; blk++) {
        long r0 = blk * ROWS;
        if (blk < blocks) {
            rows8(w + r0 * k, x, y + r0, k);
        } else {
            for (long r = r0; r < n; r++) y[r] = row1(w + r * k, x, k);
        }
        long r1 = blk < blocks ? r0 + ROWS : n;
        if (b) for (long r = r0; r < r1; r++) y[r] += b[r];
    }
}
