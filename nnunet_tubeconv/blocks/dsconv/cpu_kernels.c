/* CPU kernels of the dynamic snake convolution (nnunet_tubeconv.blocks.dsconv): the interpolated reads of the
 * K - 1 outer kernel points, their adjoint (scatter onto the interpolation corners) and the swing gradient.
 * The GEMMs with the weights stay in PyTorch. Compiled on first use by nnunet_tubeconv/blocks/dsconv/cpu_backend.py
 * (plain C, no PyTorch headers) and called through ctypes. Built with -fopenmp, the loops run on the OpenMP
 * runtime PyTorch already loaded (same soname libgomp.so.1), so they share its threads; built without, the caller
 * splits the work ranges over Python threads (ctypes releases the GIL).
 *
 * Geometry and clamping follow _Geometry.plan in torch_backend.py exactly:
 *   morph axis a: coordinate clamp(p_a + j, 0, size_a - 1) (an exact integer, replicate padding);
 *   swing axis s: raw = p_s + scope * off_s; pos = clamp(raw, 0, size_s - 1);
 *                 low = min(floor(pos), max(size_s - 2, 0)); frac = pos - low;
 *                 inside = 0 <= raw <= size_s - 1 (no swing gradient from a clamped coordinate);
 *   value = sum over the 2^nsw corners of prod_s (frac_s or 1 - frac_s) * x[corner] (first swing axis outermost).
 *
 * Layouts (all contiguous): x and gx (B, N, C) channels-last rows; delta and gdelta (B, nsw * (K - 1), N), the raw
 * swing per outer point (channels j = -c..-1, +1..+c per swing axis; the kernels sum it outward from the centre); s and gt (B, n, K - 1, C) for the chunk of positions n0 .. n1 - 1 (n = n1 - n0),
 * work item r = b * n + (p - n0). Integer geometry `gi`: size[3], stride[3] (spatial, leading sizes 1 for 2D),
 * axis, nsw, sw[2], K, N, C, B. Every kernel is instantiated for nsw = 0, 1, 2 swing axes (NSW, a literal).
 */
#include <math.h>
#include <stdint.h>

enum { G_SIZE = 0, G_STRIDE = 3, G_AXIS = 6, G_NSW = 7, G_SW = 8, G_K = 10, G_N = 11, G_C = 12, G_B = 13 };

#define INLINE static inline __attribute__((always_inline))

