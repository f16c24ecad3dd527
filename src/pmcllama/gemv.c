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

static inline float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
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

/* The attention of log-likelihood scoring's flattened rows (pmcllama/training/varlen.py's
 * segment tree, called through gemv.py's `tree_attention`): segment i is the rows
 * seg[4i]..seg[4i+1] of the row; each of its rows attends to the `np` prefix tokens (pk, pv: a
 * fixed few-shot prefix), then to the rows seg[4i+2]..seg[4i+3] (its question's prompt; none when
 * equal), then causally to its own segment. q is (tokens, heads, d), k and v (tokens, kv heads,
 * d), read through their token and head strides (the d floats of a head contiguous, d % 8 == 0);
 * out is (tokens, heads, d) contiguous. PyTorch's attention does the same with a gather of the
 * segments into a padded batch and its flash kernel, whose small blocks run far below the
 * products' rate here; this reads q, k and v where they lie, and each key and value it loads
 * serves three query vectors (heads of one group, or rows of one segment). The work is split
 * between the threads by (four rows of a segment, kv head). Each output is one thread's sums in
 * a fixed order: the thread count changes no bit. */

/* exp of eight floats (Cephes' polynomial on the range reduction x = n ln 2 + r): within 2 ulp
 * of expf over the range softmax gives it (x <= 0) */
#define EXP_MIN (-87.3f)
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f      /* ln 2 in two parts: n ln 2 subtracted without rounding n ln 2 */
#define LN2_LO (-2.12194440e-4f)
static const float EXP_POLY[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f,
                                  1.6666665459e-1f, 5.0000001201e-1f};  /* exp(r) = 1 + r + r^2 p(r) */

static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(EXP_MIN));
    __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(LOG2E), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), x);
    __m256 y = _mm256_set1_ps(EXP_POLY[0]);
    for (int i = 1; i < 6; i++) y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(EXP_POLY[i]));
    y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* s[0..n) <- exp(s - max s); returns their sum */
static float exp_shifted(float *s, long n) {
    float top = -INFINITY, sum = 0.0f;
    long j = 0;
    if (n >= 32) {  /* four running maxima of eight: a scalar one waits on itself at every step */
        __m256 m[4];
        for (int i = 0; i < 4; i++) m[i] = _mm256_loadu_ps(s + 8 * i);
        for (j = 32; j + 32 <= n; j += 32)
            for (int i = 0; i < 4; i++) m[i] = _mm256_max_ps(m[i], _mm256_loadu_ps(s + j + 8 * i));
        top = hmax(_mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3])));
    }
    for (; j < n; j++) top = s[j] > top ? s[j] : top;
    __m256 t = _mm256_set1_ps(top), acc = _mm256_setzero_ps();
    j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), t));
        _mm256_storeu_ps(s + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    sum = hsum(acc);
    for (; j < n; j++) { s[j] = expf(s[j] - top); sum += s[j]; }
    return sum;
}

#define QV 3     /* query vectors that share each key and value load */
#define QROWS 4  /* rows of a segment per piece of work */

/* the four sums of a0..a3 */
static inline __m128 sums4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

/* s[h][off + j] = scale * q[h] . key j, for nq query vectors and the n keys at k (token stride ks):
 * four keys against the nq vectors at a time, in registers */
static inline __attribute__((always_inline)) void scores(const float *const *q, const float *k, long ks, long n, long d,
                                                         float scale, float *const *s, long off, const int nq) {
    long j = 0;
    for (; j + 4 <= n; j += 4) {
        __m256 acc[QV][4];
        for (int h = 0; h < nq; h++) for (int t = 0; t < 4; t++) acc[h][t] = _mm256_setzero_ps();
        for (long c = 0; c < d; c += 8) {
            __m256 qv[QV];
            for (int h = 0; h < nq; h++) qv[h] = _mm256_loadu_ps(q[h] + c);
            for (int t = 0; t < 4; t++) {
                __m256 kv = _mm256_loadu_ps(k + (j + t) * ks + c);
                for (int h = 0; h < nq; h++) acc[h][t] = _mm256_fmadd_ps(qv[h], kv, acc[h][t]);
            }
        }
        for (int h = 0; h < nq; h++)
            _mm_storeu_ps(s[h] + off + j, _mm_mul_ps(sums4(acc[h][0], acc[h][1], acc[h][2], acc[h][3]), _mm_set1_ps(scale)));
    }
    for (; j < n; j++) for (int h = 0; h < nq; h++) s[h][off + j] = dot(q[h], k + j * ks, d) * scale;
}

