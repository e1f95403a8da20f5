/* psum CPU kernels: correct rounding into a FloatFormat, on IEEE binary64 patterns.
 *
 * Every value is handled as the bit pattern of a double. Rounding a finite double
 * into a format (docs/semantics.md, section 2) is integer arithmetic on its pattern:
 * positive doubles are ordered like their patterns, and inside one binade (and across
 * the whole subnormal range) the pattern is a fixed-point number, so rounding to a
 * quantum 2^t is rounding the pattern to a multiple of 2^(t - quantum of the double).
 *
 * The rounding takes a "sticky direction": when the exact value is not the double
 * itself but lies strictly between it and its neighbour (as when a double sum carries
 * a nonzero TwoSum error), -1/+1 says on which side. Because every rounding breakpoint
 * of the target format (its values and the midpoints between them) is a double, this
 * one bit of side information makes the result the correct rounding of the exact
 * value. That is what makes the MAC kernels exact, not just "float64 and round".
 *
 * Build: any C99 compiler with OpenMP; must NOT be built with -ffast-math or FMA
 * contraction (-ffp-contract=off), which would break the exact TwoSum.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#define PSUM_SIGN ((uint64_t)1 << 63)
#define PSUM_INF ((uint64_t)0x7ff0000000000000ULL)

/* Keep in sync with emulator/_native.py (ctypes mirror). Patterns are of doubles;
 * everything a mode decides is precomputed here so the kernels only select. */
typedef struct {
    int64_t man_bits;         /* M, stored mantissa bits */
    int64_t emin;             /* exponent of the smallest normal: 1 - bias */
    int64_t subnormals;       /* 1: gradual underflow; 0: flush to zero */
    int64_t nearest_even;     /* 1: ties to even; 0: toward zero */
    int64_t max_abs;          /* largest finite value */
    int64_t overflow_abs;     /* what a rounded result above max becomes (Inf or max) */
    int64_t inf_abs;          /* what an Inf input becomes (Inf or max) */
    int64_t min_normal_abs;   /* 2^emin */
    int64_t min_sub_abs;      /* 2^(emin - M) */
    int64_t half_min_sub_abs; /* 2^(emin - M - 1) */
    int64_t ftz_up_abs;       /* 2^emin - 2^(emin - M - 2): FTZ rounds up from here */
    int64_t nan_result;       /* full pattern written for NaN results */
    int64_t rare_below_abs;   /* the fast MAC step leaves magnitudes in (0, this) alone */
} psum_fmt;

typedef union { double d; uint64_t u; } psum_pun;
static inline uint64_t bits_of(double x) { psum_pun p = {.d = x}; return p.u; }
static inline double double_of(uint64_t u) { psum_pun p = {.u = u}; return p.d; }

/* Round the magnitude pattern `a` (finite, nonzero) into f. sticky_dir: 0 if the exact
 * magnitude is a itself, +1 if it is slightly above a, -1 if slightly below (strictly
 * between a and the next double in that direction).
 *
 * Written without branches (every case is computed, then selected) so that the
 * compiler vectorizes the loops that call it; the cases are:
 *   normal result:  round the pattern at bit s (s = format quantum - double quantum)
 *   |x| < 2^(emin-M) with subnormals: 0 or the smallest subnormal
 *   |x| < 2^emin without subnormals: 0 or the smallest normal (flush after rounding) */
static inline int64_t round_abs(int64_t a, int64_t sticky_dir, const psum_fmt f)
{
    const int64_t sticky = sticky_dir != 0;
    a -= (int64_t)(sticky_dir < 0); /* exact value now strictly between a and a + 1 ulp */

    int64_t exp_field = a >> 52;
    int64_t e = exp_field - 1023;                            /* leading-bit exponent */
    int64_t quantum = (e < -1022 ? -1022 : e) - 52;          /* double's quantum at a */
    int64_t target = (e < f.emin ? f.emin : e) - f.man_bits; /* format's quantum */
    int64_t s = target - quantum;                            /* 2..52 where used */
    s = s > 52 ? 52 : (s < 0 ? 0 : s); /* clamped only for the cases selected away below */
    /* 2^(s-1); (s > 0) is 1, written so that the shift has a vector operand */
    int64_t half = ((int64_t)(s > 0) << s) >> 1;
    /* parity of the kept significand; at s = 52 its last bit is the implicit one */
    int64_t significand = (a & (((int64_t)1 << 52) - 1)) | ((int64_t)(exp_field != 0) << 52);
    int64_t odd = (significand >> s) & 1;
    int64_t r = ((a + f.nearest_even * (half - 1 + (sticky | odd))) >> s) << s;
    r = r > f.max_abs ? f.overflow_abs : r;

    int64_t tiny_up = f.nearest_even & ((a > f.half_min_sub_abs) |
                                        ((a == f.half_min_sub_abs) & sticky));
    int64_t flush_up = f.nearest_even & (a >= f.ftz_up_abs);
    r = (f.subnormals & (a < f.min_sub_abs)) ? tiny_up * f.min_sub_abs : r;
    r = ((1 - f.subnormals) & (a < f.min_normal_abs)) ? flush_up * f.min_normal_abs : r;
    return r;
}

/* Round the double pattern u into f (sticky_dir as in round_abs, relative to |u|). */
static inline uint64_t round_bits(uint64_t u, int64_t sticky_dir, const psum_fmt f)
{
    uint64_t sign = u & PSUM_SIGN;
    int64_t a = (int64_t)(u & ~PSUM_SIGN);
    uint64_t r = sign | (uint64_t)round_abs(a, sticky_dir, f);
    r = a == 0 ? u : r;
    r = a == (int64_t)PSUM_INF ? (sign | (uint64_t)f.inf_abs) : r;
    r = a > (int64_t)PSUM_INF ? (uint64_t)f.nan_result : r;
    return r;
}

/* Contiguous ranges per thread; the inner loops are plain so that they vectorize. */
static void quantize_range_f64(const double *restrict x, double *restrict y, int64_t n,
                               const psum_fmt f)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = double_of(round_bits(bits_of(x[i]), 0, f));
}

static void quantize_range_f32(const float *restrict x, float *restrict y, int64_t n,
                               const psum_fmt f)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)double_of(round_bits(bits_of((double)x[i]), 0, f));
}

#define PSUM_SPLIT(n, threads, body)                                              \
    do {                                                                          \
        int nt_ = (n) > 65536 ? (threads) : 1;                                    \
        _Pragma("omp parallel num_threads(nt_)")                                  \
        {                                                                         \
            int64_t t_ = omp_get_thread_num(), k_ = omp_get_num_threads();        \
            int64_t first = (n) * t_ / k_, last = (n) * (t_ + 1) / k_;            \
            body;                                                                 \
        }                                                                         \
    } while (0)

void psum_quantize_f64(const double *x, double *y, int64_t n, const psum_fmt *fp, int threads)
{
    const psum_fmt f = *fp;
    PSUM_SPLIT(n, threads, quantize_range_f64(x + first, y + first, last - first, f));
}

void psum_quantize_f32(const float *x, float *y, int64_t n, const psum_fmt *fp, int threads)
{
    const psum_fmt f = *fp;
    PSUM_SPLIT(n, threads, quantize_range_f32(x + first, y + first, last - first, f));
}

/* ---------------------------------------------------------------------------------
 * Rounding of exact sums given as TwoSum pairs.
 *
 * hi = RN(x + y) and lo = (x + y) - hi exactly (|lo| <= ulp(hi)/2): the exact sum lies
 * on the side of hi that lo's sign says, strictly closer than the next double. */
static inline int64_t sticky_of(double hi, double lo)
{
    int64_t nonzero = lo != 0.0;
    int64_t same_side = (lo > 0.0) == (hi > 0.0);
    return nonzero * (2 * same_side - 1);
}

/* TwoSum (Knuth): returns hi = RN(x + y) and sets *lo = (x + y) - hi exactly. */
static inline double two_sum(double x, double y, double *lo)
{
    double hi = x + y, back = hi - x;
    *lo = (x - (hi - back)) + (y - back);
    return hi;
}

static inline double two_sum_round(double x, double y, const psum_fmt f)
{
    double lo, hi = two_sum(x, y, &lo);
    return double_of(round_bits(bits_of(hi), sticky_of(hi, lo), f));
}

static void round_sum_range(const double *restrict hi, const double *restrict lo,
                            double *restrict y, int64_t n, const psum_fmt f)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = double_of(round_bits(bits_of(hi[i]), sticky_of(hi[i], lo[i]), f));
}

/* y = round(hi + lo) for TwoSum pairs (hi, lo). */
void psum_round_sum_f64(const double *hi, const double *lo, double *y, int64_t n,
                        const psum_fmt *fp, int threads)
{
    const psum_fmt f = *fp;
    PSUM_SPLIT(n, threads, round_sum_range(hi + first, lo + first, y + first, last - first, f));
}

/* ---------------------------------------------------------------------------------
 * Emulated matmul: out[i, j] = the sequential dot product of docs/semantics.md §4-5.
 *
 * a is (M, K) and b is (K, N), row-major float32 holding values already rounded to the
 * input formats (so every product is exact in double). For each output element:
 *     acc = +0; for k in [k0, k0 + C): acc = round_acc(acc + round_p(a[i,k] * b[k,j]))
 * chunk by chunk (C = K without chunking), and with chunking
 *     outer = round_outer(outer + acc) after each chunk, outer starting at +0.
 * The order over k is strictly sequential; parallelism and SIMD are across (i, j). */

#define PSUM_IB 4  /* rows of a sharing one row of b from L1 */
#define PSUM_JB 64 /* columns of b per block: the vectorized dimension */

typedef struct {
    psum_fmt acc;        /* the accumulator (inner accumulator when chunked) */
    psum_fmt product;    /* product format; used when has_product */
    psum_fmt outer;      /* chunk accumulator; used when chunk > 0 */
    int64_t has_product; /* 1: round each product first (unfused MAC) */
    int64_t chunk;       /* C; 0 means no chunking */
    int64_t narrow;      /* 1: accumulate in float32 lanes (see matmul_block32) */
} psum_mac;

/* The general MAC step for one row segment: acc[j] = round(acc[j] + p_j). */
static void accumulate_row_general(double *restrict acc, const float *restrict brow, double av,
                                   int64_t jb, const psum_mac *m)
{
    const psum_fmt fa = m->acc, fp = m->product;
    if (m->has_product) {
        for (int64_t j = 0; j < jb; j++) {
            double p = double_of(round_bits(bits_of(av * (double)brow[j]), 0, fp));
            acc[j] = two_sum_round(acc[j], p, fa);
        }
    } else {
        for (int64_t j = 0; j < jb; j++)
            acc[j] = two_sum_round(acc[j], av * (double)brow[j], fa);
    }
}