/* ---- geometry of one outer point: corner rows, weights w[q], derivatives dw[s][q] = d w[q] / d frac[s] ---- */
#define DEFINE_POINT(T, SUF)                                                                                      \
    INLINE void point_##SUF(const int64_t *gi, int nsw, const int64_t coord[3], int64_t b, int64_t p, int64_t jj, \
                            const T *cum, T scope, int64_t rows[4], T w[4], T dw[2][4], int inside[2]) {          \
        const int64_t K = gi[G_K], c = K / 2, N = gi[G_N], a = gi[G_AXIS];                                        \
        const int64_t j = jj < c ? jj - c : jj - c + 1;                                                           \
        int64_t ca = coord[a] + j;                                                                                \
        ca = ca < 0 ? 0 : (ca > gi[G_SIZE + a] - 1 ? gi[G_SIZE + a] - 1 : ca);                                    \
        int64_t low = b * N + p + (ca - coord[a]) * gi[G_STRIDE + a];                                             \
        T frac[2] = {0, 0};                                                                                       \
        int64_t step[2] = {0, 0};                                                                                 \
        for (int s = 0; s < nsw; ++s) {                                                                           \
            const int64_t ax = gi[G_SW + s], size = gi[G_SIZE + ax];                                              \
            const T maxpos = (T)(size - 1), maxlow = (T)(size > 2 ? size - 2 : 0);                                \
            const T raw = (T)coord[ax] + cum[s * (K - 1) + jj] * scope;                                           \
            const T pos = raw < (T)0 ? (T)0 : (raw > maxpos ? maxpos : raw);                                      \
            T lo = (T)floor(pos);                                                                                 \
            lo = lo > maxlow ? maxlow : lo;                                                                       \
            frac[s] = pos - lo;                                                                                   \
            inside[s] = raw >= (T)0 && raw <= maxpos;                                                             \
            step[s] = size > 1 ? gi[G_STRIDE + ax] : 0;                                                           \
            low += ((int64_t)lo - coord[ax]) * gi[G_STRIDE + ax];                                                 \
        }                                                                                                         \
        if (nsw == 0) {                                                                                           \
            rows[0] = low;                                                                                        \
            w[0] = (T)1;                                                                                          \
        } else if (nsw == 1) {                                                                                    \
            const T f = frac[0];                                                                                  \
            rows[0] = low, rows[1] = low + step[0];                                                               \
            w[0] = (T)1 - f, w[1] = f;                                                                            \
            dw[0][0] = (T)-1, dw[0][1] = (T)1;                                                                    \
        } else {                                                                                                  \
            const T f0 = frac[0], f1 = frac[1], g0 = (T)1 - f0, g1 = (T)1 - f1;                                   \
            rows[0] = low, rows[1] = low + step[1], rows[2] = low + step[0], rows[3] = low + step[0] + step[1];   \
            w[0] = g0 * g1, w[1] = g0 * f1, w[2] = f0 * g1, w[3] = f0 * f1;                                       \
            dw[0][0] = -g1, dw[0][1] = -f1, dw[0][2] = g1, dw[0][3] = f1;                                         \
            dw[1][0] = -g0, dw[1][1] = g0, dw[1][2] = -f0, dw[1][3] = f0;                                         \
        }                                                                                                         \
    }                                                                                                             \
    INLINE void coords_##SUF(const int64_t *gi, int64_t p, int64_t coord[3]) {                                    \
        for (int i = 0; i < 3; ++i) coord[i] = (p / gi[G_STRIDE + i]) % gi[G_SIZE + i];                           \
    }                                                                                                             \
    /* cum[s, jj]: cumulative swing of outer point jj (j = -c..-1, +1..+c) from delta[b, s * (K-1) + jj, p],   \
     * summed outward from the centre */                                                                          \
    INLINE void cumulate_##SUF(const int64_t *gi, int nsw, const T *delta, int64_t b, int64_t p, T *cum) {        \
        const int64_t K1 = gi[G_K] - 1, c = gi[G_K] / 2, N = gi[G_N];                                             \
        for (int s = 0; s < nsw; ++s) {                                                                           \
            const T *d = delta + (b * nsw + s) * K1 * N + p;                                                      \
            T *out = cum + s * K1, acc = 0;                                                                       \
            for (int64_t jj = c - 1; jj >= 0; --jj) out[jj] = acc += d[jj * N];                                   \
            acc = 0;                                                                                              \
            for (int64_t jj = c; jj < K1; ++jj) out[jj] = acc += d[jj * N];                                       \
        }                                                                                                         \
    }

/* ---- s[r, jj, :] = interpolated x at outer point jj ---- */
#define DEFINE_SAMPLE(T, SUF, NSW)                                                                                \
    static void sample_##SUF##_##NSW(const T *x, const T *delta, T scope, T *s, const int64_t *gi, int64_t n0,      \
                                     int64_t n1, int64_t r0, int64_t r1) {                                        \
        const int64_t K1 = gi[G_K] - 1, C = gi[G_C], n = n1 - n0;                                                 \
        _Pragma("omp parallel for schedule(static)") for (int64_t r = r0; r < r1; ++r) {                          \
            const int64_t b = r / n, p = n0 + r % n;                                                              \
            int64_t coord[3], rows[4];                                                                            \
            T w[4], dw[2][4];                                                                                     \
            int inside[2];                                                                                        \
            T cum[NSW > 0 ? NSW * K1 : 1];                                                                        \
            coords_##SUF(gi, p, coord);                                                                           \
            cumulate_##SUF(gi, NSW, delta, b, p, cum);                                                            \
            for (int64_t jj = 0; jj < K1; ++jj) {                                                                 \
                point_##SUF(gi, NSW, coord, b, p, jj, cum, scope, rows, w, dw, inside);                           \
                T *out = s + (r * K1 + jj) * C;                                                                   \
                const T *x0 = x + rows[0] * C, *x1 = x + rows[NSW > 0] * C;                                       \
                const T *x2 = x + rows[NSW > 1 ? 2 : 0] * C, *x3 = x + rows[NSW > 1 ? 3 : 0] * C;                 \
                const T w0 = w[0], w1 = NSW > 0 ? w[1] : 0, w2 = NSW > 1 ? w[2] : 0, w3 = NSW > 1 ? w[3] : 0;     \
                if (NSW == 0) {                                                                                   \
                    _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) out[c] = x0[c];                           \
                } else if (NSW == 1) {                                                                            \
                    _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) out[c] = w0 * x0[c] + w1 * x1[c];         \
                } else {                                                                                          \
                    _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) out[c] =                                  \
                        w0 * x0[c] + w1 * x1[c] + w2 * x2[c] + w3 * x3[c];                                        \
                }                                                                                                 \
            }                                                                                                     \
        }                                                                                                         \
    }