/* out[h] += sum_j p[h][off + j] * value j, for nq vectors and the n values at v (token stride vs):
 * 32 columns of the nq outputs at a time, in registers */
static inline __attribute__((always_inline)) void weigh(float *const *p, long off, const float *v, long vs, long n, long d,
                                                        float *const *out, const int nq) {
    for (long c0 = 0; c0 < d; c0 += 32) {
        __m256 acc[QV][4];
        if (d - c0 >= 32) {
            for (int h = 0; h < nq; h++) for (int c = 0; c < 4; c++) acc[h][c] = _mm256_loadu_ps(out[h] + c0 + 8 * c);
            for (long j = 0; j < n; j++) {
                __m256 pj[QV];
                for (int h = 0; h < nq; h++) pj[h] = _mm256_broadcast_ss(p[h] + off + j);
                for (int c = 0; c < 4; c++) {
                    __m256 vv = _mm256_loadu_ps(v + j * vs + c0 + 8 * c);
                    for (int h = 0; h < nq; h++) acc[h][c] = _mm256_fmadd_ps(pj[h], vv, acc[h][c]);
                }
            }
            for (int h = 0; h < nq; h++) for (int c = 0; c < 4; c++) _mm256_storeu_ps(out[h] + c0 + 8 * c, acc[h][c]);
        } else {  /* the last 8 to 24 columns */
            int nc = (int)((d - c0) / 8);
            for (int h = 0; h < nq; h++) for (int c = 0; c < nc; c++) acc[h][c] = _mm256_loadu_ps(out[h] + c0 + 8 * c);
            for (long j = 0; j < n; j++) for (int h = 0; h < nq; h++) {
                __m256 pj = _mm256_broadcast_ss(p[h] + off + j);
                for (int c = 0; c < nc; c++) acc[h][c] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + j * vs + c0 + 8 * c), acc[h][c]);
            }
            for (int h = 0; h < nq; h++) for (int c = 0; c < nc; c++) _mm256_storeu_ps(out[h] + c0 + 8 * c, acc[h][c]);
        }
    }
}

/* the keys and values a segment's rows see, in order: (k, v, their token strides, count); the
 * last range is the segment's own rows, of which each row sees those up to itself */
typedef struct { const float *k, *v; long ks, vs, n; } span;

/* the attention of nq query vectors q (the rows `own` of their segment, counted from 1) */
static inline __attribute__((always_inline)) void attend_spans(const float *const *q, float *const *out, const long *own,
                                                               const span *sp, int nsp, float *const *s, long d, float scale,
                                                               const int nq) {
    long before = 0, last = 0;
    for (int h = 0; h < nq; h++) last = own[h] > last ? own[h] : last;
    for (int i = 0; i < nsp; i++) {
        long n = i == nsp - 1 ? last : sp[i].n;
        scores(q, sp[i].k, sp[i].ks, n, d, scale, s, before, nq);
        before += n;
    }
    before -= last;  /* the tokens before the segment's own */
    float inv[QV];
    for (int h = 0; h < nq; h++) {
        long n = before + own[h];
        inv[h] = 1.0f / exp_shifted(s[h], n);
        for (long j = n; j < before + last; j++) s[h][j] = 0.0f;  /* the segment's later rows */
        for (long e = 0; e < d; e++) out[h][e] = 0.0f;
    }
    long at = 0;
    for (int i = 0; i < nsp; i++) {
        long n = i == nsp - 1 ? last : sp[i].n;
        weigh(s, at, sp[i].v, sp[i].vs, n, d, out, nq);
        at += n;
    }
    for (int h = 0; h < nq; h++) for (long e = 0; e < d; e++) out[h][e] *= inv[h];
}