/* The same step for the common case, without the branches for rare ones: every
 * result that is zero, normal or subnormal (not below the smallest subnormal), finite
 * and not above max is computed right. The rounding position follows from the
 * exponent field: s = 52 - M, plus emin - e below the smallest normal when the format
 * has subnormals (flush-to-zero formats round at 52 - M and flush after). Writes
 * next[j]; returns nonzero if any lane is a rare case (overflow, Inf/NaN, below the
 * smallest subnormal, a float64 subnormal), and then the caller discards next and
 * takes the general step. One variant per (subnormals, nearest_even) pair, so that
 * each loop carries only its mode's work. */
#define PSUM_FAST_STEP(NAME, SUB, NE)                                                     \
    static int64_t NAME(double *restrict next, const double *restrict acc,                \
                        const float *restrict brow, double av, int64_t jb, const psum_fmt f) \
    {                                                                                     \
        const int64_t base = 52 - f.man_bits, min_normal_field = f.emin + 1023;           \
        const uint64_t rare_below = (uint64_t)f.rare_below_abs - 1;                       \
        int64_t rare = 0;                                                                 \
        for (int64_t j = 0; j < jb; j++) {                                                \
            double lo, hi = two_sum(acc[j], av * (double)brow[j], &lo);                   \
            uint64_t u = bits_of(hi), ul = bits_of(lo);                                   \
            int64_t sticky = (ul & ~PSUM_SIGN) != 0;                                      \
            /* exact sum strictly below |hi|: round the double below, with sticky */      \
            int64_t a = (int64_t)(u & ~PSUM_SIGN) - (sticky & (int64_t)((ul ^ u) >> 63)); \
            int64_t s = base;                                                             \
            if (SUB) {                                                                    \
                int64_t d = min_normal_field - (a >> 52);                                 \
                s += d > 0 ? d : 0;                                                       \
                s = s < 52 ? s : 52; /* larger only for the rare tiny values */           \
            }                                                                             \
            int64_t r;                                                                    \
            if (NE) {                                                                     \
                int64_t t = a >> (s - 1);             /* kept bits and the round bit */   \
                int64_t rest = ((t << (s - 1)) != a) | sticky;                            \
                int64_t q = t >> 1;                                                       \
                int64_t odd = (q | (s == 52)) & 1;    /* at s = 52: the implicit 1 */     \
                r = (q + (t & 1 & (rest | odd))) << s;                                    \
            } else {                                                                      \
                r = (a >> s) << s;                                                        \
            }                                                                             \
            if (!SUB) /* flush to zero, after rounding (a mask keeps it vectorizable) */  \
                r &= -(int64_t)(r >= f.min_normal_abs);                                   \
            rare |= ((uint64_t)r > (uint64_t)f.max_abs) | ((uint64_t)(a - 1) < rare_below); \
            next[j] = double_of((u & PSUM_SIGN) | (uint64_t)r);                           \
        }                                                                                 \
        return rare;                                                                      \
    }

PSUM_FAST_STEP(fast_step_sub_ne, 1, 1)
PSUM_FAST_STEP(fast_step_sub_rz, 1, 0)
PSUM_FAST_STEP(fast_step_ftz_ne, 0, 1)
PSUM_FAST_STEP(fast_step_ftz_rz, 0, 0)

typedef int64_t (*psum_fast_step)(double *restrict, const double *restrict,
                                  const float *restrict, double, int64_t, const psum_fmt);

/* The nearest-even float64 step with rounding by the float adder (as
 * PSUM_FAST_STEP32_FR, with C = 1.5 * 2^(q + 52)), for formats whose breakpoints are
 * all normal doubles: then products of float32 inputs, TwoSum terms and sums are
 * normal doubles or zero, and the rare cases are |sum| above max, Inf and NaN. */
#define PSUM_FAST_STEP_FR(NAME, SUB)                                                      \
    static int64_t NAME(double *restrict next, const double *restrict acc,                \
                        const float *restrict brow, double av, int64_t jb, const psum_fmt f) \
    {                                                                                     \
        const uint64_t k = ((uint64_t)(52 - f.man_bits) << 52) + ((uint64_t)1 << 51);     \
        const uint64_t low = ((uint64_t)(f.emin + 1023) << 52) + k;                        \
        const double min_normal = double_of((uint64_t)f.min_normal_abs);                  \
        int64_t rare = 0;                                                                 \
        for (int64_t j = 0; j < jb; j++) {                                                \
            double lo, hi = two_sum(acc[j], av * (double)brow[j], &lo);                   \
            uint64_t u = bits_of(hi), ul = bits_of(lo);                                   \
            uint64_t sticky = (ul & ~PSUM_SIGN) != 0;                                     \
            uint64_t p = u - (sticky & ((ul ^ u) >> 63)); /* hi's sign kept */            \
            uint64_t magic = (p & PSUM_INF) + k;                                          \
            if (SUB)                                                                      \
                magic = magic > low ? magic : low;                                        \
            double c = double_of(magic);                                                  \
            double r = (double_of(p | sticky) + c) - c;                                   \
            if (!SUB)                                                                     \
                r = (r >= min_normal) | (r <= -min_normal) ? r : 0.0;                     \
            rare |= (u & ~PSUM_SIGN) > (uint64_t)f.max_abs;                               \
            next[j] = double_of(bits_of(r) | (u & PSUM_SIGN));                            \
        }                                                                                 \
        return rare;                                                                      \
    }

PSUM_FAST_STEP_FR(fast_step_sub_fr, 1)
PSUM_FAST_STEP_FR(fast_step_ftz_fr, 0)

static psum_fast_step fast_step_for(const psum_fmt *f)
{
    const int64_t emax = (f->max_abs >> 52) - 1023;
    if (f->nearest_even && f->emin - f->man_bits - 2 >= -1022 && emax - f->man_bits + 52 <= 1022)
        return f->subnormals ? fast_step_sub_fr : fast_step_ftz_fr;
    if (f->subnormals)
        return f->nearest_even ? fast_step_sub_ne : fast_step_sub_rz;
    return f->nearest_even ? fast_step_ftz_ne : fast_step_ftz_rz;
}

/* ---------------------------------------------------------------------------------
 * The same MAC step in float32 lanes (twice the SIMD width), for the common case of
 * an accumulator with M <= 22 whose values, midpoints and subnormal midpoints are all
 * float32 numbers, and inputs whose products have at most 24 significant bits (bf16,
 * fp16, FP8): then a normal float32 product is exact, float32 TwoSum is exact, and the
 * sticky rounding of the float32 pattern is the correct rounding, as in the float64
 * step. A product that is not a normal float32 (underflow, subnormal) or any rare
 * result sends the row to the general float64 step. The caller (Python) decides
 * eligibility. */

typedef union { float f; uint32_t u; } psum_pun32;
static inline uint32_t bits32(float x) { psum_pun32 p = {.f = x}; return p.u; }
static inline float float_of(uint32_t u) { psum_pun32 p = {.u = u}; return p.f; }

static inline float two_sum32(float x, float y, float *lo)
{
    float hi = x + y, back = hi - x;
    *lo = (x - (hi - back)) + (y - back);
    return hi;
}

/* Whether the float32 product y = a * w of two nonzero-flagged inputs is inexact:
 * subnormal, or zero from nonzero operands (a_nonzero: a != 0). */
static inline int32_t inexact_product32(float y, int32_t a_nonzero, float w)
{
    uint32_t uy = bits32(y) & 0x7fffffffu;
    return ((uy - 1u) < 0x007fffffu) | ((uy == 0) & a_nonzero & (w != 0.0f));
}

typedef struct {
    int32_t man_bits, emin, nearest_even, subnormals;
    int32_t max_abs, min_normal_abs, rare_below_abs;
    int32_t float_round; /* 1: the float adder rounds (PSUM_FAST_STEP32_FR) */
} psum_fmt32;

static psum_fmt32 narrow_params(const psum_fmt *f)
{
    psum_fmt32 g;
    g.man_bits = (int32_t)f->man_bits;
    g.emin = (int32_t)f->emin;
    g.nearest_even = (int32_t)f->nearest_even;
    g.subnormals = (int32_t)f->subnormals;
    g.max_abs = (int32_t)bits32((float)double_of((uint64_t)f->max_abs));
    g.min_normal_abs = (int32_t)bits32((float)double_of((uint64_t)f->min_normal_abs));
    int32_t below = f->subnormals ? (int32_t)bits32((float)double_of((uint64_t)f->min_sub_abs)) : 0;
    g.rare_below_abs = below > 0x00800000 ? below : 0x00800000; /* float32 subnormals too */
    int64_t emax = (f->max_abs >> 52) - 1023;
    g.float_round = f->nearest_even && f->man_bits <= 21 && emax - f->man_bits + 23 <= 127;
    return g;
}

#define PSUM_FAST_STEP32(NAME, SUB, NE)                                                   \
    static int32_t NAME(float *restrict next, const float *restrict acc,                  \
                        const float *restrict brow, float av, int64_t jb, const psum_fmt32 f) \
    {                                                                                     \
        const int32_t base = 23 - f.man_bits, min_normal_field = f.emin + 127;            \
        const uint32_t rare_below = (uint32_t)f.rare_below_abs - 1;                       \
        const int32_t a_nonzero = av != 0.0f;                                             \
        int32_t rare = 0;                                                                 \
        for (int64_t j = 0; j < jb; j++) {                                                \
            float w = brow[j], y = av * w, lo, hi = two_sum32(acc[j], y, &lo);           \
            uint32_t u = bits32(hi), ul = bits32(lo);                                     \
            int32_t inexact = inexact_product32(y, a_nonzero, w);                         \
            int32_t sticky = (ul & 0x7fffffffu) != 0;                                     \
            int32_t a = (int32_t)(u & 0x7fffffffu) - (sticky & (int32_t)((ul ^ u) >> 31)); \
            int32_t s = base;                                                             \
            if (SUB) {                                                                    \
                int32_t d = min_normal_field - (a >> 23);                                 \
                s += d > 0 ? d : 0;                                                       \
                s = s < 23 ? s : 23;                                                      \
            }                                                                             \
            int32_t r;                                                                    \
            if (NE) {                                                                     \
                int32_t t = a >> (s - 1);                                                 \
                int32_t rest = ((t << (s - 1)) != a) | sticky;                            \
                int32_t q = t >> 1;                                                       \
                int32_t odd = (q | (s == 23)) & 1;                                        \
                r = (q + (t & 1 & (rest | odd))) << s;                                    \
            } else {                                                                      \
                r = (a >> s) << s;                                                        \
            }                                                                             \
            if (!SUB)                                                                     \
                r &= -(int32_t)(r >= f.min_normal_abs);                                   \
            rare |= ((uint32_t)r > (uint32_t)f.max_abs) | ((uint32_t)(a - 1) < rare_below) | inexact; \
            next[j] = float_of((u & 0x80000000u) | (uint32_t)r);                          \
        }                                                                                 \
        return rare;                                                                      \
    }