/* ---- backward reads: s (the samples again, for the weight gradient; may be NULL) and the swing gradient
 *      gdelta (may be NULL): the adjoint of the cumulative sum, times scope, of
 *      inside_s * < sum_q dw[s][q] x[corner q], gt[r, jj, :] > ---- */
#define DEFINE_GATHER(T, SUF, NSW)                                                                                \
    static void gather_##SUF##_##NSW(const T *x, const T *delta, T scope, const T *gt, T *s, T *gdelta,               \
                                     const int64_t *gi, int64_t n0, int64_t n1, int64_t r0, int64_t r1) {         \
        const int64_t K1 = gi[G_K] - 1, C = gi[G_C], N = gi[G_N], n = n1 - n0;                                    \
        _Pragma("omp parallel for schedule(static)") for (int64_t r = r0; r < r1; ++r) {                          \
            const int64_t b = r / n, p = n0 + r % n;                                                              \
            int64_t coord[3], rows[4];                                                                            \
            T w[4], dw[2][4];                                                                                     \
            int inside[2];                                                                                        \
            T cum[NSW > 0 ? NSW * K1 : 1], gcum[NSW > 0 ? NSW * K1 : 1];                                          \
            coords_##SUF(gi, p, coord);                                                                           \
            cumulate_##SUF(gi, NSW, delta, b, p, cum);                                                            \
            for (int64_t jj = 0; jj < K1; ++jj) {                                                                 \
                point_##SUF(gi, NSW, coord, b, p, jj, cum, scope, rows, w, dw, inside);                           \
                const T *g = gt + (r * K1 + jj) * C;                                                              \
                const T *x0 = x + rows[0] * C, *x1 = x + rows[NSW > 0] * C;                                       \
                const T *x2 = x + rows[NSW > 1 ? 2 : 0] * C, *x3 = x + rows[NSW > 1 ? 3 : 0] * C;                 \
                const T w0 = w[0], w1 = NSW > 0 ? w[1] : 0, w2 = NSW > 1 ? w[2] : 0, w3 = NSW > 1 ? w[3] : 0;     \
                if (s) {                                                                                          \
                    T *out = s + (r * K1 + jj) * C;                                                               \
                    _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) out[c] =                                  \
                        w0 * x0[c] + w1 * x1[c] + w2 * x2[c] + w3 * x3[c];                                        \
                }                                                                                                 \
                if (gdelta && NSW == 1) {                                                                           \
                    T acc = 0;                                                                                    \
                    _Pragma("omp simd reduction(+ : acc)") for (int64_t c = 0; c < C; ++c) acc +=                 \
                        (x1[c] - x0[c]) * g[c];                                                                   \
                    gcum[jj] = inside[0] ? acc : (T)0;                                                            \
                } else if (gdelta && NSW == 2) {                                                                    \
                    const T a0 = dw[0][0], a1 = dw[0][1], a2 = dw[0][2], a3 = dw[0][3];                           \
                    const T c0 = dw[1][0], c1 = dw[1][1], c2 = dw[1][2], c3 = dw[1][3];                           \
                    T acc0 = 0, acc1 = 0;                                                                         \
                    _Pragma("omp simd reduction(+ : acc0, acc1)") for (int64_t c = 0; c < C; ++c) {               \
                        const T v0 = x0[c], v1 = x1[c], v2 = x2[c], v3 = x3[c], gc = g[c];                        \
                        acc0 += (a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3) * gc;                                     \
                        acc1 += (c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3) * gc;                                     \
                    }                                                                                             \
                    gcum[jj] = inside[0] ? acc0 : (T)0;                                                           \
                    gcum[K1 + jj] = inside[1] ? acc1 : (T)0;                                                      \
                }                                                                                                 \
            }                                                                                                     \
            if (gdelta && NSW > 0) { /* adjoint of the outward cumulative sum, times scope */                     \
                const int64_t c = gi[G_K] / 2;                                                                    \
                for (int si = 0; si < NSW; ++si) {                                                                \
                    T *out = gdelta + (b * NSW + si) * K1 * N + p, acc = 0;                                       \
                    for (int64_t jj = 0; jj < c; ++jj) out[jj * N] = scope * (acc += gcum[si * K1 + jj]);         \
                    acc = 0;                                                                                      \
                    for (int64_t jj = K1 - 1; jj >= c; --jj) out[jj * N] = scope * (acc += gcum[si * K1 + jj]);   \
                }                                                                                                 \
            }                                                                                                     \
        }                                                                                                         \
    }