/* The pieces of work of a tree attention call, (segment, first row) per QROWS rows of each
 * segment (NULL without memory); sets *count, *most (the most keys a row sees) and *ntok (the
 * tokens of the row the segments and contexts reach). */
static long *plan(const long *seg, long nseg, long np, long *count, long *most, long *ntok) {
    long pieces = 0;
    *most = 1, *ntok = 0;
    for (long i = 0; i < nseg; i++) {
        long n = np + seg[4 * i + 3] - seg[4 * i + 2] + seg[4 * i + 1] - seg[4 * i];
        *most = n > *most ? n : *most;
        *ntok = seg[4 * i + 1] > *ntok ? seg[4 * i + 1] : *ntok;
        *ntok = seg[4 * i + 3] > *ntok ? seg[4 * i + 3] : *ntok;
        pieces += (seg[4 * i + 1] - seg[4 * i] + QROWS - 1) / QROWS;
    }
    long *work = malloc(sizeof(long) * 2 * (pieces ? pieces : 1));
    if (work)
        for (long i = 0, w = 0; i < nseg; i++)
            for (long r = seg[4 * i]; r < seg[4 * i + 1]; r += QROWS, w++) { work[2 * w] = i; work[2 * w + 1] = r; }
    *count = pieces;
    return work;
}

/* where the queries are read and the outputs written */
typedef struct { const float *q; long qt, qh; float *out; long heads, group, d; } rows_of;

/* query vectors v0 .. v0 + nq of a piece (rows r0.. of the segment from row a, x kv head g's
 * group of heads): their query, output, scores (scratch, `most` floats each) and own keys */
static inline void vectors(const rows_of *x, long a, long r0, long g, long v0, int nq, float *scratch, long most,
                           const float **qv, float **ov, float **s, long *own) {
    for (int h = 0; h < nq; h++) {
        long r = r0 + (v0 + h) / x->group, hq = g * x->group + (v0 + h) % x->group;
        qv[h] = x->q + r * x->qt + hq * x->qh;
        ov[h] = x->out + (r * x->heads + hq) * x->d;
        s[h] = scratch + h * most;
        own[h] = r - a + 1;
    }
}

/* The same attention on AVX-512 (used where the CPU has it and the head dim is a multiple of 16):
 * each kv head's keys are transposed first, once per call, so that the scores of QW query vectors
 * against 64 keys are outer products in registers (a broadcast float of a query times the same
 * column of 16 keys), with no sum across a vector; the values are weighed 64 columns of the QW
 * outputs at a time. The split of the work and the order of each output's sums are fixed, as
 * above: the thread count changes no bit. */
#define WIDE __attribute__((target("avx512f,avx2,fma")))
#define INLINE inline __attribute__((always_inline))
#define QW 6  /* query vectors per pass over the keys */

static WIDE INLINE __mmask16 lanes(long n) {  /* the first min(n, 16) lanes */
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
}

static WIDE INLINE __m512 exp16(__m512 x) {  /* exp8 on 16 floats */
    x = _mm512_max_ps(x, _mm512_set1_ps(EXP_MIN));
    __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(LOG2E), _mm512_set1_ps(0.5f)),
                                    _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), x);
    __m512 y = _mm512_set1_ps(EXP_POLY[0]);
    for (int i = 1; i < 6; i++) y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(EXP_POLY[i]));
    y = _mm512_add_ps(_mm512_fmadd_ps(y, _mm512_mul_ps(x, x), x), _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

/* s[0..n) <- exp(s - max s); returns their sum */
static WIDE float exp_shifted16(float *s, long n) {
    __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0;  /* two running maxima: each waits on itself */
    long j = 0;
    for (; j + 32 <= n; j += 32) {
        m0 = _mm512_max_ps(m0, _mm512_loadu_ps(s + j));
        m1 = _mm512_max_ps(m1, _mm512_loadu_ps(s + j + 16));
    }
    for (; j < n; j += 16) m0 = _mm512_max_ps(m0, _mm512_mask_loadu_ps(m1, lanes(n - j), s + j));
    __m512 t = _mm512_set1_ps(_mm512_reduce_max_ps(_mm512_max_ps(m0, m1))), acc = _mm512_setzero_ps();
    for (j = 0; j < n; j += 16) {
        __mmask16 m = lanes(n - j);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), t));
        _mm512_mask_storeu_ps(s + j, m, e);
        acc = _mm512_mask_add_ps(acc, m, acc, e);
    }
    return _mm512_reduce_add_ps(acc);
}

