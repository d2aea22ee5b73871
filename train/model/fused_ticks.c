/* Fused micro ticks of one VSML layer: every cell's LSTM updates in one loop (no autograd).
 *
 * Built at first use by vsml_train.model.visit_fused (cc -O3 -march=native), loaded with ctypes.
 * Dimension letters as in vsml_train.model.cell: G = P * E groups (learner p, example e), A rows,
 * B columns, N state, J = 4N gate pre-activations in the order i, g, f, o of w_gates.
 *
 *   row  [G * A, J]   fwd_in[a] @ W_f (+ row extras), per group
 *   col  [G, B, J]    bias + bwd_in[b] @ W_b (+ column extras), per group
 *   wh   [L, N, J]    the h rows of w_gates, learner l = g / E (wh_stride 0: one V_M for all)
 *   h_in, c_in [G * A * B, N] -> h, c [G * A * B, N] (other buffers)
 *
 * Cell (g, a, b) runs `ticks` times: z = row[g, a] + col[g, b] + h @ wh[l];
 * c = sig(f) * c + sig(i) * tanh(g); h = sig(o) * tanh(c), with sig(x) = 1 / (1 + exp(-x)) and
 * tanh(x) = 2 / (1 + exp(-2x)) - 1 (one exp per gate; the loops over J vectorise). With do_clip the
 * new h and c are clamped to [-clip, clip] (the step's clipping, when this is the layer's last visit of
 * the step and no batch averaging comes between).
 */
#include <math.h>
#include <stdint.h>

/* glibc's vector exp (libmvec) without -ffast-math: declared SIMD-callable here, so that the loops
 * vectorise while inf and NaN keep their IEEE meaning (a diverging learner must stay visible) */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(VSML_NO_LIBMVEC)
__attribute__((__simd__("notinbranch"))) extern float expf(float);
__attribute__((__simd__("notinbranch"))) extern double exp(double);
#endif

#define MAXN 64

/* the cells of one row a are processed CB at a time: each phase (gate matmul, activations, state update)
 * runs over the whole block, so the vector exp calls see CB * 4N numbers in a row instead of 4N */

