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

/* Y = X W^T (+ b) for a few rows of X (2 to 16: a decoding step of that many requests): X is
 * (rows, k) and Y (rows, n), row-major. Three rows of W against four rows of X at a time (twelve
 * sums in registers), every four rows of X in turn while those three rows of W are in the L1
 * cache, so W is read from memory once; the next three rows of W are prefetched meanwhile,
 * which overlaps reading them with the arithmetic (without it a step at 8 rows took about the
 * sum of the two). */
#define WROWS 3
#define XROWS 4

static inline __attribute__((always_inline)) void tile(const float *w, const float *x, float *y, long k, long n,
                                                       const int a_rows, const int x_rows) {
    __m256 acc[WROWS][XROWS];
    for (int a = 0; a < a_rows; a++) for (int b = 0; b < x_rows; b++) acc[a][b] = _mm256_setzero_ps();
    long i = 0;
    for (; i + 8 <= k; i += 8) {
        if (!(i & 15)) for (int a = 0; a < a_rows; a++) _mm_prefetch((const char *)(w + (WROWS + a) * k + i), _MM_HINT_T0);
        __m256 wv[WROWS];
        for (int a = 0; a < a_rows; a++) wv[a] = _mm256_loadu_ps(w + a * k + i);
        for (int b = 0; b < x_rows; b++) {
            __m256 xv = _mm256_loadu_ps(x + b * k + i);
            for (int a = 0; a < a_rows; a++) acc[a][b] = _mm256_fmadd_ps(wv[a], xv, acc[a][b]);
        }
    }
    for (int a = 0; a < a_rows; a++) for (int b = 0; b < x_rows; b++) {
        float s = hsum(acc[a][b]);
        for (long t = i; t < k; t++) s += w[a * k + t] * x[b * k + t];
        y[b * n + a] = s;
    }
}

/* a_rows rows of W against every row of X, four at a time */
static inline __attribute__((always_inline)) void tiles(const float *w, const float *x, float *y, long rows, long k,
                                                        long n, const int a_rows) {
    long b = 0;
    for (; b + XROWS <= rows; b += XROWS) tile(w, x + b * k, y + b * n, k, n, a_rows, XROWS);
    switch (rows - b) {
        case 3: tile(w, x + b * k, y + b * n, k, n, a_rows, 3); break;
        case 2: tile(w, x + b * k, y + b * n, k, n, a_rows, 2); break;
        case 1: tile(w, x + b * k, y + b * n, k, n, a_rows, 1); break;
    }
}

void pmcllama_gemm(const float *w, const float *x, const float *bias, float *y, long rows, long n, long k, int threads) {
    long blocks = (n + WROWS - 1) / WROWS;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long blk = 0; blk < blocks; blk++) {
        long r0 = blk * WROWS, a_rows = n - r0 < WROWS ? n - r0 : WROWS;
        if (a_rows == 3) tiles(w + r0 * k, x, y + r0, rows, k, n, 3);
        else if (a_rows == 2) tiles(w + r0 * k, x, y + r0, rows, k, n, 2);
        else tiles(w + r0 * k, x, y + r0, rows, k, n, 1);
        if (bias) for (long r = 0; r < rows; r++) for (long c = r0; c < r0 + a_rows; c++) y[r * n + c] += bias[c];
    }
}

/* One decoding step of a LLaMA-architecture model for one row (one running request), every
 * layer in one call: pmcllama/serve/decoder.py calls it where a step decodes one token of one
 * row, so that the small operations between the products (the norms, the rotary embedding,
 * the cache write, the attention of one query, the residual additions, SiLU) cost no Python
 * and no PyTorch dispatch. Everything runs in one OpenMP parallel region; the products split
 * their rows, the attention its heads, between the threads.
 *
 * h (hidden floats) is the token's embedding on entry and the last layer's output on return.
 * Each layer's cache holds `n` filled columns; this step writes column n (capacity for it is
 * the caller's). `mask` (n + 1 longs) is 0 where a column only pads. cos and sin_signed are the
 * rotary table's row for this position (head_dim floats each; sin_signed is -sin in the first
 * half, so the rotation is x * cos + roll(x, half) * sin_signed). */
#include <math.h>
#include <stdlib.h>

typedef struct {
    const float *in_norm, *post_norm;  /* hidden */
    const float *qkv, *qkv_b;          /* (heads + 2 kv_heads) * head_dim rows of hidden */
    const float *o, *o_b;              /* hidden rows of heads * head_dim */
    const float *gate_up, *gate_up_b;  /* 2 * inter rows of hidden: the gate's, then up's */
    const float *down, *down_b;        /* hidden rows of inter */
    float in_eps, post_eps;
} pmcllama_layer;

