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
#include <stdint.h>
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

/* One block of PSUM_IB rows x PSUM_JB columns, its accumulators in lanes of type T:
 * the k-loop in runs of C terms (C = K without chunking), each MAC step of a row by the
 * lane type's fast step or, when a lane meets a rare case (or products are rounded), by
 * the general float64 step; each run's results added into the float64 outer
 * accumulator. Every value an accumulator holds is exactly a T. */
#define PSUM_MATMUL_BLOCK(NAME, T, FAST_T, PARAMS_T)                                         \
    static void NAME(const float *a, const float *b, double *out, int64_t N, int64_t K,      \
                     int64_t i0, int64_t ib, int64_t j0, int64_t jb, const psum_mac *m,      \
                     FAST_T fast, const PARAMS_T params)                                     \
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
                const float *brow = b + k * N + j0;                                          \
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
                out[(i0 + ii) * N + j0 + j] = m->chunk > 0 ? outer[ii][j] : (double)acc[ii][j]; \
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

/* Runs BODY for every block (i0, ib, j0, jb) of an M x N output, blocks spread over
 * the threads; within a block the k-loop is sequential. */
#define PSUM_FOR_BLOCKS(M, N, K, threads, BODY)                                              \
    do {                                                                                     \
        const int64_t mb_ = ((M) + PSUM_IB - 1) / PSUM_IB, nb_ = ((N) + PSUM_JB - 1) / PSUM_JB; \
        const int64_t tasks_ = mb_ * nb_;                                                    \
        _Pragma("omp parallel for num_threads(threads) schedule(dynamic) if (tasks_ * (K) > 4096)") \
        for (int64_t t_ = 0; t_ < tasks_; t_++) {                                            \
            int64_t i0 = (t_ / nb_) * PSUM_IB, j0 = (t_ % nb_) * PSUM_JB;                    \
            int64_t ib = (M) - i0 < PSUM_IB ? (M) - i0 : PSUM_IB;                            \
            int64_t jb = (N) - j0 < PSUM_JB ? (N) - j0 : PSUM_JB;                            \
            BODY;                                                                            \
        }                                                                                    \
    } while (0)

void psum_matmul(const float *a, const float *b, double *out, int64_t M, int64_t N,
                 int64_t K, const psum_mac *m, int threads)
{
    if (m->narrow) {
        const psum_fmt32 f32 = narrow_params(&m->acc);
        const psum_fast_step32 fast = fast_step32_for(&f32);
        PSUM_FOR_BLOCKS(M, N, K, threads, matmul_block32(a, b, out, N, K, i0, ib, j0, jb, m, fast, f32));
    } else {
        const psum_fast_step fast = fast_step_for(&m->acc);
        PSUM_FOR_BLOCKS(M, N, K, threads, matmul_block(a, b, out, N, K, i0, ib, j0, jb, m, fast, m->acc));
    }
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
    PSUM_FOR_BLOCKS(M, N, K, threads, int_matmul_block(a, b, out, N, K, i0, ib, j0, jb, m));
}