/* s[h][off + j] = scale * q[h] . key j for nq query vectors and nb blocks of 16 keys, the
 * last block's lanes `m` only; key j's column c at kt[c * ts + j] */
static WIDE INLINE void key_blocks(const float *const *q, const float *kt, long ts, long d, __m512 scale,
                                   float *const *s, long off, __mmask16 m, const int nq, const int nb) {
    __m512 acc[QW][4];
    for (int h = 0; h < nq; h++) for (int b = 0; b < nb; b++) acc[h][b] = _mm512_setzero_ps();
    for (long c = 0; c < d; c++) {
        __m512 k[4];
        for (int b = 0; b < nb; b++) k[b] = _mm512_maskz_loadu_ps(b == nb - 1 ? m : 0xFFFF, kt + c * ts + 16 * b);
        for (int h = 0; h < nq; h++) {
            __m512 qc = _mm512_set1_ps(q[h][c]);
            for (int b = 0; b < nb; b++) acc[h][b] = _mm512_fmadd_ps(qc, k[b], acc[h][b]);
        }
    }
    for (int h = 0; h < nq; h++) for (int b = 0; b < nb; b++)
        _mm512_mask_storeu_ps(s[h] + off + 16 * b, b == nb - 1 ? m : 0xFFFF, _mm512_mul_ps(acc[h][b], scale));
}

/* the scores of nq query vectors against the n keys at kt (transposed, row stride ts), 64 at a time */
static WIDE INLINE void scores16(const float *const *q, const float *kt, long ts, long n, long d, float scale,
                                 float *const *s, long off, const int nq) {
    __m512 sc = _mm512_set1_ps(scale);
    long j = 0;
    for (; j + 64 <= n; j += 64) key_blocks(q, kt + j, ts, d, sc, s, off + j, 0xFFFF, nq, 4);
    __mmask16 m = lanes((n - j) % 16 ? (n - j) % 16 : 16);
    switch ((n - j + 15) / 16) {  /* the last 1 to 63 */
        case 4: key_blocks(q, kt + j, ts, d, sc, s, off + j, m, nq, 4); break;
        case 3: key_blocks(q, kt + j, ts, d, sc, s, off + j, m, nq, 3); break;
        case 2: key_blocks(q, kt + j, ts, d, sc, s, off + j, m, nq, 2); break;
        case 1: key_blocks(q, kt + j, ts, d, sc, s, off + j, m, nq, 1); break;
    }
}

/* out[h][c0 + ..] += sum_j p[h][off + j] * value j's columns c0 .. c0 + 16 nc, in registers */
static WIDE INLINE void value_cols(float *const *p, long off, const float *v, long vs, long n, float *const *out,
                                   long c0, const int nq, const int nc) {
    __m512 acc[QW][4];
    for (int h = 0; h < nq; h++) for (int c = 0; c < nc; c++) acc[h][c] = _mm512_loadu_ps(out[h] + c0 + 16 * c);
    for (long j = 0; j < n; j++) {
        __m512 vv[4];
        for (int c = 0; c < nc; c++) vv[c] = _mm512_loadu_ps(v + j * vs + c0 + 16 * c);
        for (int h = 0; h < nq; h++) {
            __m512 pj = _mm512_set1_ps(p[h][off + j]);
            for (int c = 0; c < nc; c++) acc[h][c] = _mm512_fmadd_ps(pj, vv[c], acc[h][c]);
        }
    }
    for (int h = 0; h < nq; h++) for (int c = 0; c < nc; c++) _mm512_storeu_ps(out[h] + c0 + 16 * c, acc[h][c]);
}