/* y[r] (+)= W[r] . x (+ b[r]) for the rows of this thread's share (inside a parallel region) */
static void product(const float *w, const float *x, const float *b, float *y, long n, long k, int add) {
    long blocks = (n + ROWS - 1) / ROWS;
    #pragma omp for schedule(static)
    for (long blk = 0; blk < blocks; blk++) {
        long r0 = blk * ROWS;
        float out[ROWS];
        if (r0 + ROWS <= n) rows8(w + r0 * k, x, out, k);
        else for (long r = r0; r < n; r++) out[r - r0] = row1(w + r * k, x, k);
        for (long r = r0; r < n && r < r0 + ROWS; r++) {
            float v = out[r - r0] + (b ? b[r] : 0.0f);
            y[r] = add ? y[r] + v : v;
        }
    }
}

static void rms_norm(const float *x, const float *w, float eps, float *y, long n) {
    float s = 0.0f;
    for (long i = 0; i < n; i++) s += x[i] * x[i];
    float r = 1.0f / sqrtf(s / (float)n + eps);
    for (long i = 0; i < n; i++) y[i] = w[i] * (x[i] * r);
}

static void rotate(float *x, const float *cos, const float *sin_signed, long d) {
    float t[d];
    long half = d / 2;
    for (long i = 0; i < d; i++) t[i] = x[i] * cos[i] + x[(i + half) % d] * sin_signed[i];
    for (long i = 0; i < d; i++) x[i] = t[i];
}

void pmcllama_step1(const pmcllama_layer *layers, int n_layers, float *const *kc, float *const *vc,
                    const long *head_stride, float *h, const long *mask, long n, const float *cos,
                    const float *sin_signed, long hidden, long heads, long kv_heads, long d, long inter,
                    float scale, int threads) {
    long q_dim = heads * d, qkv_dim = (heads + 2 * kv_heads) * d, cols = n + 1, group = heads / kv_heads;
    float *buf = malloc(sizeof(float) * (hidden + qkv_dim + q_dim + 3 * inter + heads * cols));
    if (!buf) return;
    float *xn = buf, *qkv = xn + hidden, *att = qkv + qkv_dim, *gu = att + q_dim, *act = gu + 2 * inter,
          *scores = act + inter;
    #pragma omp parallel num_threads(threads)
    for (int l = 0; l < n_layers; l++) {
        const pmcllama_layer *L = layers + l;
        #pragma omp single
        rms_norm(h, L->in_norm, L->in_eps, xn, hidden);
        product(L->qkv, xn, L->qkv_b, qkv, qkv_dim, hidden, 0);
        #pragma omp for schedule(static)
        for (long i = 0; i < heads + kv_heads; i++) {  /* rotary on each query and key head; the cache write */
            rotate(qkv + i * d, cos, sin_signed, d);
            if (i >= heads) {
                long g = i - heads;
                float *k = kc[l] + g * head_stride[l] + n * d, *v = vc[l] + g * head_stride[l] + n * d;
                for (long j = 0; j < d; j++) { k[j] = qkv[i * d + j]; v[j] = qkv[(heads + kv_heads + g) * d + j]; }
            }
        }
        #pragma omp for schedule(static)
        for (long hd = 0; hd < heads; hd++) {  /* one query against every real column */
            const float *q = qkv + hd * d, *kb = kc[l] + (hd / group) * head_stride[l], *vb = vc[l] + (hd / group) * head_stride[l];
            float *s = scores + hd * cols, *out = att + hd * d, top = -INFINITY, sum = 0.0f;
            for (long c = 0; c < cols; c++) {
                if (!mask[c]) continue;
                float dot = 0.0f;
                for (long j = 0; j < d; j++) dot += q[j] * kb[c * d + j];
                s[c] = dot * scale;
                if (s[c] > top) top = s[c];
            }
            for (long c = 0; c < cols; c++) if (mask[c]) { s[c] = expf(s[c] - top); sum += s[c]; }
            for (long j = 0; j < d; j++) out[j] = 0.0f;
            for (long c = 0; c < cols; c++) {
                if (!mask[c]) continue;
                float p = s[c] / sum;
                for (long j = 0; j < d; j++) out[j] += p * vb[c * d + j];
            }
        }
        product(L->o, att, L->o_b, h, hidden, q_dim, 1);
        #pragma omp single
        rms_norm(h, L->post_norm, L->post_eps, xn, hidden);
        product(L->gate_up, xn, L->gate_up_b, gu, 2 * inter, hidden, 0);
        #pragma omp for schedule(static)
        for (long i = 0; i < inter; i++) act[i] = gu[i] / (1.0f + expf(-gu[i])) * gu[inter + i];
        product(L->down, act, L->down_b, h, hidden, inter, 1);
    }
    free(buf);
}