/* ---- gx[corner, :] += w_q * gt[r, jj, :] for the positions n0 .. n1 - 1 of the batch elements b0 .. b1 - 1, in
 *      `blocks` channel ranges: one task owns (b, channel range), so no two tasks write the same element ---- */
#define DEFINE_SCATTER(T, SUF, NSW)                                                                               \
    static void scatter_##SUF##_##NSW(T *gx, const T *delta, T scope, const T *gt, const int64_t *gi, int64_t n0,   \
                                      int64_t n1, int64_t b0, int64_t b1, int64_t blocks) {                       \
        const int64_t K1 = gi[G_K] - 1, C = gi[G_C], n = n1 - n0, width = (C + blocks - 1) / blocks;              \
        _Pragma("omp parallel for schedule(static)") for (int64_t task = 0; task < (b1 - b0) * blocks; ++task) {  \
            const int64_t b = b0 + task / blocks, lo = (task % blocks) * width;                                   \
            const int64_t hi = lo + width < C ? lo + width : C;                                                   \
            for (int64_t p = n0; p < n1; ++p) {                                                                   \
                const int64_t r = b * n + (p - n0);                                                               \
                int64_t coord[3], rows[4];                                                                        \
                T w[4], dw[2][4];                                                                                 \
                int inside[2];                                                                                    \
                T cum[NSW > 0 ? NSW * K1 : 1];                                                                    \
                coords_##SUF(gi, p, coord);                                                                       \
                cumulate_##SUF(gi, NSW, delta, b, p, cum);                                                        \
                for (int64_t jj = 0; jj < K1; ++jj) {                                                             \
                    point_##SUF(gi, NSW, coord, b, p, jj, cum, scope, rows, w, dw, inside);                       \
                    const T *g = gt + (r * K1 + jj) * C;                                                          \
                    T *d0 = gx + rows[0] * C, *d1 = gx + rows[NSW > 0] * C;                                       \
                    T *d2 = gx + rows[NSW > 1 ? 2 : 0] * C, *d3 = gx + rows[NSW > 1 ? 3 : 0] * C;                 \
                    const T w0 = w[0], w1 = NSW > 0 ? w[1] : 0, w2 = NSW > 1 ? w[2] : 0, w3 = NSW > 1 ? w[3] : 0; \
                    /* corners may coincide (size-1 axes, clamped borders): add one corner at a time */          \
                    _Pragma("omp simd") for (int64_t c = lo; c < hi; ++c) d0[c] += w0 * g[c];                     \
                    if (NSW > 0) {                                                                                \
                        _Pragma("omp simd") for (int64_t c = lo; c < hi; ++c) d1[c] += w1 * g[c];                 \
                    }                                                                                             \
                    if (NSW > 1) {                                                                                \
                        _Pragma("omp simd") for (int64_t c = lo; c < hi; ++c) d2[c] += w2 * g[c];                 \
                        _Pragma("omp simd") for (int64_t c = lo; c < hi; ++c) d3[c] += w3 * g[c];                 \
                    }                                                                                             \
                }                                                                                                 \
            }                                                                                                     \
        }                                                                                                         \
    }

