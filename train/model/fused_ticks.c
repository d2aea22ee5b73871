/* Fused micro ticks of VSML layers: every cell's LSTM updates in one loop (no autograd).
 *
 * Built at first use by vsml_train.model.visit_fused (cc -O3 -march=native), loaded with ctypes.
 * Dimension letters as in vsml_train.model.cell: G = P * E groups (learner p, example e), A rows,
 * B columns, N state, M message, J = 4N gate pre-activations in the order i, g, f, o of w_gates.
 *
 * vsml_ticks_*: the micro ticks of one layer visit (the torch step computes the message terms and heads)
 *   row  [G * A, J]   fwd_in[a] @ W_f (+ row extras), per group
 *   col  [G, B, J]    bias + bwd_in[b] @ W_b (+ column extras), per group
 *   wh   [L, N, J]    the h rows of w_gates, learner l = g / E (wh_stride 0: one V_M for all)
 *   h_in, c_in [G * A * B, N] -> h, c [G * A * B, N] (other buffers)
 * vsml_rollout_*: whole episodes, learner after learner (rollout_fused.py; the state of one learner stays in
 *   the cache for all T steps), for the configs without LayerNorm, backward pass, extras or batch averaging.
 *
 * Cell (g, a, b) runs `ticks` times: z = row[g, a] + col[g, b] + h @ wh[l];
 * c = sig(f) * c + sig(i) * tanh(g); h = sig(o) * tanh(c), with sig(x) = 1 / (1 + exp(-x)) and
 * tanh(x) = 2 / (1 + exp(-2x)) - 1 (one exp per gate; the loops over J vectorise). With do_clip the
 * new h and c are clamped to [-clip, clip] (the step's clipping, when this is the layer's last visit of
 * the step and no batch averaging comes between).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* glibc's vector exp (libmvec) without -ffast-math: declared SIMD-callable here, so that the loops
 * vectorise while inf and NaN keep their IEEE meaning (a diverging learner must stay visible) */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(VSML_NO_LIBMVEC)
__attribute__((__simd__("notinbranch"))) extern float expf(float);
__attribute__((__simd__("notinbranch"))) extern double exp(double);
#endif

#define MAXN 64

#if defined(__AVX512F__) && !defined(VSML_NO_AVX512)
#define VSML_AVX512 1 /* the N = 16 float32 grid below in AVX-512 intrinsics */
#endif

/* One block of nb <= CB cells of one row (consecutive columns): h, c may alias h_in, c_in (the block is read
 * before it is written). Each phase (gate matmul, activations, state update) runs over the whole block, so the
 * vector exp calls see CB * 4N numbers in a row instead of 4N. sum_f [nb, N] / sum_b [N] (when not NULL)
 * accumulate the new, unclipped h of the block over the rows / the columns (the heads' grid reduction). */