/* out[h] += sum_j p[h][off + j] * value j, for nq vectors and the n values at v (token stride vs),
 * 64 columns at a time (d a multiple of 16) */
static WIDE INLINE void weigh16(float *const *p, long off, const float *v, long vs, long n, long d,
                                float *const *out, const int nq) {
    for (long c0 = 0; c0 < d; c0 += 64) switch (d - c0 >= 64 ? 4 : (d - c0) / 16) {
        case 4: value_cols(p, off, v, vs, n, out, c0, nq, 4); break;
        case 3: value_cols(p, off, v, vs, n, out, c0, nq, 3); break;
        case 2: value_cols(p, off, v, vs, n, out, c0, nq, 2); break;
        default: value_cols(p, off, v, vs, n, out, c0, nq, 1);
    }
}

/* a span as attend_spans16 reads it: its keys transposed (column c at kt[c * ts]) */
typedef struct { const float *kt, *v; long ts, vs, n; } tspan;

static WIDE INLINE void attend_spans16(const float *const *q, float *const *out, const long *own, const tspan *sp,
                                      int nsp, float *const *s, long d, float scale, const int nq) {
    long before = 0, last = 0;
    for (int h = 0; h < nq; h++) last = own[h] > last ? own[h] : last;
    for (int i = 0; i < nsp; i++) {
        long n = i == nsp - 1 ? last : sp[i].n;
        scores16(q, sp[i].kt, sp[i].ts, n, d, scale, s, before, nq);
        before += n;
    }
    before -= last;
    float inv[QW];
    for (int h = 0; h < nq; h++) {
        long n = before + own[h];
        inv[h] = 1.0f / exp_shifted16(s[h], n);
        for (long j = n; j < before + last; j++) s[h][j] = 0.0f;
        for (long e = 0; e < d; e++) out[h][e] = 0.0f;
    }
    long at = 0;
    for (int i = 0; i < nsp; i++) {
        long n = i == nsp - 1 ? last : sp[i].n;
        weigh16(s, at, sp[i].v, sp[i].vs, n, d, out, nq);
        at += n;
    }
    for (int h = 0; h < nq; h++) {
        __m512 f = _mm512_set1_ps(inv[h]);
        for (long e = 0; e < d; e += 16) _mm512_storeu_ps(out[h] + e, _mm512_mul_ps(_mm512_loadu_ps(out[h] + e), f));
    }
}

/* to[(g * d + c) * n + t] = from[t * ts + g * hs + c]: each kv head's n keys transposed */
static WIDE void transpose_keys(const float *from, long ts, long hs, long n, long kv_heads, long d, float *to) {
    #pragma omp for collapse(2) schedule(static)
    for (long g = 0; g < kv_heads; g++) for (long t0 = 0; t0 < n; t0 += 16) {
        long t1 = t0 + 16 < n ? t0 + 16 : n;
        for (long c = 0; c < d; c++) for (long t = t0; t < t1; t++) to[(g * d + c) * n + t] = from[t * ts + g * hs + c];
    }
}