/* ---- exported entry points: dispatch on the number of swing axes ---- */
#define DEFINE_KERNELS(T, SUF)                                                                                    \
    DEFINE_POINT(T, SUF)                                                                                          \
    DEFINE_SAMPLE(T, SUF, 0)                                                                                      \
    DEFINE_SAMPLE(T, SUF, 1)                                                                                      \
    DEFINE_SAMPLE(T, SUF, 2)                                                                                      \
    DEFINE_GATHER(T, SUF, 0)                                                                                      \
    DEFINE_GATHER(T, SUF, 1)                                                                                      \
    DEFINE_GATHER(T, SUF, 2)                                                                                      \
    DEFINE_SCATTER(T, SUF, 0)                                                                                     \
    DEFINE_SCATTER(T, SUF, 1)                                                                                     \
    DEFINE_SCATTER(T, SUF, 2)                                                                                     \
    void snake_sample_##SUF(const T *x, const T *delta, T scope, T *s, const int64_t *gi, int64_t n0, int64_t n1,  \
                            int64_t r0, int64_t r1) {                                                             \
        switch (gi[G_NSW]) {                                                                                      \
            case 0: sample_##SUF##_0(x, delta, scope, s, gi, n0, n1, r0, r1); break;                                \
            case 1: sample_##SUF##_1(x, delta, scope, s, gi, n0, n1, r0, r1); break;                                \
            default: sample_##SUF##_2(x, delta, scope, s, gi, n0, n1, r0, r1);                                      \
        }                                                                                                         \
    }                                                                                                             \
    void snake_gather_backward_##SUF(const T *x, const T *delta, T scope, const T *gt, T *s, T *gdelta,               \
                                     const int64_t *gi, int64_t n0, int64_t n1, int64_t r0, int64_t r1) {         \
        switch (gi[G_NSW]) {                                                                                      \
            case 0: gather_##SUF##_0(x, delta, scope, gt, s, gdelta, gi, n0, n1, r0, r1); break;                      \
            case 1: gather_##SUF##_1(x, delta, scope, gt, s, gdelta, gi, n0, n1, r0, r1); break;                      \
            default: gather_##SUF##_2(x, delta, scope, gt, s, gdelta, gi, n0, n1, r0, r1);                            \
        }                                                                                                         \
    }                                                                                                             \
    void snake_scatter_##SUF(T *gx, const T *delta, T scope, const T *gt, const int64_t *gi, int64_t n0, int64_t n1, \
                             int64_t b0, int64_t b1, int64_t blocks) {                                            \
        switch (gi[G_NSW]) {                                                                                      \
            case 0: scatter_##SUF##_0(gx, delta, scope, gt, gi, n0, n1, b0, b1, blocks); break;                     \
            case 1: scatter_##SUF##_1(gx, delta, scope, gt, gi, n0, n1, b0, b1, blocks); break;                     \
            default: scatter_##SUF##_2(gx, delta, scope, gt, gi, n0, n1, b0, b1, blocks);                           \
        }                                                                                                         \
    }

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)

/* ================================================================================================================
 * scSE, "add" mode (nnunet_tubeconv.blocks.scse): out = x * (z[c] + q[n]) with q = sigmoid(bs + sum_c ws[c] x[c, n]).
 * x, out, g, gx: (B, C, N) channels-first; z, gpool: (B, C); q, gl: (B, N). Work items: (b, block of positions);
 * kernels that reduce over positions write one partial row per item (gz_part, gws_part: (items, C)).
 * ============================================================================================================== */
#define SCSE_BLOCK 256