/* The nearest-even step with rounding by the float adder, for M <= 21: the sticky
 * bit is jammed into the last bit of the pattern of the exact sum's neighbour toward
 * zero (round to odd, which with two bits or more to spare keeps every tie decision),
 * then (v + C) - C with C = 1.5 * 2^(q + 23) rounds v to a multiple of 2^q, q the
 * format's quantum at v: e - M, held at emin - M from the subnormals down (SUB);
 * flush-to-zero formats round at precision M, then flush. Values below the smallest
 * subnormal need no special case. Rare: |sum| above max, Inf/NaN, float32
 * subnormal sums, inexact products. Fewer operations than the integer rounding. */
#define PSUM_FAST_STEP32_FR(NAME, SUB)                                                    \
    static int32_t NAME(float *restrict next, const float *restrict acc,                  \
                        const float *restrict brow, float av, int64_t jb, const psum_fmt32 f) \
    {                                                                                     \
        const uint32_t k = ((uint32_t)(23 - f.man_bits) << 23) + (1u << 22);              \
        const uint32_t low = ((uint32_t)(f.emin + 127) << 23) + k;                         \
        const float min_normal = float_of((uint32_t)f.min_normal_abs);                    \
        const int32_t a_nonzero = av != 0.0f;                                             \
        int32_t rare = 0;                                                                 \
        for (int64_t j = 0; j < jb; j++) {                                                \
            float w = brow[j], y = av * w, lo, hi = two_sum32(acc[j], y, &lo);           \
            uint32_t u = bits32(hi), ul = bits32(lo);                                     \
            int32_t inexact = inexact_product32(y, a_nonzero, w);                         \
            uint32_t sticky = (ul & 0x7fffffffu) != 0;                                    \
            uint32_t p = u - (sticky & ((ul ^ u) >> 31)); /* hi's sign kept */            \
            uint32_t magic = (p & 0x7f800000u) + k;                                       \
            if (SUB)                                                                      \
                magic = magic > low ? magic : low;                                        \
            float c = float_of(magic);                                                    \
            float r = (float_of(p | sticky) + c) - c;                                     \
            if (!SUB)                                                                     \
                r = (r >= min_normal) | (r <= -min_normal) ? r : 0.0f;                    \
            uint32_t ua = u & 0x7fffffffu;                                                \
            rare |= (ua > (uint32_t)f.max_abs) | ((ua - 1u) < 0x007fffffu) | inexact;     \
            next[j] = float_of(bits32(r) | (u & 0x80000000u));                            \
        }                                                                                 \
        return rare;                                                                      \
    }

PSUM_FAST_STEP32_FR(fast_step32_sub_fr, 1)
PSUM_FAST_STEP32_FR(fast_step32_ftz_fr, 0)
PSUM_FAST_STEP32(fast_step32_sub_ne, 1, 1)
PSUM_FAST_STEP32(fast_step32_sub_rz, 1, 0)
PSUM_FAST_STEP32(fast_step32_ftz_ne, 0, 1)
PSUM_FAST_STEP32(fast_step32_ftz_rz, 0, 0)

typedef int32_t (*psum_fast_step32)(float *restrict, const float *restrict, const float *restrict,
                                    float, int64_t, const psum_fmt32);

/* A finished dot product into the float64 output, or the float32 one when given (its
 * values are float32 numbers: the caller checks the result format). */
static inline void store_result(double *out, float *out32, int64_t index, double value)
{
    if (out32)
        out32[index] = (float)value;
    else
        out[index] = value;
}

/* One block of PSUM_IB rows x PSUM_JB columns, its accumulators in lanes of type T:
 * the k-loop in runs of C terms (C = K without chunking), each MAC step of a row by the
 * lane type's fast step or, when a lane meets a rare case (or products are rounded), by
 * the general float64 step; each run's results added into the float64 outer
 * accumulator. Every value an accumulator holds is exactly a T. */
#define PSUM_MATMUL_BLOCK(NAME, T, FAST_T, PARAMS_T)                                         \
    static void NAME(const float *a, const float *b, double *out, float *out32, int64_t ldb,  \
                     int64_t ldo, int64_t K, int64_t i0, int64_t ib, int64_t j0, int64_t jb,  \
                     const psum_mac *m, FAST_T fast, const PARAMS_T params)                  \
    {                                                                                        \
        T buf[2][PSUM_IB][PSUM_JB];                                                          \
        T *acc[PSUM_IB], *spare[PSUM_IB]; /* double buffers: the fast step writes spare */   \
        double outer[PSUM_IB][PSUM_JB], wide[PSUM_JB];                                       \
        const int64_t step = m->chunk > 0 ? m->chunk : (K > 0 ? K : 1);                      \
        for (int64_t ii = 0; ii < ib; ii++) {                                                \
            acc[ii] = buf[0][ii];                                                            \
            spare[ii] = buf[1][ii];                                                          \
            for (int64_t j = 0; j < jb; j++) {                                               \
                acc[ii][j] = 0;                                                              \
                outer[ii][j] = 0.0;                                                          \
            }                                                                                \
        }                                                                                    \
        for (int64_t k0 = 0; k0 < K; k0 += step) {                                           \
            int64_t k1 = k0 + step < K ? k0 + step : K;                                      \
            for (int64_t ii = 0; ii < ib; ii++)                                              \
                for (int64_t j = 0; j < jb; j++)                                             \
                    acc[ii][j] = 0;                                                          \
            for (int64_t k = k0; k < k1; k++) {                                              \
                const float *brow = b + k * ldb + j0;                                        \
                for (int64_t ii = 0; ii < ib; ii++) {                                        \
                    float av = a[(i0 + ii) * K + k];                                         \
                    if (!m->has_product && !fast(spare[ii], acc[ii], brow, (T)av, jb, params)) { \
                        T *t = acc[ii];                                                      \
                        acc[ii] = spare[ii];                                                 \
                        spare[ii] = t;                                                       \
                    } else {                                                                 \
                        for (int64_t j = 0; j < jb; j++)                                     \
                            wide[j] = (double)acc[ii][j];                                    \
                        accumulate_row_general(wide, brow, (double)av, jb, m);               \
                        for (int64_t j = 0; j < jb; j++)                                     \
                            acc[ii][j] = (T)wide[j];                                         \
                    }                                                                        \
                }                                                                            \
            }                                                                                \
            if (m->chunk > 0)                                                                \
                for (int64_t ii = 0; ii < ib; ii++)                                          \
                    for (int64_t j = 0; j < jb; j++)                                         \
                        outer[ii][j] = two_sum_round(outer[ii][j], (double)acc[ii][j], m->outer); \
        }                                                                                    \
        for (int64_t ii = 0; ii < ib; ii++)                                                  \
            for (int64_t j = 0; j < jb; j++)                                                 \
                store_result(out, out32, (i0 + ii) * ldo + j0 + j,                           \
                             m->chunk > 0 ? outer[ii][j] : (double)acc[ii][j]);              \
    }

PSUM_MATMUL_BLOCK(matmul_block, double, psum_fast_step, psum_fmt)
PSUM_MATMUL_BLOCK(matmul_block32, float, psum_fast_step32, psum_fmt32)

static psum_fast_step32 fast_step32_for(const psum_fmt32 *f)
{
    if (f->float_round)
        return f->subnormals ? fast_step32_sub_fr : fast_step32_ftz_fr;
    if (f->subnormals)
        return f->nearest_even ? fast_step32_sub_ne : fast_step32_sub_rz;
    return f->nearest_even ? fast_step32_ftz_ne : fast_step32_ftz_rz;
}

/* ---------------------------------------------------------------------------------
 * Register-tiled MAC steps with directed-rounding adds (AVX-512).
 *
 * The fast steps above spend most of their work on TwoSum (six adds) and on turning its
 * error term into a sticky bit and a neighbour toward zero. AVX-512 rounds each
 * operation as the instruction says, so the same two facts come from two fused
 * multiply-adds (y = a * w, exact inside them):
 *     rd = RD(acc + y), ru = RU(acc + y):  the sum is exact iff rd == ru, and when
 *     inexact they are the adjacent lane values around it, exactly one with an odd
 *     pattern (an exact zero sum comes out +0 from ru, as IEEE RN gives it, and -0
 *     only when both terms are -0).
 * The one with the odd pattern is the sum rounded to odd in the lane type; rounding it
 * to the format's quantum by the float adder, (v + C) - C with C = 1.5 * 2^(q + p - 1)
 * (p: the lane's precision, q: the format's quantum at v, held at emin - M in the
 * subnormal range), is the correct rounding of the exact sum because the lane keeps at
 * least two more bits than the format (round-to-odd theorem): ties to even with the
 * add rounding to nearest, toward zero with the add rounding toward zero on the
 * magnitude. The sign is put back for zero results; flush-to-zero formats clear
 * results below the smallest normal, keeping the sign.
 *
 * A lane whose rounded result is above the format's maximum (overflow, Inf, NaN) is
 * rare: that row's step is redone by the general float64 step. Everything else this
 * path excludes by its preconditions (checked by the caller): exact products, and
 * (float32 lanes) sums that are never float32 subnormals: every
 * nonzero product is a normal float32 (the smallest nonzero |a| times the smallest
 * nonzero |b| is at least 2^-126) and emin - M >= -102, so that a nonzero sum of an
 * accumulator value and a product is at least 2^(emin - M - 24) >= 2^-126. In float64
 * lanes products of float32 values and their sums with accumulator values are exact
 * or normal doubles for every format the float64 float-adder step takes.
 *
 * Tiles are PSUM_TR rows x 2 vectors; the accumulators stay in registers over the
 * k-loop, each b vector feeds PSUM_TR rows, and the lanes past the output's edge are
 * masked off (they accumulate zeros). */
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#include <immintrin.h>
#define PSUM_HAVE_TILES 1
#define PSUM_TR 4
#define PSUM_IEEE 2 /* the tiles' third mode (after 0: flush to zero, 1: subnormals) */
#define PSUM_RN (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define PSUM_RD (_MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)
#define PSUM_RU (_MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC)
#define PSUM_RZ (_MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC)

