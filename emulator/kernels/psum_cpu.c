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
            int64_t lo = (n) * t_ / k_, hi = (n) * (t_ + 1) / k_;                 \
            body;                                                                 \
        }                                                                         \
    } while (0)

void psum_quantize_f64(const double *x, double *y, int64_t n, const psum_fmt *fp, int threads)
{
    const psum_fmt f = *fp;
    PSUM_SPLIT(n, threads, quantize_range_f64(x + lo, y + lo, hi - lo, f));
}

void psum_quantize_f32(const float *x, float *y, int64_t n, const psum_fmt *fp, int threads)
{
    const psum_fmt f = *fp;
    PSUM_SPLIT(n, threads, quantize_range_f32(x + lo, y + lo, hi - lo, f));
}