#define DEFINE_SCSE(T, SUF)                                                                                       \
    /* q and out, one block of positions at a time (x is read from memory once) */                                \
    void scse_add_forward_##SUF(const T *x, const T *ws, T bs, const T *z, T *q, T *out, int64_t B, int64_t C,   \
                                int64_t N, int64_t i0, int64_t i1) {                                              \
        const int64_t nblk = (N + SCSE_BLOCK - 1) / SCSE_BLOCK;                                                   \
        _Pragma("omp parallel for schedule(static)") for (int64_t item = i0; item < i1; ++item) {                 \
            const int64_t b = item / nblk, n0 = (item % nblk) * SCSE_BLOCK;                                       \
            const int64_t len = N - n0 < SCSE_BLOCK ? N - n0 : SCSE_BLOCK;                                        \
            T s[SCSE_BLOCK];                                                                                      \
            for (int64_t i = 0; i < len; ++i) s[i] = bs;                                                          \
            for (int64_t c = 0; c < C; ++c) {                                                                     \
                const T *xc = x + (b * C + c) * N + n0, wc = ws[c];                                               \
                _Pragma("omp simd") for (int64_t i = 0; i < len; ++i) s[i] += wc * xc[i];                         \
            }                                                                                                     \
            T *qb = q + b * N + n0;                                                                               \
            for (int64_t i = 0; i < len; ++i) qb[i] = (T)1 / ((T)1 + exp(-s[i]));                                 \
            for (int64_t c = 0; c < C; ++c) {                                                                     \
                const T *xc = x + (b * C + c) * N + n0;                                                           \
                T *oc = out + (b * C + c) * N + n0;                                                               \
                const T zc = z[b * C + c];                                                                        \
                _Pragma("omp simd") for (int64_t i = 0; i < len; ++i) oc[i] = xc[i] * (zc + qb[i]);               \
            }                                                                                                     \
        }                                                                                                         \
    }                                                                                                             \
    /* backward, phase 1: gl = (sum_c g x) q (1 - q); partial sums over the item's positions of g x (-> grad z)  \
     * and of x gl (-> grad ws) */                                                                                \
    void scse_add_backward1_##SUF(const T *g, const T *x, const T *q, T *gl, T *gz_part, T *gws_part, int64_t B, \
                                  int64_t C, int64_t N, int64_t i0, int64_t i1) {                                 \
        const int64_t nblk = (N + SCSE_BLOCK - 1) / SCSE_BLOCK;                                                   \
        _Pragma("omp parallel for schedule(static)") for (int64_t item = i0; item < i1; ++item) {                 \
            const int64_t b = item / nblk, n0 = (item % nblk) * SCSE_BLOCK;                                       \
            const int64_t len = N - n0 < SCSE_BLOCK ? N - n0 : SCSE_BLOCK;                                        \
            T acc[SCSE_BLOCK];                                                                                    \
            for (int64_t i = 0; i < len; ++i) acc[i] = 0;                                                         \
            for (int64_t c = 0; c < C; ++c) {                                                                     \
                const T *xc = x + (b * C + c) * N + n0, *gc = g + (b * C + c) * N + n0;                           \
                T sum = 0;                                                                                        \
                _Pragma("omp simd reduction(+ : sum)") for (int64_t i = 0; i < len; ++i) {                        \
                    const T p = gc[i] * xc[i];                                                                    \
                    acc[i] += p;                                                                                  \
                    sum += p;                                                                                     \
                }                                                                                                 \
                gz_part[item * C + c] = sum;                                                                      \
            }                                                                                                     \
            const T *qb = q + b * N + n0;                                                                         \
            T *glb = gl + b * N + n0;                                                                             \
            for (int64_t i = 0; i < len; ++i) glb[i] = acc[i] * qb[i] * ((T)1 - qb[i]);                           \
            for (int64_t c = 0; c < C; ++c) {                                                                     \
                const T *xc = x + (b * C + c) * N + n0;                                                           \
                T sum = 0;                                                                                        \
                _Pragma("omp simd reduction(+ : sum)") for (int64_t i = 0; i < len; ++i) sum += xc[i] * glb[i];   \
                gws_part[item * C + c] = sum;                                                                     \
            }                                                                                                     \
        }                                                                                                         \
    }                                                                                                             \
    /* backward, phase 2: gx = g (z + q) + ws gl + gpool / N (gpool: gradient of the channel mean) */             \
    void scse_add_backward2_##SUF(const T *g, const T *z, const T *q, const T *gl, const T *ws, const T *gpool,   \
                                  T *gx, int64_t B, int64_t C, int64_t N, int64_t i0, int64_t i1) {               \
        const int64_t nblk = (N + SCSE_BLOCK - 1) / SCSE_BLOCK;                                                   \
        const T inv_n = (T)1 / (T)N;                                                                              \
        _Pragma("omp parallel for schedule(static)") for (int64_t item = i0; item < i1; ++item) {                 \
            const int64_t b = item / nblk, n0 = (item % nblk) * SCSE_BLOCK;                                       \
            const int64_t len = N - n0 < SCSE_BLOCK ? N - n0 : SCSE_BLOCK;                                        \
            const T *qb = q + b * N + n0, *glb = gl + b * N + n0;                                                 \
            for (int64_t c = 0; c < C; ++c) {                                                                     \
                const T *gc = g + (b * C + c) * N + n0;                                                           \
                T *oc = gx + (b * C + c) * N + n0;                                                                \
                const T zc = z[b * C + c], wc = ws[c], pc = gpool[b * C + c] * inv_n;                             \
                _Pragma("omp simd") for (int64_t i = 0; i < len; ++i) oc[i] =                                     \
                    gc[i] * (zc + qb[i]) + wc * glb[i] + pc;                                                      \
            }                                                                                                     \
        }                                                                                                         \
    }

DEFINE_SCSE(float, f32)
DEFINE_SCSE(double, f64)