/* One MAC step of a vector in lanes of V (VI: its integer view, MASK: a lane mask;
 * PS, EPI, EPU: the intrinsics' element-type suffixes): acc + x * w, the product exact
 * inside the fused multiply-adds. The sum rounded to odd is rd if rd's pattern is odd,
 * else ru: when the sum is exact, rd == ru is the sum (an exact zero sum: -0 from rd,
 * even, so +0 from ru, as IEEE RN gives it; two -0 terms: -0 from both); when inexact,
 * rd and ru are adjacent patterns of one sign, so exactly one of them is odd, and that
 * one is the round-to-odd result. `ok` keeps the lanes whose result is at most the
 * format's maximum; a lane it clears is rare. */
#define PSUM_TILE_STEP(NAME, V, VI, MASK, PS, EPI, EPU)                                    \
    static inline __attribute__((always_inline)) V NAME(V acc, V x, V w, const VI expmask, \
        const VI k, const VI low, const VI one, const VI sign, const VI max_abs,          \
        const VI min_normal, const int sub, const int rz, MASK *ok)                        \
    {                                                                                      \
        V rd = _mm512_fmadd_round_##PS(x, w, acc, PSUM_RD), ru = _mm512_fmadd_round_##PS(x, w, acc, PSUM_RU); \
        VI rdi = _mm512_cast##PS##_si512(rd), rui = _mm512_cast##PS##_si512(ru);            \
        VI v = _mm512_mask_blend_##EPI(_mm512_test_##EPI##_mask(rdi, one), rui, rdi); /* odd */ \
        VI src = rz ? _mm512_andnot_si512(sign, v) : v; /* toward zero: round the magnitude */ \
        VI magic = _mm512_add_##EPI(_mm512_and_si512(src, expmask), k);                    \
        if (sub)                                                                           \
            magic = _mm512_max_##EPU(magic, low);                                          \
        V c = _mm512_castsi512_##PS(magic);                                                \
        V r = _mm512_sub_round_##PS(_mm512_add_round_##PS(_mm512_castsi512_##PS(src), c, rz ? PSUM_RZ : PSUM_RN), \
                                    c, PSUM_RN);                                           \
        VI ri = _mm512_ternarylogic_##EPI(_mm512_cast##PS##_si512(r), v, sign, 0xF8); /* r | (v & sign) */ \
        VI mag = rz ? _mm512_cast##PS##_si512(r) : _mm512_andnot_si512(sign, ri);          \
        if (!sub) /* flush to zero after rounding, keeping the sign */                     \
            ri = _mm512_mask_and_##EPI(ri, _mm512_cmplt_##EPU##_mask(mag, min_normal), ri, sign); \
        *ok = _mm512_mask_cmple_##EPU##_mask(*ok, mag, max_abs);                           \
        return _mm512_castsi512_##PS(ri);                                                  \
    }

PSUM_TILE_STEP(tile_step32, __m512, __m512i, __mmask16, ps, epi32, epu32)
PSUM_TILE_STEP(tile_step64, __m512d, __m512i, __mmask8, pd, epi64, epu64)

/* Lane-type helpers of the tiles: broadcast, masked load of a b row (float32
 * values, widened for float64 lanes), aligned spill and reload, integer broadcast. */
static inline __m512 set1_32(float x) { return _mm512_set1_ps(x); }
static inline __m512d set1_64(float x) { return _mm512_set1_pd((double)x); }
static inline __m512 load_32(const float *p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }
static inline __m512d load_64(const float *p, __mmask8 mask)
{
    return _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mask, p));
}
static inline __m512 fma_32(__m512 x, __m512 w, __m512 acc) { return _mm512_fmadd_round_ps(x, w, acc, PSUM_RN); }
static inline __m512d fma_64(__m512d x, __m512d w, __m512d acc) { return _mm512_fmadd_round_pd(x, w, acc, PSUM_RN); }
static inline void spill_32(float *p, __m512 v) { _mm512_store_ps(p, v); }
static inline void spill_64(double *p, __m512d v) { _mm512_store_pd(p, v); }
static inline __m512 reload_32(const float *p) { return _mm512_load_ps(p); }
static inline __m512d reload_64(const double *p) { return _mm512_load_pd(p); }
static inline __m512 zero_32(void) { return _mm512_setzero_ps(); }
static inline __m512d zero_64(void) { return _mm512_setzero_pd(); }
static inline __m512i set1i_32(int64_t x) { return _mm512_set1_epi32((int32_t)x); }
static inline __m512i set1i_64(int64_t x) { return _mm512_set1_epi64(x); }

/* The general float64 step for one row of a tile (accumulators spilled to acc[],
 * lanes j < jb), for a row with a rare lane. */
static __attribute__((noinline)) void general_32(float *acc, const float *brow, float av, int64_t jb,
                                                 const psum_mac *m)
{
    double wide[32];
    for (int64_t j = 0; j < jb; j++)
        wide[j] = (double)acc[j];
    accumulate_row_general(wide, brow, (double)av, jb, m);
    for (int64_t j = 0; j < jb; j++)
        acc[j] = (float)wide[j];
}

static __attribute__((noinline)) void general_64(double *acc, const float *brow, float av, int64_t jb,
                                                 const psum_mac *m)
{
    accumulate_row_general(acc, brow, (double)av, jb, m);
}

/* One tile: rows i0 .. i0+ib-1 (ib <= PSUM_TR), columns j0 .. j0+jb-1 (jb <= 2 LANES),
 * in lanes of T with MAN stored mantissa bits and exponent bias BIAS; the k-loop in
 * runs of C terms (C = K without chunking), each run's result added into the float64
 * outer accumulator when chunked. The float-adder constant of a lane's binade is its
 * exponent field plus k = ((MAN - M) << MAN) + 2^(MAN - 1); `low` is the constant of
 * the format's smallest normal binade. */
#define PSUM_TILE(NAME, T, V, MASK, LANES, S, MAN, BIAS, EXPMASK)                                      \
    static inline __attribute__((always_inline)) void NAME(const float *a, const float *b, double *out, \
        float *out32, int64_t ldb, int64_t ldo, int64_t K, int64_t i0, int64_t ib, int64_t j0,         \
        int64_t jb, const psum_mac *m, const int sub, const int rz)                                    \
    {                                                                                                  \
        const psum_fmt *f = &m->acc;                                                                   \
        const T max_t = (T)double_of((uint64_t)f->max_abs);                                            \
        const T normal_t = (T)double_of((uint64_t)f->min_normal_abs);                                  \
        int64_t max_i = 0, normal_i = 0;                                                               \
        memcpy(&max_i, &max_t, sizeof(T));                                                             \
        memcpy(&normal_i, &normal_t, sizeof(T));                                                       \
        const int64_t kk_ = ((int64_t)(MAN - f->man_bits) << MAN) + ((int64_t)1 << (MAN - 1));         \
        const __m512i expmask = set1i_##S(EXPMASK), one = set1i_##S(1);                                \
        const __m512i sign = set1i_##S((int64_t)((uint64_t)1 << (8 * sizeof(T) - 1)));                 \
        const __m512i k = set1i_##S(kk_), low = set1i_##S(((int64_t)(f->emin + BIAS) << MAN) + kk_);   \
        const __m512i max_abs = set1i_##S(max_i), min_normal = set1i_##S(normal_i);                    \
        const int64_t cut0 = jb < LANES ? jb : LANES, cut1 = jb > LANES ? jb - LANES : 0;              \
        const MASK m0 = (MASK)(((uint64_t)1 << cut0) - 1), m1 = (MASK)(((uint64_t)1 << cut1) - 1);     \
        const float *arow[PSUM_TR];                                                                    \
        for (int64_t ii = 0; ii < PSUM_TR; ii++) /* rows past the edge repeat the last one */          \
            arow[ii] = a + (i0 + (ii < ib ? ii : ib - 1)) * K;                                         \
        const int64_t step = m->chunk > 0 ? m->chunk : (K > 0 ? K : 1);                                \
        double outer[PSUM_TR][2 * LANES];                                                              \
        T spill[2 * LANES] __attribute__((aligned(64)));                                               \
        V acc[PSUM_TR][2];                                                                             \
        for (int64_t ii = 0; ii < PSUM_TR; ii++) {                                                     \
            acc[ii][0] = acc[ii][1] = zero_##S();                                                      \
            for (int64_t j = 0; j < 2 * LANES; j++)                                                    \
                outer[ii][j] = 0.0;                                                                    \
        }                                                                                              \
        for (int64_t k0 = 0; k0 < K; k0 += step) {                                                     \
            const int64_t k1 = k0 + step < K ? k0 + step : K;                                          \
            for (int64_t ii = 0; ii < PSUM_TR; ii++)                                                   \
                acc[ii][0] = acc[ii][1] = zero_##S();                                                  \
            for (int64_t kk = k0; kk < k1; kk++) {                                                     \
                const float *brow = b + kk * ldb + j0;                                                 \
                const V w0 = load_##S(brow, m0), w1 = load_##S(brow + LANES, m1);                      \
                _Pragma("GCC unroll 4")                                                                \
                for (int64_t ii = 0; ii < PSUM_TR; ii++) {                                             \
                    const float av = arow[ii][kk];                                                     \
                    const V avv = set1_##S(av);                                                        \
                    MASK ok = (MASK)-1;                                                                \
                    V n0, n1;                                                                          \
                    if (sub == PSUM_IEEE) { /* the format is the lane's: one fused multiply-add */    \
                        n0 = fma_##S(avv, w0, acc[ii][0]);                                             \
                        n1 = fma_##S(avv, w1, acc[ii][1]);                                             \
                    } else {                                                                           \
                        n0 = tile_step##S(acc[ii][0], avv, w0, expmask, k, low, one, sign, max_abs,    \
                                          min_normal, sub, rz, &ok);                                   \
                        n1 = tile_step##S(acc[ii][1], avv, w1, expmask, k, low, one, sign, max_abs,    \
                                          min_normal, sub, rz, &ok);                                   \
                    }                                                                                  \
                    if (__builtin_expect(ok != (MASK)-1, 0)) {                                         \
                        spill_##S(spill, acc[ii][0]);                                                  \
                        spill_##S(spill + LANES, acc[ii][1]);                                          \
                        general_##S(spill, brow, av, jb, m);                                           \
                        n0 = reload_##S(spill);                                                        \
                        n1 = reload_##S(spill + LANES);                                                \
                    }                                                                                  \
                    acc[ii][0] = n0;                                                                   \
                    acc[ii][1] = n1;                                                                   \
                }                                                                                      \
            }                                                                                          \
            if (m->chunk > 0)                                                                          \
                for (int64_t ii = 0; ii < ib; ii++) {                                                  \
                    spill_##S(spill, acc[ii][0]);                                                      \
                    spill_##S(spill + LANES, acc[ii][1]);                                              \
                    for (int64_t j = 0; j < jb; j++)                                                   \
                        outer[ii][j] = two_sum_round(outer[ii][j], (double)spill[j], m->outer);        \
                }                                                                                      \
        }                                                                                              \
        for (int64_t ii = 0; ii < ib; ii++) {                                                          \
            if (m->chunk <= 0) {                                                                       \
                spill_##S(spill, acc[ii][0]);                                                          \
                spill_##S(spill + LANES, acc[ii][1]);                                                  \
            }                                                                                          \
            for (int64_t j = 0; j < jb; j++) {                                                         \
                double v_ = m->chunk > 0 ? outer[ii][j] : (double)spill[j];                            \
                if (sub == PSUM_IEEE && v_ != v_) /* the format's NaN, not the FMA's */                \
                    v_ = double_of((uint64_t)f->nan_result);                                           \
                store_result(out, out32, (i0 + ii) * ldo + j0 + j, v_);                                \
            }                                                                                          \
        }                                                                                              \
    }