#define DEFINE_BLOCK(NAME, T, EXP, NDEF, CB)                                                                \
    static inline void NAME(int64_t n_arg, int64_t nb, int64_t ticks, const T *r, const T *cl, const T *w, \
                            const T *sc, const T *h_in, const T *c_in, T *h, T *c, int64_t do_clip, T lo,  \
                            T up, T *sum_f, T *sum_b) {                                                    \
        const int64_t n = NDEF;                                                                            \
        const int64_t j4 = 4 * n;                                                                          \
        (void)n_arg;                                                                                       \
        T z[CB * 4 * MAXN], zin[CB * 4 * MAXN], hh[CB * MAXN], cc[CB * MAXN];                              \
        for (int64_t q = 0; q < nb; q++)                                                                   \
            for (int64_t j = 0; j < j4; j++) zin[q * j4 + j] = r[j] + cl[q * j4 + j];                      \
        for (int64_t k = 0; k < nb * n; k++) {                                                             \
            hh[k] = h_in[k];                                                                               \
            cc[k] = c_in[k];                                                                               \
        }                                                                                                  \
        for (int64_t t = 0; t < ticks; t++) {                                                              \
            for (int64_t q = 0; q < nb; q++) {                                                             \
                T *zq = z + q * j4;                                                                        \
                for (int64_t j = 0; j < j4; j++) zq[j] = zin[q * j4 + j];                                  \
                for (int64_t k = 0; k < n; k++) {                                                          \
                    const T hk = hh[q * n + k];                                                            \
                    const T *wk = w + k * j4;                                                              \
                    for (int64_t j = 0; j < j4; j++) zq[j] += hk * wk[j];                                  \
                }                                                                                          \
            }                                                                                              \
            /* i, f, o: sigmoid; g: tanh as 2 sig(2x) - 1 (sc = 2 on the g block) */                          \
            _Pragma("omp simd") for (int64_t j = 0; j < nb * j4; j++) z[j] = 1 / (1 + EXP(-sc[j] * z[j]));  \
            for (int64_t q = 0; q < nb; q++) {                                                             \
                const T *zq = z + q * j4;                                                                  \
                T *cq = cc + q * n;                                                                        \
                for (int64_t k = 0; k < n; k++) cq[k] = zq[2 * n + k] * cq[k] + zq[k] * (2 * zq[n + k] - 1); \
            }                                                                                              \
            _Pragma("omp simd") for (int64_t k = 0; k < nb * n; k++) hh[k] = 2 / (1 + EXP(-2 * cc[k])) - 1; \
            for (int64_t q = 0; q < nb; q++)                                                               \
                for (int64_t k = 0; k < n; k++) hh[q * n + k] *= z[q * j4 + 3 * n + k];                    \
        }                                                                                                  \
        if (sum_f)                                                                                         \
            for (int64_t k = 0; k < nb * n; k++) sum_f[k] += hh[k];                                        \
        if (sum_b)                                                                                         \
            for (int64_t q = 0; q < nb; q++)                                                               \
                for (int64_t k = 0; k < n; k++) sum_b[k] += hh[q * n + k];                                 \
        if (do_clip) { /* clamp to [-clip, clip]; NaN stays NaN */                                         \
            for (int64_t k = 0; k < nb * n; k++) {                                                         \
                hh[k] = hh[k] < lo ? lo : (hh[k] > up ? up : hh[k]);                                       \
                cc[k] = cc[k] < lo ? lo : (cc[k] > up ? up : cc[k]);                                       \
            }                                                                                              \
        }                                                                                                  \
        for (int64_t k = 0; k < nb * n; k++) {                                                             \
            h[k] = hh[k];                                                                                  \
            c[k] = cc[k];                                                                                  \
        }                                                                                                  \
    }

/* The micro ticks of one A x B grid of cells, CB cells of a row at a time (sum_f [B, N], sum_b [A, N]: see
 * DEFINE_BLOCK) */
#define DEFINE_GRID(NAME, BLOCK, T, NDEF, CB)                                                               \
    static void NAME(int64_t n_arg, int64_t a_rows, int64_t b_cols, int64_t ticks, const T *row, const T *col, \
                     const T *w, const T *h_in, const T *c_in, T *h, T *c, int64_t do_clip, T lo, T up,     \
                     T *sum_f, T *sum_b) {                                                                 \
        const int64_t n = NDEF;                                                                            \
        const int64_t j4 = 4 * n;                                                                          \
        (void)n_arg;                                                                                       \
        T sc[CB * 4 * MAXN];                                                                               \
        for (int64_t j = 0; j < CB * j4; j++) sc[j] = (j % j4 >= n && j % j4 < 2 * n) ? 2 : 1;             \
        for (int64_t a = 0; a < a_rows; a++)                                                               \
            for (int64_t b0 = 0; b0 < b_cols; b0 += CB) {                                                  \
                const int64_t nb = b_cols - b0 < CB ? b_cols - b0 : CB;                                    \
                const int64_t at = (a * b_cols + b0) * n;                                                  \
                BLOCK(n, nb, ticks, row + a * j4, col + b0 * j4, w, sc, h_in + at, c_in + at, h + at, c + at, \
                      do_clip, lo, up, sum_f ? sum_f + b0 * n : 0, sum_b ? sum_b + a * n : 0);             \
            }                                                                                              \
    }