static WIDE int tree_attention16(const float *q, long qt, long qh, const float *k, long kt, long kh, const float *v,
                                 long vt, long vh, const float *pk, const float *pv, long pt, long ph, long np,
                                 const long *seg, long nseg, float *out, long heads, long kv_heads, long d, float scale,
                                 int threads) {
    long pieces, most, ntok;
    long *work = plan(seg, nseg, np, &pieces, &most, &ntok);
    float *keys = malloc(sizeof(float) * (kv_heads * d * (ntok + np) + 1));  /* + 1: never malloc(0) */
    if (!work || !keys) {
        free(work);
        free(keys);
        return -1;
    }
    float *pkeys = keys + kv_heads * d * ntok;
    rows_of x = {q, qt, qh, out, heads, heads / kv_heads, d};
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        float *scratch = malloc(sizeof(float) * QW * most);
        if (!scratch) {
            #pragma omp atomic write
            failed = 1;
        }
        transpose_keys(k, kt, kh, ntok, kv_heads, d, keys);
        if (np) transpose_keys(pk, pt, ph, np, kv_heads, d, pkeys);
        #pragma omp for schedule(dynamic, 1) collapse(2)
        for (long piece = 0; piece < pieces; piece++) for (long g = 0; g < kv_heads; g++) {
            if (!scratch) continue;
            long i = work[2 * piece], r0 = work[2 * piece + 1];
            long a = seg[4 * i], b = seg[4 * i + 1], c0 = seg[4 * i + 2], c1 = seg[4 * i + 3];
            const float *gk = keys + g * d * ntok;
            tspan sp[3];
            int nsp = 0;
            if (np) sp[nsp++] = (tspan){pkeys + g * d * np, pv + g * ph, np, pt, np};
            if (c1 > c0) sp[nsp++] = (tspan){gk + c0, v + c0 * vt + g * vh, ntok, vt, c1 - c0};
            sp[nsp++] = (tspan){gk + a, v + a * vt + g * vh, ntok, vt, b - a};
            long nv = (b - r0 < QROWS ? b - r0 : QROWS) * x.group;
            for (long v0 = 0; v0 < nv; v0 += QW) {
                int nq = nv - v0 < QW ? (int)(nv - v0) : QW;
                const float *qv[QW];
                float *ov[QW], *s[QW];
                long own[QW];
                vectors(&x, a, r0, g, v0, nq, scratch, most, qv, ov, s, own);
                switch (nq) {
                    case 6: attend_spans16(qv, ov, own, sp, nsp, s, d, scale, 6); break;
                    case 5: attend_spans16(qv, ov, own, sp, nsp, s, d, scale, 5); break;
                    case 4: attend_spans16(qv, ov, own, sp, nsp, s, d, scale, 4); break;
                    case 3: attend_spans16(qv, ov, own, sp, nsp, s, d, scale, 3); break;
                    case 2: attend_spans16(qv, ov, own, sp, nsp, s, d, scale, 2); break;
                    default: attend_spans16(qv, ov, own, sp, nsp, s, d, scale, 1);
                }
            }
        }
        free(scratch);
    }
    free(work);
    free(keys);
    return failed ? -1 : 0;
}

/* Whether this CPU takes tree_attention16 (AVX-512F). */
int pmcllama_wide(void) { return __builtin_cpu_supports("avx512f"); }

/* Returns 0, or -1 when its scratch memory could not be had (out is then incomplete). With
 * `wide`, where the CPU has AVX-512F and d is a multiple of 16, tree_attention16 computes it. */
int pmcllama_tree_attention(const float *q, long qt, long qh, const float *k, long kt, long kh, const float *v, long vt,
                            long vh, const float *pk, const float *pv, long pt, long ph, long np, const long *seg, long nseg,
                            float *out, long heads, long kv_heads, long d, float scale, int threads, int wide) {
    if (wide && d % 16 == 0 && __builtin_cpu_supports("avx512f"))
        return tree_attention16(q, qt, qh, k, kt, kh, v, vt, vh, pk, pv, pt, ph, np, seg, nseg, out, heads, kv_heads, d,
                                scale, threads);
    long pieces, most, ntok;
    long *work = plan(seg, nseg, np, &pieces, &most, &ntok);
    if (!work) return -1;
    rows_of x = {q, qt, qh, out, heads, heads / kv_heads, d};
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        float *scratch = malloc(sizeof(float) * QV * most);
        if (!scratch) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(dynamic, 1) collapse(2)
        for (long piece = 0; piece < pieces; piece++) for (long g = 0; g < kv_heads; g++) {
            if (!scratch) continue;
            long i = work[2 * piece], r0 = work[2 * piece + 1];
            long a = seg[4 * i], b = seg[4 * i + 1], c0 = seg[4 * i + 2], c1 = seg[4 * i + 3];
            span sp[3];
            int nsp = 0;
            if (np) sp[nsp++] = (span){pk + g * ph, pv + g * ph, pt, pt, np};
            if (c1 > c0) sp[nsp++] = (span){k + c0 * kt + g * kh, v + c0 * vt + g * vh, kt, vt, c1 - c0};
            sp[nsp++] = (span){k + a * kt + g * kh, v + a * vt + g * vh, kt, vt, b - a};
            /* the query vectors of rows r0.. (at most QROWS) x the group's heads, QV at a time */
            long nv = (b - r0 < QROWS ? b - r0 : QROWS) * x.group;
            for (long v0 = 0; v0 < nv; v0 += QV) {
                int nq = nv - v0 < QV ? (int)(nv - v0) : QV;
                const float *qv[QV];
                float *ov[QV], *s[QV];
                long own[QV];
                vectors(&x, a, r0, g, v0, nq, scratch, most, qv, ov, s, own);
                if (nq == 3) attend_spans(qv, ov, own, sp, nsp, s, d, scale, 3);
                else if (nq == 2) attend_spans(qv, ov, own, sp, nsp, s, d, scale, 2);
                else attend_spans(qv, ov, own, sp, nsp, s, d, scale, 1);
            }
        }
        free(scratch);
    }
    free(work);
    return failed ? -1 : 0;
}