PSUM_TILE(matmul_tile32, float, __m512, __mmask16, 16, 32, 23, 127, 0x7f800000)
PSUM_TILE(matmul_tile64, double, __m512d, __mmask8, 8, 64, 52, 1023, 0x7ff0000000000000LL)

/* The tiles compiled once per mode (subnormals or flush to zero, ties to even or toward
 * zero), so that the mode is a constant in the inner loop. */
typedef void (*psum_tile_fn)(const float *, const float *, double *, float *, int64_t, int64_t, int64_t,
                             int64_t, int64_t, int64_t, int64_t, const psum_mac *);
#define PSUM_TILE_MODE(NAME, TILE, SUB, RZ)                                                        \
    static void NAME(const float *a, const float *b, double *out, float *out32, int64_t ldb,       \
                     int64_t ldo, int64_t K, int64_t i0, int64_t ib, int64_t j0, int64_t jb,       \
                     const psum_mac *m)                                                            \
    {                                                                                              \
        TILE(a, b, out, out32, ldb, ldo, K, i0, ib, j0, jb, m, SUB, RZ);                           \
    }
/* IEEE binary32 accumulators in float32 lanes: RN(acc + a * w) with the product exact is
 * what one fused multiply-add computes, specials included (Inf x 0, Inf - Inf: NaN;
 * overflow: Inf; signed zeros as IEEE adds them), given that the processor neither
 * flushes subnormal results nor reads subnormal operands as zero: FTZ and DAZ are
 * cleared for the tile and restored after it. */
static void tile32_ieee(const float *a, const float *b, double *out, float *out32, int64_t ldb, int64_t ldo,
                        int64_t K, int64_t i0, int64_t ib, int64_t j0, int64_t jb, const psum_mac *m)
{
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr & ~0x8040u); /* FTZ (bit 15) and DAZ (bit 6) off */
    matmul_tile32(a, b, out, out32, ldb, ldo, K, i0, ib, j0, jb, m, PSUM_IEEE, 0);
    _mm_setcsr(csr);
}

/* Whether f is IEEE binary32 itself: 23 stored bits, 2^-126 the smallest normal and
 * FLT_MAX the largest finite value, subnormals, ties to even, overflow to Inf. */
static int is_binary32(const psum_fmt *f)
{
    return f->man_bits == 23 && f->emin == -126 && f->subnormals && f->nearest_even &&
           f->max_abs == (int64_t)0x47EFFFFFE0000000LL && f->overflow_abs == (int64_t)PSUM_INF &&
           f->inf_abs == (int64_t)PSUM_INF;
}

PSUM_TILE_MODE(tile32_sub, matmul_tile32, 1, 0)
PSUM_TILE_MODE(tile32_ftz, matmul_tile32, 0, 0)
PSUM_TILE_MODE(tile64_sub, matmul_tile64, 1, 0)
PSUM_TILE_MODE(tile64_ftz, matmul_tile64, 0, 0)
PSUM_TILE_MODE(tile32_sub_rz, matmul_tile32, 1, 1)
PSUM_TILE_MODE(tile32_ftz_rz, matmul_tile32, 0, 1)
PSUM_TILE_MODE(tile64_sub_rz, matmul_tile64, 1, 1)
PSUM_TILE_MODE(tile64_ftz_rz, matmul_tile64, 0, 1)

/* The tile of a mode: subnormals or flush to zero, ties to even or toward zero. */
static psum_tile_fn tile_for(const psum_fmt *f, int lanes32)
{
    static const psum_tile_fn tiles[2][2][2] = {{{tile64_ftz, tile64_ftz_rz}, {tile64_sub, tile64_sub_rz}},
                                                {{tile32_ftz, tile32_ftz_rz}, {tile32_sub, tile32_sub_rz}}};
    return tiles[lanes32 != 0][f->subnormals != 0][f->nearest_even == 0];
}

/* The smallest nonzero magnitude among n floats. */
static float min_nonzero(const float *x, int64_t n, int threads)
{
    float low = INFINITY;
    const int nt = n > 65536 ? threads : 1;
    _Pragma("omp parallel for num_threads(nt) reduction(min:low)")
    for (int64_t i = 0; i < n; i++) {
        float v = fabsf(x[i]);
        low = v != 0.0f && v < low ? v : low;
    }
    return low;
}

/* The smallest nonzero magnitude in `batch` matrices of `rows` rows of n floats, rows
 * ld apart and matrices stride apart. */
static float min_nonzero_strided(const float *b, int64_t batch, int64_t rows, int64_t n, int64_t ld,
                                 int64_t stride, int threads)
{
    float low = INFINITY;
    for (int64_t i = 0; i < batch; i++)
        for (int64_t r = 0; r < rows; r++) {
            float row_low = min_nonzero(b + i * stride + r * ld, n, threads);
            low = row_low < low ? row_low : low;
        }
    return low;
}
#endif

/* Runs BODY for every block (bi, i0, ib, j0, jb) of `batch` M x N outputs, blocks of
 * ROWS x COLS spread over the threads in contiguous runs (consecutive blocks share
 * their b columns); within a block the k-loop is sequential. */
#define PSUM_FOR_BLOCKS(M, N, K, batch, ROWS, COLS, threads, BODY)                           \
    do {                                                                                     \
        const int64_t mb_ = ((M) + (ROWS) - 1) / (ROWS), nb_ = ((N) + (COLS) - 1) / (COLS);  \
        const int64_t tasks_ = (batch) * mb_ * nb_, work_ = tasks_ * (K) * (ROWS) * (COLS);   \
        _Pragma("omp parallel for num_threads(threads) schedule(static) if (work_ > (1 << 20))") \
        for (int64_t t_ = 0; t_ < tasks_; t_++) {                                            \
            int64_t bi = t_ / (mb_ * nb_), r_ = t_ % (mb_ * nb_);                            \
            (void)bi;                                                                        \
            int64_t i0 = (r_ % mb_) * (ROWS), j0 = (r_ / mb_) * (COLS);                      \
            int64_t ib = (M) - i0 < (ROWS) ? (M) - i0 : (ROWS);                              \
            int64_t jb = (N) - j0 < (COLS) ? (N) - j0 : (COLS);                              \
            BODY;                                                                            \
        }                                                                                    \
    } while (0)

/* Which implementation runs a matmul: the register tiles where their preconditions
 * hold (see above), else the blocks of fast steps with the general step for rare
 * cases. Every choice gives the same bits. Returns the choice: 4 binary32 tiles (one
 * fused multiply-add per step), 3 float32 tiles, 2 float64 tiles, 1 float32 blocks,
 * 0 float64 blocks. */
static int matmul_path(const psum_mac *m)
{
#ifdef PSUM_HAVE_TILES
    if (!m->has_product && is_binary32(&m->acc))
        return 4;
    if (!m->has_product) { /* the float adder rounds in the lane type, either rounding */
        const psum_fmt *f = &m->acc;
        const int64_t emax = (f->max_abs >> 52) - 1023;
        if (m->narrow) {
            if (f->man_bits <= 21 && emax - f->man_bits + 23 <= 127 && f->emin - f->man_bits >= -102)
                return 3; /* if every product is a normal float32 (products_normal) */
        } else if (f->emin - f->man_bits - 2 >= -1022 && emax - f->man_bits + 52 <= 1022) {
            return 2;
        }
    }
#endif
    return m->narrow ? 1 : 0;
}

/* The path for operands whose smallest nonzero magnitudes are min_a and min_b: the
 * float32 tiles need every nonzero product to be a normal float32. */
static int path_for_operands(const psum_mac *m, float min_a, float min_b)
{
    const int path = matmul_path(m);
    return path == 3 && !((double)min_a * (double)min_b >= 0x1p-126) ? 1 : path;
}

static int strided_path(const float *a, const float *b, int64_t M, int64_t N, int64_t K, int64_t ldb,
                        int64_t batch, int64_t b_batch, const psum_mac *m, int threads)
{
    if (matmul_path(m) != 3)
        return matmul_path(m);
    return path_for_operands(m, min_nonzero(a, M * K, threads),
                             min_nonzero_strided(b, batch, K, N, ldb, b_batch, threads));
}

int psum_matmul_path(const float *a, const float *b, int64_t M, int64_t N, int64_t K, const psum_mac *m,
                     int threads)
{
    return strided_path(a, b, M, N, K, N, 1, 0, m, threads);
}

/* `batch` emulated matmuls out[i] = a[i] @ b[i]: a[i] is M x K (rows K apart), b[i]
 * K x N with rows ldb apart, out[i] M x N with rows ldo apart; the i-th operands and
 * result start a_batch, b_batch, out_batch elements after the first. out is float64,
 * or float32 when out_f32 (the result format's values must be float32 numbers). A
 * convolution runs as one call: a its weights (a_batch 0), b each image's columns. */
static void run_strided(int path, const float *a, const float *b, void *out, int64_t M, int64_t N, int64_t K,
                        int64_t batch, int64_t a_batch, int64_t b_batch, int64_t out_batch, int64_t ldb,
                        int64_t ldo, int out_f32, const psum_mac *m, int threads)
{
#define PSUM_ARGS_ a + bi * a_batch, b + bi * b_batch, out_f32 ? NULL : (double *)out + bi * out_batch, \
                   out_f32 ? (float *)out + bi * out_batch : NULL, ldb, ldo, K, i0, ib, j0, jb, m
#ifdef PSUM_HAVE_TILES
    if (path == 4) {
        PSUM_FOR_BLOCKS(M, N, K, batch, PSUM_TR, 32, threads, tile32_ieee(PSUM_ARGS_));
        return;
    }
    if (path == 3 || path == 2) {
        const psum_tile_fn tile = tile_for(&m->acc, path == 3);
        PSUM_FOR_BLOCKS(M, N, K, batch, PSUM_TR, path == 3 ? 32 : 16, threads, tile(PSUM_ARGS_));
        return;
    }
#endif
    if (path == 1) {
        const psum_fmt32 f32 = narrow_params(&m->acc);
        const psum_fast_step32 fast = fast_step32_for(&f32);
        PSUM_FOR_BLOCKS(M, N, K, batch, PSUM_IB, PSUM_JB, threads, matmul_block32(PSUM_ARGS_, fast, f32));
    } else {
        const psum_fast_step fast = fast_step_for(&m->acc);
        PSUM_FOR_BLOCKS(M, N, K, batch, PSUM_IB, PSUM_JB, threads, matmul_block(PSUM_ARGS_, fast, m->acc));
    }
#undef PSUM_ARGS_
}