/* one copy per dtype with N a compile-time constant (16, 32: the loops unroll) and one with N read at
 * run time; the last argument is the block of cells CB (measured at 784 x 10 on one core: N = 16 runs
 * 1.08 ms per two ticks with CB = 16 against 1.26 with CB = 1; N = 32 is fastest with CB = 1) */
#ifndef VSML_AVX512
DEFINE_BLOCK(block_f32_n16, float, expf, 16, 16)
DEFINE_BLOCK(block_f32_n32, float, expf, 32, 1)
#endif
DEFINE_BLOCK(block_f32_any, float, expf, n_arg, 8)
DEFINE_BLOCK(block_f64_any, double, exp, n_arg, 8)
#ifndef VSML_AVX512
DEFINE_GRID(grid_f32_n16, block_f32_n16, float, 16, 16)
DEFINE_GRID(grid_f32_n32, block_f32_n32, float, 32, 1)
#endif
DEFINE_GRID(grid_f32_any, block_f32_any, float, n_arg, 8)
DEFINE_GRID(grid_f64, block_f64_any, double, n_arg, 8)

#ifdef VSML_AVX512
/* N = 16 and 32 with AVX-512 (compile-time choice; -DVSML_NO_AVX512 or a CPU without it builds the portable
 * blocks above instead, the same numbers within float rounding): a gate block is NV = N / 16 vectors of 16
 * floats, U cells of a row run interleaved (U = 5 at N = 16: 20 gate accumulators in registers, each W_h vector
 * loaded once for the five; U = 2 at N = 32), and the exp is vexp16 below instead of libmvec. Measured at
 * 784 x 10 on one core, ms per two ticks: N = 16 0.58 (portable blocks 1.04), N = 32 1.67 (2.33). */
#include <immintrin.h>
#define VSML_AI static inline __attribute__((always_inline))

/* expf of 16 floats (Cephes' polynomial, max rel. error 1.2e-7 measured on [-110, 110]): x clamped to
 * [-104, 104] with a NaN kept (max / min return their second operand when one is NaN), n = round(x / ln 2),
 * r = x - n ln 2 in two parts, exp(r) by a degree-5 polynomial, times 2^n by vscalefps, which overflows to inf
 * and underflows to 0 as IEEE says: exp(inf) = inf, exp(-inf) = 0, exp(NaN) = NaN */