#define DEFINE_TICKS(NAME, T, EXP, NDEF, CB)                                                                \
    static void NAME(int64_t groups, int64_t a_rows, int64_t b_cols, int64_t n_arg, int64_t ticks,         \
                     int64_t e_per_l, int64_t wh_stride, int64_t do_clip, double clip, const T *row,        \
                     const T *col, const T *wh, const T *h_in, const T *c_in, T *h, T *c) {                 \
        const int64_t n = NDEF;                                                                            \
        const int64_t j4 = 4 * n;                                                                          \
        (void)n_arg;                                                                                       \
        T z[CB * 4 * MAXN], zin[CB * 4 * MAXN], sc[CB * 4 * MAXN], hh[CB * MAXN], cc[CB * MAXN];           \
        for (int64_t j = 0; j < CB * j4; j++) sc[j] = (j % j4 >= n && j % j4 < 2 * n) ? 2 : 1;             \
        const T lo = (T)-clip, up = (T)clip;                                                               \
        for (int64_t g = 0; g < groups; g++) {                                                             \
            const T *w = wh + (g / e_per_l) * wh_stride;                                                  \
            for (int64_t a = 0; a < a_rows; a++) {                                                         \
                const T *r = row + (g * a_rows + a) * j4;                                                  \
                for (int64_t b0 = 0; b0 < b_cols; b0 += CB) {                                              \
                    const int64_t nb = b_cols - b0 < CB ? b_cols - b0 : CB;                                \
                    const int64_t cell0 = (g * a_rows + a) * b_cols + b0;                                  \
                    const T *cl = col + (g * b_cols + b0) * j4;                                            \
                    for (int64_t q = 0; q < nb; q++)                                                       \
                        for (int64_t j = 0; j < j4; j++) zin[q * j4 + j] = r[j] + cl[q * j4 + j];          \
                    for (int64_t k = 0; k < nb * n; k++) {                                                 \
                        hh[k] = h_in[cell0 * n + k];                                                       \
                        cc[k] = c_in[cell0 * n + k];                                                       \
                    }                                                                                      \
                    for (int64_t t = 0; t < ticks; t++) {                                                  \
                        for (int64_t q = 0; q < nb; q++) {                                                 \
                            T *zq = z + q * j4;                                                            \
                            for (int64_t j = 0; j < j4; j++) zq[j] = zin[q * j4 + j];                      \
                            for (int64_t k = 0; k < n; k++) {                                              \
                                const T hk = hh[q * n + k];                                                \
                                const T *wk = w + k * j4;                                                  \
                                for (int64_t j = 0; j < j4; j++) zq[j] += hk * wk[j];                      \
                            }                                                                              \
                        }                                                                                  \
                        /* i, f, o: sigmoid; g: tanh as 2 sig(2x) - 1 (sc = 2 on the g block) */              \
                        _Pragma("omp simd") for (int64_t j = 0; j < nb * j4; j++) z[j] = 1 / (1 + EXP(-sc[j] * z[j])); \
                        for (int64_t q = 0; q < nb; q++) {                                                 \
                            const T *zq = z + q * j4;                                                      \
                            T *cq = cc + q * n;                                                            \
                            for (int64_t k = 0; k < n; k++) cq[k] = zq[2 * n + k] * cq[k] + zq[k] * (2 * zq[n + k] - 1); \
                        }                                                                                  \
                        _Pragma("omp simd") for (int64_t k = 0; k < nb * n; k++)                           \
                            hh[k] = 2 / (1 + EXP(-2 * cc[k])) - 1;                                         \
                        for (int64_t q = 0; q < nb; q++)                                                   \
                            for (int64_t k = 0; k < n; k++) hh[q * n + k] *= z[q * j4 + 3 * n + k];        \
                    }                                                                                      \
                    if (do_clip) { /* clamp to [-clip, clip]; NaN stays NaN */                             \
                        for (int64_t k = 0; k < nb * n; k++) {                                             \
                            hh[k] = hh[k] < lo ? lo : (hh[k] > up ? up : hh[k]);                           \
                            cc[k] = cc[k] < lo ? lo : (cc[k] > up ? up : cc[k]);                           \
                        }                                                                                  \
                    }                                                                                      \
                    for (int64_t k = 0; k < nb * n; k++) {                                                 \
                        h[cell0 * n + k] = hh[k];                                                          \
                        c[cell0 * n + k] = cc[k];                                                          \
                    }                                                                                      \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
    }

/* one copy per dtype with N a compile-time constant (16, 32: the loops unroll) and one with N read at
 * run time; the last argument is the block of cells CB (measured at 784 x 10 on one core: N = 16 runs
 * 1.08 ms per two ticks with CB = 16 against 1.26 with CB = 1; N = 32 is fastest with CB = 1) */
DEFINE_TICKS(ticks_f32_n16, float, expf, 16, 16)
DEFINE_TICKS(ticks_f32_n32, float, expf, 32, 1)
DEFINE_TICKS(ticks_f32_any, float, expf, n_arg, 8)
DEFINE_TICKS(ticks_f64_any, double, exp, n_arg, 8)

#define ARGS groups, a_rows, b_cols, n, ticks, e_per_l, wh_stride, do_clip, clip, row, col, wh, h_in, c_in, h, c

void vsml_ticks_f32(int64_t groups, int64_t a_rows, int64_t b_cols, int64_t n, int64_t ticks, int64_t e_per_l,
                    int64_t wh_stride, int64_t do_clip, double clip, const float *row, const float *col,
                    const float *wh, const float *h_in, const float *c_in, float *h, float *c) {
    if (n == 16)
        ticks_f32_n16(ARGS);
    else if (n == 32)
        ticks_f32_n32(ARGS);
    else
        ticks_f32_any(ARGS);
}

void vsml_ticks_f64(int64_t groups, int64_t a_rows, int64_t b_cols, int64_t n, int64_t ticks, int64_t e_per_l,
                    int64_t wh_stride, int64_t do_clip, double clip, const double *row, const double *col,
                    const double *wh, const double *h_in, const double *c_in, double *h, double *c) {
    ticks_f64_any(ARGS);
}

int64_t vsml_max_state(void) { return MAXN; }