void psum_matmul_strided(const float *a, const float *b, void *out, int64_t M, int64_t N, int64_t K,
                         int64_t batch, int64_t a_batch, int64_t b_batch, int64_t out_batch, int64_t ldb,
                         int64_t ldo, int out_f32, const psum_mac *m, int threads)
{
    run_strided(strided_path(a, b, M, N, K, ldb, batch, b_batch, m, threads), a, b, out, M, N, K, batch, a_batch,
                b_batch, out_batch, ldb, ldo, out_f32, m, threads);
}

/* ---------------------------------------------------------------------------------
 * Integer matmul: acc = fit(acc + a[i,k] * b[k,j]) at every step, fit = wrap (keep the
 * low `bits` bits, sign-extended) or saturate (clamp). Operands are int32 values, so a
 * product fits in 63 bits; saturating accumulators are at most 62 bits wide, so a sum
 * never overflows int64, and wrapping ones compute modulo 2^64 first, which is exact. */

typedef struct {
    int64_t bits, saturate;             /* the accumulator */
    int64_t outer_bits, outer_saturate; /* the chunk accumulator */
    int64_t chunk;                      /* C; 0 means no chunking */
} psum_int_mac;

static inline int64_t int_fit(int64_t v, int64_t bits, int64_t saturate)
{
    int64_t hi = (int64_t)(((uint64_t)1 << (bits - 1)) - 1), lo = -hi - 1;
    int64_t clamped = v > hi ? hi : (v < lo ? lo : v);
    int64_t shift = 64 - bits;
    int64_t wrapped = (int64_t)((uint64_t)v << shift) >> shift;
    return saturate ? clamped : wrapped;
}

static inline int64_t int_add(int64_t x, int64_t y)
{
    return (int64_t)((uint64_t)x + (uint64_t)y); /* modulo 2^64; exact where it matters */
}

static void int_matmul_block(const int32_t *a, const int32_t *b, int64_t *out, int64_t N,
                             int64_t K, int64_t i0, int64_t ib, int64_t j0, int64_t jb,
                             const psum_int_mac *m)
{
    int64_t acc[PSUM_IB][PSUM_JB], outer[PSUM_IB][PSUM_JB];
    const int64_t step = m->chunk > 0 ? m->chunk : (K > 0 ? K : 1);
    const int64_t bits = m->bits, sat = m->saturate;
    for (int64_t ii = 0; ii < ib; ii++)
        for (int64_t j = 0; j < jb; j++)
            acc[ii][j] = outer[ii][j] = 0;
    for (int64_t k0 = 0; k0 < K; k0 += step) {
        int64_t k1 = k0 + step < K ? k0 + step : K;
        for (int64_t ii = 0; ii < ib; ii++)
            for (int64_t j = 0; j < jb; j++)
                acc[ii][j] = 0;
        for (int64_t k = k0; k < k1; k++) {
            const int32_t *brow = b + k * N + j0;
            for (int64_t ii = 0; ii < ib; ii++) {
                int64_t av = a[(i0 + ii) * K + k];
                for (int64_t j = 0; j < jb; j++)
                    acc[ii][j] = int_fit(int_add(acc[ii][j], av * (int64_t)brow[j]), bits, sat);
            }
        }
        if (m->chunk > 0)
            for (int64_t ii = 0; ii < ib; ii++)
                for (int64_t j = 0; j < jb; j++)
                    outer[ii][j] = int_fit(int_add(outer[ii][j], acc[ii][j]), m->outer_bits,
                                           m->outer_saturate);
    }
    for (int64_t ii = 0; ii < ib; ii++)
        for (int64_t j = 0; j < jb; j++)
            out[(i0 + ii) * N + j0 + j] = m->chunk > 0 ? outer[ii][j] : acc[ii][j];
}

void psum_int_matmul(const int32_t *a, const int32_t *b, int64_t *out, int64_t M, int64_t N,
                     int64_t K, const psum_int_mac *m, int threads)
{
    PSUM_FOR_BLOCKS(M, N, K, 1, PSUM_IB, PSUM_JB, threads, int_matmul_block(a, b, out, N, K, i0, ib, j0, jb, m));
}

/* ---------------------------------------------------------------------------------
 * Emulated convolutions, image by image: each image's im2col columns are built in a
 * buffer of the thread that runs it (it stays in cache, and no batch-sized im2col
 * tensor is ever written), then each group's weights (O/G x K) multiply them as one
 * emulated matmul whose (O/G, L) results land in NCHW order.
 *
 * Column row r of group g holds, for output pixel (oh, ow), the input
 * x[n, g*Cg + c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] (+0 outside the image), with
 * r = (c*kh + i)*kw + j in im2col order (torch.nn.functional.unfold's) and
 * r = (i*kw + j)*Cg + c in nhwc order (channel innermost). Values are copied, so the
 * columns hold exactly the (already rounded) inputs. */
static void im2col_image(const float *x, float *cols, int64_t C, int64_t H, int64_t W, int64_t groups,
                         int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
                         int64_t dw, int64_t out_h, int64_t out_w, int64_t nhwc, int64_t first, int64_t last)
{
    const int64_t cg = C / groups, k = cg * kh * kw, lanes = out_h * out_w;
    for (int64_t t = first; t < last; t++) { /* t = g*K + r */
        const int64_t g = t / k, r = t % k;
        int64_t c, i, j;
        if (nhwc) {
            c = r % cg; i = (r / cg) / kw; j = (r / cg) % kw;
        } else {
            c = r / (kh * kw); i = (r / kw) % kh; j = r % kw;
        }
        const float *plane = x + (g * cg + c) * H * W;
        float *dst = cols + t * lanes;
        for (int64_t oh = 0; oh < out_h; oh++) {
            const int64_t y = oh * sh - ph + i * dh;
            float *line = dst + oh * out_w;
            if (y < 0 || y >= H) {
                for (int64_t ow = 0; ow < out_w; ow++)
                    line[ow] = 0.0f;
                continue;
            }
            const float *src = plane + y * W;
            for (int64_t ow = 0; ow < out_w; ow++) {
                const int64_t xx = ow * sw - pw + j * dw;
                line[ow] = (xx >= 0 && xx < W) ? src[xx] : 0.0f;
            }
        }
    }
}

/* Every tile of one (M x N) = (M x K) @ (K x N) matmul, on this thread. */
static void matmul_serial(int path, const float *a, const float *b, float *out32, int64_t M, int64_t N,
                          int64_t K, int64_t ldb, int64_t ldo, const psum_mac *m)
{
#ifdef PSUM_HAVE_TILES
    if (path >= 2) {
        const int64_t cols = path >= 3 ? 32 : 16;
        for (int64_t j0 = 0; j0 < N; j0 += cols)
            for (int64_t i0 = 0; i0 < M; i0 += PSUM_TR) {
                const int64_t ib = M - i0 < PSUM_TR ? M - i0 : PSUM_TR, jb = N - j0 < cols ? N - j0 : cols;
                if (path == 4)
                    tile32_ieee(a, b, NULL, out32, ldb, ldo, K, i0, ib, j0, jb, m);
                else
                    tile_for(&m->acc, path == 3)(a, b, NULL, out32, ldb, ldo, K, i0, ib, j0, jb, m);
            }
        return;
    }
#endif
    const psum_fmt32 f32 = narrow_params(&m->acc);
    const psum_fast_step32 fast32 = fast_step32_for(&f32);
    const psum_fast_step fast = fast_step_for(&m->acc);
    for (int64_t j0 = 0; j0 < N; j0 += PSUM_JB)
        for (int64_t i0 = 0; i0 < M; i0 += PSUM_IB) {
            const int64_t ib = M - i0 < PSUM_IB ? M - i0 : PSUM_IB, jb = N - j0 < PSUM_JB ? N - j0 : PSUM_JB;
            if (path == 1)
                matmul_block32(a, b, NULL, out32, ldb, ldo, K, i0, ib, j0, jb, m, fast32, f32);
            else
                matmul_block(a, b, NULL, out32, ldb, ldo, K, i0, ib, j0, jb, m, fast, m->acc);
        }
}

/* out (N, O, out_h, out_w) float32 = the emulated convolution of x (N, C, H, W) with
 * weights w (G, O/G, K) already in the column order (`nhwc` or im2col), x and w
 * holding values already rounded to the input formats; no bias. Images are spread
 * over the threads when there are enough of them, else each image's tiles are. */
void psum_conv2d(const float *x, const float *w, float *out, int64_t N, int64_t C, int64_t H, int64_t W,
                 int64_t O, int64_t groups, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                 int64_t pw, int64_t dh, int64_t dw, int64_t out_h, int64_t out_w, int64_t nhwc,
                 const psum_mac *m, int threads)
{
    const int64_t cg = C / groups, og = O / groups, k = cg * kh * kw, lanes = out_h * out_w;
    const int64_t rows = groups * k;
    if (N == 0 || O == 0 || lanes == 0)
        return;
    /* the columns hold x's values and zeros: the precondition on products is x's and w's */
    const int path = matmul_path(m) == 3 ? path_for_operands(m, min_nonzero(w, O * k, threads),
                                                              min_nonzero(x, N * C * H * W, threads))
                                         : matmul_path(m);
    if (N >= threads) {
        _Pragma("omp parallel num_threads(threads)")
        {
            float *cols = malloc(sizeof(float) * (size_t)(rows * lanes > 0 ? rows * lanes : 1));
            _Pragma("omp for schedule(dynamic)")
            for (int64_t n = 0; n < N; n++) {
                im2col_image(x + n * C * H * W, cols, C, H, W, groups, kh, kw, sh, sw, ph, pw, dh, dw, out_h,
                             out_w, nhwc, 0, rows);
                for (int64_t g = 0; g < groups; g++)
                    matmul_serial(path, w + g * og * k, cols + g * k * lanes, out + (n * O + g * og) * lanes, og,
                                  lanes, k, lanes, lanes, m);
            }
            free(cols);
        }
        return;
    }
    float *cols = malloc(sizeof(float) * (size_t)(rows * lanes > 0 ? rows * lanes : 1));
    for (int64_t n = 0; n < N; n++) {
        PSUM_SPLIT(rows * lanes, threads, im2col_image(x + n * C * H * W, cols, C, H, W, groups, kh, kw, sh, sw,
                                                       ph, pw, dh, dw, out_h, out_w, nhwc,
                                                       first / lanes, last / lanes));
        for (int64_t g = 0; g < groups; g++)
            run_strided(path, w + g * og * k, cols + g * k * lanes, out + (n * O + g * og) * lanes, og, lanes, k, 1,
                        0, 0, 0, lanes, lanes, 1, m, threads);
    }
    free(cols);
}

