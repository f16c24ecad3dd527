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

/* a . b over n floats, eight at a time (the compiler does not reorder a float sum itself) */
static float dot(const float *a, const float *b, long n) {
    __m256 acc = _mm256_setzero_ps();
    long i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = hsum(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
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

/* Y = X W^T (+ b) for a few rows of X (2 to 32: a decoding step of that many requests): X is
 * (rows, k) and Y (rows, n), row-major. Three rows of W against four rows of X at a time (twelve
 * sums in registers), every four rows of X in turn while those three rows of W are in the L1
 * cache, so W is read from memory once; the next three rows of W are prefetched meanwhile,
 * which overlaps reading them with the arithmetic (without it a step at 8 rows took about the
 * sum of the two; a prefetch past the end of W is harmless: it never faults). With `add`, the
 * products are added to Y. */
#define WROWS 3
#define XROWS 4

static inline __attribute__((always_inline)) void tile(const float *w, const float *x, const float *bias, float *y,
                                                       long k, long n, const int a_rows, const int x_rows, int add) {
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
        if (bias) s += bias[a];
        y[b * n + a] = add ? y[b * n + a] + s : s;
    }
}

/* a_rows rows of W against every row of X, four at a time */
static inline __attribute__((always_inline)) void tiles(const float *w, const float *x, const float *bias, float *y,
                                                        long rows, long k, long n, const int a_rows, int add) {
    long b = 0;
    for (; b + XROWS <= rows; b += XROWS) tile(w, x + b * k, bias, y + b * n, k, n, a_rows, XROWS, add);
    switch (rows - b) {
        case 3: tile(w, x + b * k, bias, y + b * n, k, n, a_rows, 3, add); break;
        case 2: tile(w, x + b * k, bias, y + b * n, k, n, a_rows, 2, add); break;
        case 1: tile(w, x + b * k, bias, y + b * n, k, n, a_rows, 1, add); break;
    }
}

/* the rows r0.. r0 + 2 of W (fewer at the end) against every row of X */
static void block(const float *w, const float *x, const float *bias, float *y, long rows, long n, long k, long r0, int add) {
    long a_rows = n - r0 < WROWS ? n - r0 : WROWS;
    const float *b = bias ? bias + r0 : 0;
    if (a_rows == 3) tiles(w + r0 * k, x, b, y + r0, rows, k, n, 3, add);
    else if (a_rows == 2) tiles(w + r0 * k, x, b, y + r0, rows, k, n, 2, add);
    else tiles(w + r0 * k, x, b, y + r0, rows, k, n, 1, add);
}

/* Y (+)= X W^T (+ b), this thread's share of it (inside a parallel region) */
static void product(const float *w, const float *x, const float *b, float *y, long rows, long n, long k, int add) {
    if (rows > 1) {
        #pragma omp for schedule(static)
        for (long r0 = 0; r0 < n; r0 += WROWS) block(w, x, b, y, rows, n, k, r0, add);
        return;
    }
    long blocks = (n + ROWS - 1) / ROWS;
    #pragma omp for schedule(static)
    for (long blk = 0; blk < blocks; blk++) {
        long r0 = blk * ROWS;
        float out[ROWS];
        if (r0 + ROWS <= n) rows8(w + r0 * k, x, out, k);
        else for (long r = r0; r < n; r++) out[r - r0] = dot(w + r * k, x, k);
        for (long r = r0; r < n && r < r0 + ROWS; r++) {
            float v = out[r - r0] + (b ? b[r] : 0.0f);
            y[r] = add ? y[r] + v : v;
        }
    }
}

/* the products called from Python: one row (y n floats), and 2 to 32 rows (Y rows x n) */
void pmcllama_gemv(const float *w, const float *x, const float *b, float *y, long n, long k, int threads) {
    #pragma omp parallel num_threads(threads)
    product(w, x, b, y, 1, n, k, 0);
}

void pmcllama_gemm(const float *w, const float *x, const float *bias, float *y, long rows, long n, long k, int threads) {
    #pragma omp parallel num_threads(threads)
    product(w, x, bias, y, rows, n, k, 0);
}

/* One decoding step of a LLaMA-architecture model for a few rows (running requests, one new
 * token each), every layer in one call: pmcllama/serve/decoder.py calls it for a step of 1 to
 * 32 rows, so that the small operations between the products (the norms, the rotary embedding,
 * the cache write, the attention of one query per row, the residual additions, SiLU) cost no
 * Python and no PyTorch dispatch. Everything runs in one OpenMP parallel region; the products
 * split the weight's rows, the attention the (row, head) pairs, between the threads.
 *
 * h (rows, hidden) is the tokens' embeddings on entry and the last layer's output on return.
 * Each layer's cache holds `n` filled columns per row (row r, kv head g, column c at
 * kc[l] + r * row_stride[l] + g * head_stride[l] + c * head_dim); this step writes column n
 * (capacity for it is the caller's). `mask` (rows, n + 1 longs) is 0 where a column only pads.
 * cos and sin_signed (rows, head_dim) are the rotary table's rows for each row's position
 * (sin_signed is -sin in the first half: the rotation is x * cos + roll(x, half) * sin_signed). */
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

static void rms_norm(const float *x, const float *w, float eps, float *y, long n) {
    float s = dot(x, x, n);
    float r = 1.0f / sqrtf(s / (float)n + eps);
    for (long i = 0; i < n; i++) y[i] = w[i] * (x[i] * r);
}

static void rotate(float *x, const float *cos, const float *sin_signed, long d) {
    float t[d];
    long half = d / 2;
    for (long i = 0; i < d; i++) t[i] = x[i] * cos[i] + x[(i + half) % d] * sin_signed[i];
    for (long i = 0; i < d; i++) x[i] = t[i];
}

/* softmax(scale * q K^T) V over the real columns of one row's cache for one head */
static void attend(const float *q, const float *kb, const float *vb, const long *mask, long cols, long d, float scale,
                   float *s, float *out) {
    float top = -INFINITY, sum = 0.0f;
    for (long c = 0; c < cols; c++) {
        if (!mask[c]) continue;
        s[c] = dot(q, kb + c * d, d) * scale;
        if (s[c] > top) top = s[c];
    }
    for (long j = 0; j < d; j++) out[j] = 0.0f;
    if (top == -INFINITY) return;  /* no real column: zeros, as PyTorch's attention gives */
    for (long c = 0; c < cols; c++) if (mask[c]) { s[c] = expf(s[c] - top); sum += s[c]; }
    for (long c = 0; c < cols; c++) {
        if (!mask[c]) continue;
        float p = s[c] / sum;
        for (long j = 0; j < d; j++) out[j] += p * vb[c * d + j];
    }
}

/* Returns 0, or -1 when its scratch memory could not be had (nothing is changed then). */
int pmcllama_step(const pmcllama_layer *layers, int n_layers, float *const *kc, float *const *vc,
                   const long *head_stride, const long *row_stride, float *h, const long *mask, long rows, long n,
                   const float *cos, const float *sin_signed, long hidden, long heads, long kv_heads, long d, long inter,
                   float scale, int threads) {
    long q_dim = heads * d, per = heads + kv_heads, qkv_dim = (per + kv_heads) * d, cols = n + 1, group = heads / kv_heads;
    float *buf = malloc(sizeof(float) * rows * (hidden + qkv_dim + q_dim + 3 * inter + heads * cols));
    if (!buf) return -1;
    float *xn = buf, *qkv = xn + rows * hidden, *att = qkv + rows * qkv_dim, *gu = att + rows * q_dim,
          *act = gu + rows * 2 * inter, *scores = act + rows * inter;
    #pragma omp parallel num_threads(threads)
    for (int l = 0; l < n_layers; l++) {
        const pmcllama_layer *L = layers + l;
        #pragma omp for schedule(static)
        for (long r = 0; r < rows; r++) rms_norm(h + r * hidden, L->in_norm, L->in_eps, xn + r * hidden, hidden);
        product(L->qkv, xn, L->qkv_b, qkv, rows, qkv_dim, hidden, 0);
        #pragma omp for schedule(static)
        for (long i = 0; i < rows * per; i++) {  /* rotary on each query and key head; the cache write */
            long r = i / per, j = i % per;
            float *y = qkv + r * qkv_dim;
            rotate(y + j * d, cos + r * d, sin_signed + r * d, d);
            if (j >= heads) {
                long at = r * row_stride[l] + (j - heads) * head_stride[l] + n * d;
                for (long e = 0; e < d; e++) { kc[l][at + e] = y[j * d + e]; vc[l][at + e] = y[(kv_heads + j) * d + e]; }
            }
        }
        #pragma omp for schedule(static)
        for (long i = 0; i < rows * heads; i++) {  /* each row's query head against its cache */
            long r = i / heads, hd = i % heads, base = r * row_stride[l] + (hd / group) * head_stride[l];
            attend(qkv + r * qkv_dim + hd * d, kc[l] + base, vc[l] + base, mask + r * cols, cols, d, scale,
                   scores + i * cols, att + r * q_dim + hd * d);
        }
        product(L->o, att, L->o_b, h, rows, hidden, q_dim, 1);
        #pragma omp for schedule(static)
        for (long r = 0; r < rows; r++) rms_norm(h + r * hidden, L->post_norm, L->post_eps, xn + r * hidden, hidden);
        product(L->gate_up, xn, L->gate_up_b, gu, rows, 2 * inter, hidden, 0);
        #pragma omp for schedule(static)
        for (long i = 0; i < rows * inter; i++) {
            const float *g = gu + (i / inter) * 2 * inter + i % inter;
            act[i] = g[0] / (1.0f + expf(-g[0])) * g[inter];
        }
        product(L->down, act, L->down_b, h, rows, hidden, inter, 1);
    }
    free(buf);
    return 0;
}