/* The pointwise work between the products of a forward over many rows, one pass over memory
 * each where PyTorch makes several (scoring's rows: its RMSNorm is five operations, the gated
 * MLP's silu(gate) * up two over a strided half of the fused gate/up product). Rows are split
 * between the threads; each output is one thread's arithmetic in a fixed order. */

/* out (rows, n) = silu(y[:, :n]) * y[:, n:2n], y with a row stride of ys floats:
 * silu(g) = g * sigmoid(g), sigmoid from exp(-|g|) (exp8's range) */
void pmcllama_silu_mul(const float *y, long ys, float *out, long rows, long n, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) {
        const float *g = y + r * ys, *u = g + n;
        float *o = out + r * n;
        const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
        long j = 0;
        for (; j + 8 <= n; j += 8) {
            __m256 x = _mm256_loadu_ps(g + j);
            __m256 e = exp8(_mm256_or_ps(x, sign));                                  /* exp(-|x|) */
            __m256 num = _mm256_blendv_ps(one, e, x);                                 /* x < 0: e, else 1 */
            __m256 sig = _mm256_div_ps(num, _mm256_add_ps(one, e));
            _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_mul_ps(x, sig), _mm256_loadu_ps(u + j)));
        }
        for (; j < n; j++) o[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
    }
}

/* out (rows, n) = w * (x * rsqrt(mean(x^2) + eps)), x with a row stride of xs floats */
void pmcllama_rms_norm(const float *x, long xs, const float *w, float eps, float *out, long rows, long n, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) rms_norm(x + r * xs, w, eps, out + r * n, n);
}

/* rotary position embedding in place, x * cos + rotate_half(x) * sin (LLaMA's), on the first
 * `heads` heads of d floats of each row of y (row stride ys: the query and key columns of the
 * fused q/k/v product, which then needs no copies); cos and sin (rows, d) contiguous.
 * rotate_half(x) = (-x[d/2:], x[:d/2]), so out[i] = x[i] cos[i] - x[i + d/2] sin[i] in the first
 * half and x[i] cos[i] + x[i - d/2] sin[i] in the second. */
void pmcllama_rope(float *y, long ys, long heads, long d, const float *cos, const float *sin, long rows, int threads) {
    long half = d / 2;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) {
        const float *c = cos + r * d, *s = sin + r * d;
        for (long h = 0; h < heads; h++) {
            float *x = y + r * ys + h * d;
            long i = 0;
            for (; i + 8 <= half; i += 8) {
                __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + half + i);
                _mm256_storeu_ps(x + i, _mm256_sub_ps(_mm256_mul_ps(a, _mm256_loadu_ps(c + i)),
                                                      _mm256_mul_ps(b, _mm256_loadu_ps(s + i))));
                _mm256_storeu_ps(x + half + i, _mm256_add_ps(_mm256_mul_ps(b, _mm256_loadu_ps(c + half + i)),
                                                             _mm256_mul_ps(a, _mm256_loadu_ps(s + half + i))));
            }
            for (; i < half; i++) {
                float a = x[i], b = x[half + i];
                x[i] = a * c[i] - b * s[i];
                x[half + i] = b * c[half + i] + a * s[half + i];
            }
        }
    }
}