/* ---------------------------------------------------------------------------------
 * Fused dot-product units (docs/semantics.md §11): out[i, j] over groups of `width`
 * consecutive k. a is (M, K) and bt is (N, K), row-major float32 holding values already
 * rounded to the input formats, so every product is exact in double. Per group: the
 * products (and the accumulator with include_acc) are aligned to the largest exponent
 * among them; each keeps align_bits bits below its leading bit, truncated toward zero
 * (sticky: one more bit, odd when anything was dropped); the kept terms are integers
 * times one unit below 2^(align_bits + 2) and add exactly in double (the caller checks
 * align_bits + 2 + log2(width + 1) <= 53); the sum is rounded once into acc (with the
 * accumulator apart: acc + sum, one rounding of the exact TwoSum). align_bits < 0 keeps
 * every bit (width 1 only: the MAC step). chunk > 0 promotes into outer every chunk
 * terms (a multiple of width).
 *
 * The kernel computes DPU_LANES columns of b at once, one vector lane each (every step
 * computed for every lane, then selected): a kept term is the integer trunc(t * 2^-step)
 * (exact scaling), summed in int64. Lanes that leave this fast route (NaN or Inf, a
 * subnormal double, an out-of-range unit) are recomputed by the scalar dpu_group, which
 * truncates on the double's bit pattern. Parallel over rows of a; each dot product in
 * order. */

/* floor(log2 |x|) of a finite nonzero double, from its exponent field (ilogb for
 * subnormal doubles). */
static inline int64_t dpu_exponent(double x)
{
    int64_t field = (int64_t)((bits_of(x) >> 52) & 0x7ff);
    return field ? field - 1023 : (int64_t)ilogb(x);
}

/* x (finite) truncated toward zero to a multiple of 2^step, on its bit pattern; with
 * sticky, the multiple made odd when anything below it was dropped. Zeros pass through. */
static inline double dpu_keep(double x, int64_t step, int64_t sticky)
{
    uint64_t u = bits_of(x);
    if ((u & ~PSUM_SIGN) == 0)
        return x;
    int64_t field = (int64_t)((u >> 52) & 0x7ff);
    if (field == 0) { /* a subnormal double: the slow, exact route */
        double q = ldexp(fabs(x), (int)-step), n = floor(q);
        if (sticky && n != q && fmod(n, 2.0) == 0.0)
            n += 1.0;
        return copysign(ldexp(n, (int)step), x);
    }
    int64_t c = step - (field - 1023 - 52); /* pattern bits below the kept multiple */
    if (c <= 0)
        return x;
    if (c > 52) /* |x| < 2^step: nothing kept, or the odd 1 with sticky */
        return sticky ? copysign(ldexp(1.0, (int)step), x) : copysign(0.0, x);
    uint64_t low = u & (((uint64_t)1 << c) - 1);
    uint64_t kept = u - low;
    if (sticky && low != 0 && c < 52) /* at c = 52 the kept multiple is the implicit 1: odd */
        kept |= (uint64_t)1 << c;
    return double_of(kept);
}

static double dpu_group(double state, const double *t, int64_t w, const psum_fmt f, int64_t align_bits,
                        int64_t include_acc, int64_t sticky)
{
    double kept[65];
    int64_t n = w + include_acc, all_neg_zero = 1, special = !isfinite(state);
    for (int64_t i = 0; i < w; i++) {
        kept[i] = t[i];
        special |= !isfinite(t[i]);
    }
    if (include_acc)
        kept[w] = state;
    if (special) { /* NaN or Inf: the exact sum's rules (section 3), then rounding */
        double s = state;
        for (int64_t i = 0; i < w; i++)
            s += t[i];
        return double_of(round_bits(bits_of(s), 0, f));
    }
    for (int64_t i = 0; i < w; i++)
        all_neg_zero &= t[i] == 0.0 && signbit(t[i]);
    if (include_acc)
        all_neg_zero &= state == 0.0 && signbit(state);
    if (align_bits < 0) /* every bit kept (width 1): acc + p, one rounding of the exact sum */
        return two_sum_round(state, t[0], f);
    {
        int64_t top = INT64_MIN;
        for (int64_t i = 0; i < n; i++)
            if (kept[i] != 0.0) {
                int64_t e = dpu_exponent(kept[i]);
                top = e > top ? e : top;
            }
        if (top != INT64_MIN) {
            int64_t step = top - align_bits - sticky;
            for (int64_t i = 0; i < n; i++)
                kept[i] = dpu_keep(kept[i], step, sticky);
        }
    }
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += kept[i]; /* exact */
    if (s == 0.0)
        s = all_neg_zero ? -0.0 : 0.0;
    if (include_acc)
        return double_of(round_bits(bits_of(s), 0, f));
    return two_sum_round(state, s, f);
}

/* Columns of b a lane block computes at once: one AVX-512 vector of doubles. */
#define DPU_LANES 8

/* DPU_LANES lanes as one vector (GCC/Clang vector extensions: AVX-512 where the machine
 * has it, narrower vectors or scalar code elsewhere). Comparisons give -1 (true) or 0. */
typedef int64_t dpu_vi __attribute__((vector_size(8 * DPU_LANES)));
typedef double dpu_vd __attribute__((vector_size(8 * DPU_LANES)));

static inline dpu_vi dpu_select(dpu_vi mask, dpu_vi yes, dpu_vi no) { return (mask & yes) | (~mask & no); }

/* Scaled terms x (|x| < 2^63) truncated toward zero to integers; with sticky, made odd
 * when anything was dropped (round to odd). Lanes holding NaN or Inf give garbage that
 * the caller discards. */
static inline dpu_vi dpu_kept_units(dpu_vd x, int64_t sticky)
{
    dpu_vi n = __builtin_convertvector(x, dpu_vi);
    if (sticky) { /* on the magnitude: -(|n| | 1) for negative terms */
        dpu_vi dropped = (dpu_vi)(__builtin_convertvector(n, dpu_vd) != x), neg = (dpu_vi)(x < 0.0);
        n = (((n ^ neg) - neg) | (dropped & 1));
        n = (n ^ neg) - neg;
    }
    return n;
}

/* The w products a[k] * bp[k * DPU_LANES + l] of lane l, exact in double. */
static inline dpu_vd dpu_products(const float *a, const double *bp, int64_t k)
{
    dpu_vd b;
    memcpy(&b, bp + k * DPU_LANES, sizeof b);
    return (double)a[k] * b;
}

/* One group of w terms for DPU_LANES dot products at once: lane l's products are
 * a[k] * bp[k * DPU_LANES + l] (float32 numbers: exact, never subnormal doubles), state[l]
 * its accumulator, updated in place (dpu_group's arithmetic on every lane). Lanes with a
 * NaN or Inf, a subnormal double accumulator or a kept unit below 2^-1022 (none arise
 * from an accumulator that fits float64, but the kernel takes any) are recomputed by
 * dpu_group. */
static void dpu_group_lanes(double *restrict state, const float *a, const double *restrict bp, int64_t w,
                            const psum_fmt f, int64_t align_bits, int64_t include_acc, int64_t sticky)
{
    const dpu_vi zero = {0};
    dpu_vd acc;
    dpu_vi largest = zero;
    memcpy(&acc, state, sizeof acc);
    for (int64_t k = 0; k < w; k++) { /* magnitude patterns order as magnitudes; NaN above Inf */
        dpu_vi m = (dpu_vi)dpu_products(a, bp, k) & INT64_MAX;
        largest = dpu_select(m > largest, m, largest);
    }
    dpu_vi u = (dpu_vi)acc, mag = u & INT64_MAX, fld = (u >> 52) & 0x7ff;
    dpu_vi top = largest >> 52; /* the largest product's exponent field: 0x7ff for NaN or Inf */
    dpu_vi slow = (top == 0x7ff) | (fld == 0x7ff) | ((fld == 0) & (mag != 0));
    if (include_acc)
        top = dpu_select(fld > top, fld, top);
    double out[DPU_LANES];
    if (align_bits < 0) { /* every bit kept (width 1): acc + p, one rounding of the exact sum */
        for (int l = 0; l < DPU_LANES; l++)
            out[l] = two_sum_round(state[l], (double)a[0] * bp[l], f);
    } else {
        /* Kept terms as integer multiples n of the unit 2^step: n = trunc(t * 2^-step)
         * (scaling by a power of two is exact; |n| < 2^(align_bits + sticky + 1)), with
         * sticky made odd when the truncation dropped anything; their sum is exact in
         * int64 and, below 2^53 (the caller's bound), in the double it is turned into. */
        const dpu_vi one_pattern = zero + ((int64_t)1023 << 52);
        dpu_vi step_field = top - align_bits - sticky; /* the biased exponent of 2^step */
        dpu_vi usable = (step_field >= 1) & (step_field <= 2045) & (zero - (align_bits + sticky <= 52)); /* -1: true */
        slow |= (top != 0) & ~usable;
        dpu_vd scale = (dpu_vd)dpu_select(usable, (2046 - step_field) << 52, one_pattern); /* 2^-step */
        dpu_vd unit = (dpu_vd)dpu_select(usable, step_field << 52, one_pattern);         /* 2^step */
        dpu_vi total = zero;
        for (int64_t k = 0; k < w; k++)
            total += dpu_kept_units(dpu_products(a, bp, k) * scale, sticky);
        if (include_acc)
            total += dpu_kept_units(acc * scale, sticky);
        dpu_vd sum = __builtin_convertvector(total, dpu_vd) * unit; /* exact */
        dpu_vi bits = (dpu_vi)sum, is_zero = (dpu_vi)(sum == 0.0);
        int64_t zeros[DPU_LANES];
        memcpy(zeros, &is_zero, sizeof zeros);
        int64_t any_zero = 0;
        for (int l = 0; l < DPU_LANES; l++)
            any_zero |= zeros[l];
        if (any_zero) { /* an exactly zero sum is -0 only when every addend was -0 */
            dpu_vi neg0 = include_acc ? ((dpu_vi)acc == INT64_MIN) : zero - 1;
            for (int64_t k = 0; k < w; k++)
                neg0 &= (dpu_vi)dpu_products(a, bp, k) == INT64_MIN;
            bits = dpu_select(is_zero, neg0 & INT64_MIN, bits);
        }
        int64_t b[DPU_LANES];
        memcpy(b, &bits, sizeof b);
        if (include_acc)
            for (int l = 0; l < DPU_LANES; l++)
                out[l] = double_of(round_bits((uint64_t)b[l], 0, f));
        else
            for (int l = 0; l < DPU_LANES; l++)
                out[l] = two_sum_round(state[l], double_of((uint64_t)b[l]), f);
    }
    int64_t slow_lanes[DPU_LANES];
    memcpy(slow_lanes, &slow, sizeof slow_lanes);
    for (int l = 0; l < DPU_LANES; l++) {
        if (slow_lanes[l]) {
            double terms[64];
            for (int64_t k = 0; k < w; k++)
                terms[k] = (double)a[k] * bp[k * DPU_LANES + l];
            out[l] = dpu_group(state[l], terms, w, f, align_bits, include_acc, sticky);
        }
        state[l] = out[l];
    }
}