VSML_AI __m512 vexp16(__m512 x) {
    x = _mm512_min_ps(_mm512_set1_ps(104.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
    const __m512 nk = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(nk, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(nk, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, nk);
}

/* 1 / (1 + exp(-s x)) */
VSML_AI __m512 vsig16(__m512 x, float s) {
    const __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, vexp16(_mm512_mul_ps(_mm512_set1_ps(-s), x))));
}

/* U <= 5 cells (consecutive columns) of one row, N = 16 NV: as DEFINE_BLOCK (h, c may alias h_in, c_in; sum_f,
 * sb: the heads' reductions of the unclipped h, sb [NV] vectors over the row) */
VSML_AI void cells16(const int U, const int NV, int64_t ticks, const float *r, const float *cl, const float *w,
                     const float *h_in, const float *c_in, float *h, float *c, int64_t do_clip, float lo, float up,
                     float *sum_f, __m512 *sb) {
    const int n = 16 * NV, j4 = 64 * NV;
    float zin[5][128] __attribute__((aligned(64))), hs[5][32] __attribute__((aligned(64)));
    __m512 hv[5][2], cv[5][2];
    for (int u = 0; u < U; u++) {
        for (int g = 0; g < 4 * NV; g++)
            _mm512_store_ps(zin[u] + 16 * g,
                            _mm512_add_ps(_mm512_loadu_ps(r + 16 * g), _mm512_loadu_ps(cl + j4 * u + 16 * g)));
        for (int v = 0; v < NV; v++) {
            hv[u][v] = _mm512_loadu_ps(h_in + n * u + 16 * v);
            cv[u][v] = _mm512_loadu_ps(c_in + n * u + 16 * v);
        }
    }
    const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
    for (int64_t t = 0; t < ticks; t++) {
        __m512 z[5][8];
        for (int u = 0; u < U; u++) {
            for (int v = 0; v < NV; v++) _mm512_store_ps(hs[u] + 16 * v, hv[u][v]);
            for (int g = 0; g < 4 * NV; g++) z[u][g] = _mm512_load_ps(zin[u] + 16 * g);
        }
        for (int k = 0; k < n; k++)
            for (int g = 0; g < 4 * NV; g++) {
                const __m512 wk = _mm512_loadu_ps(w + j4 * k + 16 * g);
                for (int u = 0; u < U; u++) z[u][g] = _mm512_fmadd_ps(_mm512_set1_ps(hs[u][k]), wk, z[u][g]);
            }
        for (int u = 0; u < U; u++) /* i, f, o: sigmoid; g: tanh as 2 sig(2x) - 1 */
            for (int v = 0; v < NV; v++) {
                const __m512 ig = vsig16(z[u][v], 1.0f), gg = vsig16(z[u][NV + v], 2.0f);
                const __m512 fg = vsig16(z[u][2 * NV + v], 1.0f), og = vsig16(z[u][3 * NV + v], 1.0f);
                cv[u][v] = _mm512_fmadd_ps(fg, cv[u][v], _mm512_mul_ps(ig, _mm512_fmsub_ps(two, gg, one)));
                hv[u][v] = _mm512_mul_ps(_mm512_fmsub_ps(two, vsig16(cv[u][v], 2.0f), one), og);
            }
    }
    const __m512 vlo = _mm512_set1_ps(lo), vup = _mm512_set1_ps(up);
    for (int u = 0; u < U; u++)
        for (int v = 0; v < NV; v++) {
            if (sum_f) {
                float *sf = sum_f + n * u + 16 * v;
                _mm512_storeu_ps(sf, _mm512_add_ps(_mm512_loadu_ps(sf), hv[u][v]));
            }
            if (sb) sb[v] = _mm512_add_ps(sb[v], hv[u][v]);
            __m512 hx = hv[u][v], cx = cv[u][v];
            if (do_clip) { /* max(lo, x), min(up, x): x second, so that a NaN stays NaN */
                hx = _mm512_min_ps(vup, _mm512_max_ps(vlo, hx));
                cx = _mm512_min_ps(vup, _mm512_max_ps(vlo, cx));
            }
            _mm512_storeu_ps(h + n * u + 16 * v, hx);
            _mm512_storeu_ps(c + n * u + 16 * v, cx);
        }
}

/* the grid for N = 16 NV, UMAX cells of a row at a time (then the rest) */
#define VSML_CELLS(U, NV)                                                                                   \
    cells16(U, NV, ticks, ra, cb, w, h_in + at, c_in + at, h + at, c + at, do_clip, lo, up, sf, psb)
#define DEFINE_GRID_AVX512(NAME, NV, UMAX)                                                                  \
    static void NAME(int64_t n_arg, int64_t a_rows, int64_t b_cols, int64_t ticks, const float *row,       \
                     const float *col, const float *w, const float *h_in, const float *c_in, float *h,      \
                     float *c, int64_t do_clip, float lo, float up, float *sum_f, float *sum_b) {           \
        const int64_t n = 16 * NV, j4 = 64 * NV;                                                           \
        (void)n_arg;                                                                                       \
        for (int64_t a = 0; a < a_rows; a++) {                                                             \
            __m512 sb[NV];                                                                                 \
            for (int v = 0; v < NV; v++) sb[v] = _mm512_setzero_ps();                                      \
            for (int64_t b = 0; b < b_cols;) {                                                             \
                const int64_t at = (a * b_cols + b) * n, u = b_cols - b < UMAX ? b_cols - b : UMAX;        \
                const float *ra = row + a * j4, *cb = col + b * j4;                                        \
                float *sf = sum_f ? sum_f + b * n : 0;                                                     \
                __m512 *psb = sum_b ? sb : 0;                                                              \
                switch (u) {                                                                               \
                case 5: VSML_CELLS(5, NV); break;                                                          \
                case 4: VSML_CELLS(4, NV); break;                                                          \
                case 3: VSML_CELLS(3, NV); break;                                                          \
                case 2: VSML_CELLS(2, NV); break;                                                          \
                default: VSML_CELLS(1, NV);                                                                \
                }                                                                                          \
                b += u;                                                                                    \
            }                                                                                              \
            if (sum_b)                                                                                     \
                for (int v = 0; v < NV; v++)                                                               \
                    _mm512_storeu_ps(sum_b + (a * NV + v) * 16,                                            \
                                     _mm512_add_ps(_mm512_loadu_ps(sum_b + (a * NV + v) * 16), sb[v]));    \
        }                                                                                                  \
    }

DEFINE_GRID_AVX512(grid_f32_n16_avx512, 1, 5)
DEFINE_GRID_AVX512(grid_f32_n32_avx512, 2, 2)
#define GRID_F32_N16 grid_f32_n16_avx512
#define GRID_F32_N32 grid_f32_n32_avx512
#else
#define GRID_F32_N16 grid_f32_n16
#define GRID_F32_N32 grid_f32_n32
#endif

#define GRID_ARGS n, a_rows, b_cols, ticks, row, col, w, h_in, c_in, h, c, do_clip, lo, up, sum_f, sum_b

static void grid_f32(int64_t n, int64_t a_rows, int64_t b_cols, int64_t ticks, const float *row, const float *col,
                     const float *w, const float *h_in, const float *c_in, float *h, float *c, int64_t do_clip,
                     float lo, float up, float *sum_f, float *sum_b) {
    if (n == 16)
        GRID_F32_N16(GRID_ARGS);
    else if (n == 32)
        GRID_F32_N32(GRID_ARGS);
    else
        grid_f32_any(GRID_ARGS);
}

#define DEFINE_TICKS(NAME, T, GRID)                                                                         \
    void NAME(int64_t groups, int64_t a_rows, int64_t b_cols, int64_t n, int64_t ticks, int64_t e_per_l,    \
              int64_t wh_stride, int64_t do_clip, double clip, const T *row, const T *col, const T *wh,      \
              const T *h_in, const T *c_in, T *h, T *c) {                                                  \
        const int64_t j4 = 4 * n, cells = a_rows * b_cols * n;                                             \
        for (int64_t g = 0; g < groups; g++)                                                               \
            GRID(n, a_rows, b_cols, ticks, row + g * a_rows * j4, col + g * b_cols * j4,                   \
                 wh + (g / e_per_l) * wh_stride, h_in + g * cells, c_in + g * cells, h + g * cells,        \
                 c + g * cells, do_clip, (T)-clip, (T)clip, 0, 0);                                         \
    }

DEFINE_TICKS(vsml_ticks_f32, float, grid_f32)
DEFINE_TICKS(vsml_ticks_f64, double, grid_f64)

/* Whole episodes of P learners with one example per step, learner after learner.
 *   dims [K + 1]: A_0 (the inputs, with the bias input), A_1, ..., A_K = B (the classes)
 *   opt: do_clip, clip, has_bias_input, bias_input, tanh_bound, output_gain, error_scale, feed_label,
 *        output_channel, reduction (0 mean, 1 sum, 2 sqrt)
 *   vm [P | 1, K, S]: per learner (vm_stride K * S, or 0 for one V_M) and layer the packed V_M
 *        W_f [M, J], W_b [M, J], W_h [N, J], gate bias [J] (offsets added), w_fwd [N, M], b_fwd [M],
 *        w_bwd [N, M], b_bwd [M]
 *   x [T, P, A_0 - has_bias_input], y [T, P, B] one-hot (all-zero: no label)
 *   h[k], c[k] [P, A_k, B_k, N], bwd[k] [P, B_k, M]: the state, updated in place to the state after T steps
 *   logits [T, P, B]
 * Returns 0, or -1 where the scratch memory could not be allocated. */
#define DEFINE_ROLLOUT(NAME, T, GRID, EXP, TANH, SQRT)                                                      \
    int64_t NAME(int64_t pop, int64_t steps, int64_t layers, const int64_t *dims, int64_t n, int64_t m,     \
                 int64_t ticks, const double *opt, const T *vm, int64_t vm_stride, const T *x, const T *y,  \
                 T *const *h, T *const *c, T *const *bwd, T *logits) {                                     \
        const int64_t j4 = 4 * n, s_layer = 2 * m * j4 + n * j4 + j4 + 2 * n * m + 2 * m;                  \
        const int64_t do_clip = opt[0] != 0, has_bias = opt[2] != 0, feed = opt[7] != 0;                   \
        const int64_t ch = (int64_t)opt[8], red = (int64_t)opt[9], b_out = dims[layers];                   \
        const int64_t a_in = dims[0] - has_bias;                                                           \
        const T clip = (T)opt[1], bias_in = (T)opt[3], bound = (T)opt[4], gain = (T)opt[5];                \
        const T escale = (T)opt[6];                                                                        \
        int64_t dmax = 1;                                                                                  \
        for (int64_t k = 0; k <= layers; k++) dmax = dims[k] > dmax ? dims[k] : dmax;                      \
        T *mem = malloc(sizeof(T) * (2 * dmax * j4 + 2 * dmax * n + 2 * dmax * m + 2 * b_out));           \
        if (!mem) return -1;                                                                               \
        T *row = mem, *col = row + dmax * j4, *sum_f = col + dmax * j4, *sum_b = sum_f + dmax * n;         \
        T *msg = sum_b + dmax * n, *nxt = msg + dmax * m, *lg = nxt + dmax * m, *ex = lg + b_out;          \
        for (int64_t p = 0; p < pop; p++)                                                                  \
            for (int64_t t = 0; t < steps; t++) {                                                          \
                const T *xt = x + (t * pop + p) * a_in, *yt = y + (t * pop + p) * b_out;                   \
                memset(msg, 0, sizeof(T) * dims[0] * m); /* input message [x_a, 0, ..., 0] */              \
                for (int64_t a = 0; a < a_in; a++) msg[a * m] = xt[a];                                     \
                if (has_bias) msg[a_in * m] = bias_in;                                                     \
                for (int64_t k = 0; k < layers; k++) {                                                     \
                    const int64_t ak = dims[k], bk = dims[k + 1];                                          \
                    const T *wf = vm + p * vm_stride + k * s_layer, *wb = wf + m * j4, *wh = wb + m * j4;  \
                    const T *gb = wh + n * j4, *wfo = gb + j4, *bfo = wfo + n * m, *wbo = bfo + m;         \
                    const T *bbo = wbo + n * m;                                                            \
                    T *bw = bwd[k] + p * bk * m, *hk = h[k] + p * ak * bk * n, *ck = c[k] + p * ak * bk * n; \
                    for (int64_t a = 0; a < ak; a++) { /* row term fwd_in[a] @ W_f */                       \
                        T *ra = row + a * j4;                                                              \
                        for (int64_t j = 0; j < j4; j++) ra[j] = 0;                                        \
                        for (int64_t i = 0; i < m; i++)                                                    \
                            for (int64_t j = 0; j < j4; j++) ra[j] += msg[a * m + i] * wf[i * j4 + j];     \
                    }                                                                                      \
                    for (int64_t b = 0; b < bk; b++) { /* column term bias + bwd_in[b] @ W_b */             \
                        T *cb = col + b * j4;                                                              \
                        for (int64_t j = 0; j < j4; j++) cb[j] = 0;                                        \
                        for (int64_t i = 0; i < m; i++)                                                    \
                            for (int64_t j = 0; j < j4; j++) cb[j] += bw[b * m + i] * wb[i * j4 + j];      \
                        for (int64_t j = 0; j < j4; j++) cb[j] = gb[j] + cb[j];                            \
                    }                                                                                      \
                    memset(sum_f, 0, sizeof(T) * bk * n);                                                  \
                    memset(sum_b, 0, sizeof(T) * ak * n);                                                  \
                    GRID(n, ak, bk, ticks, row, col, wh, hk, ck, hk, ck, do_clip, -clip, clip, sum_f,      \
                         k > 0 ? sum_b : 0);                                                               \
                    /* heads on the pooled h: mean (sum / A), sum, or sum / sqrt(A); the bias scaled to match */ \
                    const T fa = (T)ak, fb = (T)bk;                                                        \
                    const T bsf = red == 0 ? 1 : (red == 1 ? fa : SQRT(fa));                               \
                    const T bsb = red == 0 ? 1 : (red == 1 ? fb : SQRT(fb));                               \
                    for (int64_t b = 0; b < bk; b++)                                                       \
                        for (int64_t i = 0; i < m; i++) {                                                  \
                            T acc = 0;                                                                     \
                            for (int64_t q = 0; q < n; q++) {                                              \
                                const T s = sum_f[b * n + q];                                              \
                                const T v = red == 0 ? s / fa : (red == 1 ? s : s * (1 / SQRT(fa)));       \
                                acc += v * wfo[q * m + i];                                                 \
                            }                                                                              \
                            nxt[b * m + i] = acc + bfo[i] * bsf;                                           \
                        }                                                                                  \
                    if (k > 0) { /* this layer's backward message goes to layer k - 1 at the next step */   \
                        T *prev = bwd[k - 1] + p * ak * m;                                                 \
                        for (int64_t a = 0; a < ak; a++)                                                   \
                            for (int64_t i = 0; i < m; i++) {                                              \
                                T acc = 0;                                                                 \
                                for (int64_t q = 0; q < n; q++) {                                          \
                                    const T s = sum_b[a * n + q];                                          \
                                    const T v = red == 0 ? s / fb : (red == 1 ? s : s * (1 / SQRT(fb)));   \
                                    acc += v * wbo[q * m + i];                                             \
                                }                                                                          \
                                prev[a * m + i] = acc + bbo[i] * bsb;                                      \
                            }                                                                              \
                    }                                                                                      \
                    T *tmp = msg;                                                                          \
                    msg = nxt;                                                                             \
                    nxt = tmp;                                                                             \
                }                                                                                          \
                /* logits, then the error message [e_b, y_b, 0, ...] the last layer receives at the next step */ \
                T *lt = logits + (t * pop + p) * b_out, mx = -INFINITY, tot = 0, has_label = 0;            \
                for (int64_t b = 0; b < b_out; b++) {                                                      \
                    lg[b] = bound * TANH(gain * msg[b * m + ch] / bound);                                  \
                    lt[b] = lg[b];                                                                         \
                    mx = lg[b] > mx ? lg[b] : mx;                                                          \
                    has_label += yt[b];                                                                    \
                }                                                                                          \
                for (int64_t b = 0; b < b_out; b++) {                                                      \
                    ex[b] = EXP(lg[b] - mx);                                                               \
                    tot += ex[b];                                                                          \
                }                                                                                          \
                T *be = bwd[layers - 1] + p * b_out * m;                                                   \
                for (int64_t b = 0; b < b_out; b++) {                                                      \
                    for (int64_t i = 0; i < m; i++) be[b * m + i] = 0;                                     \
                    be[b * m] = (ex[b] / tot - yt[b]) * has_label * escale;                                \
                    be[b * m + 1] = feed ? yt[b] : 0;                                                      \
                }                                                                                          \
            }                                                                                              \
        free(mem);                                                                                         \
        return 0;                                                                                          \
    }

DEFINE_ROLLOUT(vsml_rollout_f32, float, grid_f32, expf, tanhf, sqrtf)
DEFINE_ROLLOUT(vsml_rollout_f64, double, grid_f64, exp, tanh, sqrt)

int64_t vsml_max_state(void) { return MAXN; }