/* Rows a[i0..i1) against one block of DPU_LANES columns of b (packed: bp[k * DPU_LANES +
 * l]), each dot product in order, promoted every `step` terms when chunk > 0. */
static void dpu_rows(const float *a, const double *restrict bp, double *out, int64_t i0, int64_t i1, int64_t N,
                     int64_t K, int64_t j0, int64_t lanes, const psum_fmt f, const psum_fmt outer_f, int64_t width,
                     int64_t align_bits, int64_t include_acc, int64_t sticky, int64_t chunk, int64_t step)
{
    double state[DPU_LANES], outer[DPU_LANES];
    for (int64_t i = i0; i < i1; i++) {
        const float *ar = a + i * K;
        for (int l = 0; l < DPU_LANES; l++)
            outer[l] = state[l] = 0.0;
        for (int64_t lo = 0; lo < K; lo += step) {
            int64_t hi = lo + step < K ? lo + step : K;
            for (int l = 0; l < DPU_LANES; l++)
                state[l] = 0.0;
            for (int64_t g = lo; g < hi; g += width)
                dpu_group_lanes(state, ar + g, bp + g * DPU_LANES, g + width < hi ? width : hi - g, f, align_bits,
                                include_acc, sticky);
            if (chunk > 0)
                for (int l = 0; l < DPU_LANES; l++)
                    outer[l] = two_sum_round(outer[l], state[l], outer_f);
        }
        for (int64_t l = 0; l < lanes; l++)
            out[i * N + j0 + l] = chunk > 0 ? outer[l] : state[l];
    }
}

void psum_dpu_matmul(const float *a, const float *bt, double *out, int64_t M, int64_t N, int64_t K,
                     const psum_fmt *accp, const psum_fmt *outerp, int64_t width, int64_t align_bits,
                     int64_t include_acc, int64_t sticky, int64_t chunk, int threads)
{
    const psum_fmt f = *accp, outer_f = *outerp;
    const int64_t step = chunk > 0 ? chunk : (K > 0 ? K : 1);
    int nt = M * N * K > 65536 ? threads : 1;
    double *bp = malloc(sizeof(double) * (size_t)(K > 0 ? K : 1) * DPU_LANES);
    for (int64_t j0 = 0; j0 < N; j0 += DPU_LANES) {
        int64_t lanes = N - j0 < DPU_LANES ? N - j0 : DPU_LANES;
        for (int64_t k = 0; k < K; k++) /* unused lanes multiply zeros */
            for (int64_t l = 0; l < DPU_LANES; l++)
                bp[k * DPU_LANES + l] = l < lanes ? (double)bt[(j0 + l) * K + k] : 0.0;
#pragma omp parallel num_threads(nt)
        {
            int64_t tn = omp_get_thread_num(), tk = omp_get_num_threads();
            dpu_rows(a, bp, out, M * tn / tk, M * (tn + 1) / tk, N, K, j0, lanes, f, outer_f, width, align_bits,
                     include_acc, sticky, chunk, step);
        }
    }
    free(bp);
}

/* ---------------------------------------------------------------------------------
 * Stochastic rounding of the accumulator (docs/semantics.md §13).
 *
 * Each output element has its own xorshift32 generator, started from states[i, j];
 * every MAC step steps it and rounds with its top R bits. */

static inline uint64_t sr_step(uint64_t x) /* 32-bit words in 64-bit lanes */
{
    x ^= (x << 13) & 0xffffffffu;
    x ^= x >> 17;
    return x ^ ((x << 5) & 0xffffffffu);
}

/* round_f(x + y), stochastically with the random integer rnd in [0, 2^R): the exact
 * sum's magnitude truncated to R bits below the format's quantum 2^q, plus rnd, then
 * truncated at 2^q. TwoSum gives hi + lo = the exact sum; the truncation only needs
 * the floor of the magnitude on the grid 2^(q - R), never finer than the double's
 * quantum when M + R <= 50 (the caller checks): with lo of the opposite sign the
 * magnitude lies strictly between |hi| - 1 ulp and |hi|, so its floor is that of the
 * double below |hi|. Written with selects only, so that the loops vectorize. */
static inline double sr_sum_round(double x, double y, int64_t rnd, const psum_fmt f, int64_t R)
{
    double lo, hi = two_sum(x, y, &lo);
    uint64_t u = bits_of(hi), ul = bits_of(lo);
    int64_t a = (int64_t)(u & ~PSUM_SIGN);
    int64_t below = ((ul & ~PSUM_SIGN) != 0) & (int64_t)((ul ^ u) >> 63);
    int64_t t = a - below;                           /* floor pattern of the magnitude */
    int64_t exp_field = t >> 52;
    int64_t normal = exp_field != 0;
    int64_t sig = normal ? ((t & ((INT64_C(1) << 52) - 1)) | (INT64_C(1) << 52)) : t;
    int64_t qd = normal ? exp_field - 1075 : -1074;  /* the double's quantum at t */
    int64_t lead = normal ? exp_field - 1023 : (int64_t)(bits_of((double)t) >> 52) - 2097;
    int64_t q = ((f.subnormals & (lead < f.emin)) ? f.emin : lead) - f.man_bits;
    int64_t d = q - R - qd;
    d = d < 0 ? 0 : (d > 63 ? 63 : d); /* d < 0 only for flush-to-zero results below 2^-1022 */
    int64_t n = ((sig >> d) + rnd) >> R;
    int64_t qc = q < -1074 ? -1074 : q;
    int64_t tiny = qc < -1022; /* 2^q is a subnormal double: scale by 2^(q + 64), then 2^-64 */
    double scale = double_of((uint64_t)(qc + 1023 + 64 * tiny) << 52);
    /* n * 2^q, exact (a value of f, or 2^(emax+1)), in both products */
    uint64_t r = bits_of((double)n * scale * (tiny ? 0x1p-64 : 1.0));
    r = (f.subnormals | (r >= (uint64_t)f.min_normal_abs)) ? r : 0; /* flush, after rounding */
    r = r > (uint64_t)f.max_abs ? (uint64_t)f.overflow_abs : r;
    uint64_t out = (u & PSUM_SIGN) | r;
    out = a == 0 ? u : out; /* an exact zero sum: the double's signed zero */
    out = a == (int64_t)PSUM_INF ? ((u & PSUM_SIGN) | (uint64_t)f.inf_abs) : out;
    out = a > (int64_t)PSUM_INF ? (uint64_t)f.nan_result : out;
    return double_of(out);
}

/* One run of MAC steps k in [k0, k1) for a row: acc[j] = sr_round(acc[j] + a[k] b[k, j]). */
__attribute__((noinline)) static void sr_run(double *restrict acc, uint64_t *restrict st, const float *restrict arow,
                   const float *restrict b, int64_t N, int64_t k0, int64_t k1, const psum_mac *m,
                   int64_t R)
{
    const psum_fmt fa = m->acc, fp = m->product;
    const int shift = (int)(32 - R);
    for (int64_t k = k0; k < k1; k++) {
        const double av = arow[k];
        const float *restrict brow = b + k * N;
        if (m->has_product) {
            for (int64_t j = 0; j < N; j++) {
                double p = double_of(round_bits(bits_of(av * (double)brow[j]), 0, fp));
                uint64_t s = sr_step(st[j]);
                st[j] = s;
                acc[j] = sr_sum_round(acc[j], p, (int64_t)(s >> shift), fa, R);
            }
        } else {
            for (int64_t j = 0; j < N; j++) {
                uint64_t s = sr_step(st[j]);
                st[j] = s;
                acc[j] = sr_sum_round(acc[j], av * (double)brow[j], (int64_t)(s >> shift), fa, R);
            }
        }
    }
}

/* out[i, j] = the sequential dot product of a's row i and b's column j with a
 * stochastically rounding accumulator whose generator starts at states[i, j]; chunked
 * into the outer format (to nearest) every C terms when m->chunk > 0. a (M, K), b (K,
 * N) float32 holding values of the input formats (products exact in double); out,
 * states (M, N). Rows are spread over the threads. */
void psum_matmul_sr(const float *a, const float *b, double *out, const uint32_t *states,
                    int64_t M, int64_t N, int64_t K, const psum_mac *mp, int64_t R, int threads)
{
    const psum_mac m = *mp;
    const int64_t step = m.chunk > 0 ? m.chunk : (K > 0 ? K : 1);
#pragma omp parallel num_threads(threads)
    {
        double *acc = malloc((size_t)(N > 0 ? N : 1) * sizeof(double));
        double *outer = malloc((size_t)(N > 0 ? N : 1) * sizeof(double));
        uint64_t *st = malloc((size_t)(N > 0 ? N : 1) * sizeof(uint64_t));
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < M; i++) {
            for (int64_t j = 0; j < N; j++)
                st[j] = states[i * N + j];
            for (int64_t j = 0; j < N; j++)
                acc[j] = outer[j] = 0.0;
            for (int64_t k0 = 0; k0 < K; k0 += step) {
                int64_t k1 = k0 + step < K ? k0 + step : K;
                if (m.chunk > 0)
                    for (int64_t j = 0; j < N; j++)
                        acc[j] = 0.0;
                sr_run(acc, st, a + i * K, b, N, k0, k1, &m, R);
                if (m.chunk > 0)
                    for (int64_t j = 0; j < N; j++)
                        outer[j] = two_sum_round(outer[j], acc[j], m.outer);
            }
            for (int64_t j = 0; j < N; j++)
                out[i * N + j] = m.chunk > 0 ? outer[j] : acc[j];
        }
        free(acc);
        free(outer);
        free(st);
    }
}
