"""Emulated matrix products: every output element is a sequential dot product whose
partial sums live in a chosen format (docs/semantics.md §4-6).

:func:`matmul` / :func:`int_matmul` are the public entry points; they dispatch on the
tensors' device to a registered backend: the compiled CPU kernel, or for CUDA tensors
the Triton kernels of :mod:`emulator.triton_kernels` (same bits).
:func:`matmul_reference` / :func:`int_matmul_reference` are the plain, obviously-correct
k-loops in PyTorch that the kernels are tested against (with the golden model as the
final judge).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from emulator import _native
from emulator.config import AccumConfig, IntAccumConfig
from emulator.quantize import quantize
from emulator import stochastic
from psum.formats import FloatFormat, IntFormat, not_stochastic

__all__ = ["matmul", "int_matmul", "matmul_reference", "int_matmul_reference",
           "register_backend", "round_sum", "check_config", "kernel_path", "exact_int_sum"]

FloatKernel = Callable[[torch.Tensor, torch.Tensor, AccumConfig], torch.Tensor]
IntKernel = Callable[[torch.Tensor, torch.Tensor, IntAccumConfig], torch.Tensor]
_BACKENDS: dict[str, tuple[FloatKernel, IntKernel]] = {}


def register_backend(device_type: str, float_kernel: FloatKernel, int_kernel: IntKernel) -> None:
    """Make ``matmul``/``int_matmul`` run on tensors of ``device_type`` with these kernels.

    A float kernel takes ``a`` (M, K) and ``b`` (K, N) float32 tensors already rounded to
    the input formats, and the config (a sequential MAC, or a dot-product unit:
    ``cfg.unit``), and for a stochastically rounding accumulator the (M, N) int64 start
    states of its generators (docs/semantics.md §13); it returns the (M, N) float64
    results. An int
    kernel takes int32 tensors and returns int64 accumulator values.
    """
    _BACKENDS[device_type] = (float_kernel, int_kernel)


def _backend(t: torch.Tensor, which: int):
    if t.device.type == "cuda" and "cuda" not in _BACKENDS:
        from emulator.device import load_gpu_backend

        load_gpu_backend()
    try:
        return _BACKENDS[t.device.type][which]
    except KeyError:
        known = ", ".join(sorted(_BACKENDS))
        raise ValueError(f"no emulation kernel for tensors on {t.device} (available: {known})") from None


def _check_operands(a: torch.Tensor, b: torch.Tensor, floating: bool) -> None:
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, not {type(t).__name__}")
        if floating and t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be float32 or float64, not {t.dtype}")
        if not floating and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
            raise TypeError(f"{name} must be an integer tensor, not {t.dtype}")
    if b.dim() != 2 or a.dim() < 1 or a.shape[-1] != b.shape[0]:
        raise ValueError(f"matmul needs a (..., K) and b (K, N); got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"a is on {a.device} and b on {b.device}")


#: Accumulators reach at most 2^1000, which keeps every exact sum of the kernels finite in float64.
MAX_ACC_EXPONENT = 1000


def check_config(cfg: AccumConfig | IntAccumConfig, out_dtype: torch.dtype = torch.float32) -> None:
    """Raise ValueError, naming the field, unless the kernels can run ``cfg`` with its
    results held in ``out_dtype`` (network layers compute in float32): operands must be
    float32 numbers, accumulator, product and outer formats exact in float64 and below
    2^1000, the result format an ``out_dtype`` number; integer accumulators signed, and
    saturating ones at most 62 bits wide."""
    if isinstance(cfg, IntAccumConfig):
        for name in ("acc", "chunk_acc"):
            fmt = getattr(cfg, name)
            if not fmt.signed:
                raise ValueError(f"{name} {fmt}: integer accumulators are signed")
            if fmt.overflow == "saturate" and fmt.bits > 62:
                raise ValueError(f"{name} {fmt}: saturating accumulators are supported up to 62 bits")
        return
    out = str(out_dtype).removeprefix("torch.")
    roles = [("inputs", cfg.inputs, "float32"), ("weights", cfg.weights, "float32"), ("acc", cfg.acc, "float64"),
             ("product", cfg.product, "float64"), ("chunk_acc", cfg.chunk_acc, "float64")]
    for name, fmt, dtype in roles:
        if fmt is None:
            continue
        problems = _native.fit_problems(fmt, dtype)
        if dtype == "float64" and fmt.emax > MAX_ACC_EXPONENT:
            problems.append(f"it reaches 2^{fmt.emax} (accumulators up to 2^{MAX_ACC_EXPONENT} are supported)")
        if problems:
            raise ValueError(f"{name} format {fmt} (exponents {fmt.emin}..{fmt.emax}, M={fmt.man_bits}) "
                             f"is not supported by the emulator: {'; '.join(problems)}")
    acc = cfg.acc
    if acc.rounding == "stochastic" and acc.man_bits + acc.random_bits > 50:
        raise ValueError(f"acc format {acc}: the emulator rounds stochastically with M + R <= 50 "
                         f"(here {acc.man_bits} + {acc.random_bits})")
    if cfg.unit is not None:
        from emulator.dpu import check_dpu

        check_dpu(cfg.unit.width, cfg.unit.align_bits, cfg.inputs, cfg.weights, cfg.chunk)
    result = "chunk_acc" if cfg.chunk is not None else "acc"
    problems = _native.fit_problems(cfg.result_format, out)
    if problems:
        raise ValueError(f"{result} format {cfg.result_format} cannot hold the results in {out} "
                         f"(exponents {cfg.result_format.emin}..{cfg.result_format.emax}): {'; '.join(problems)}")


def matmul(a: torch.Tensor, b: torch.Tensor, acc: FloatFormat | str = "fp32", *,
           inputs: FloatFormat | str = "bf16", weights: FloatFormat | str | None = None,
           product: FloatFormat | str | None = None, chunk: int | None = None,
           chunk_acc: FloatFormat | str = "fp32", seed: int = 0) -> torch.Tensor:
    """``a @ b`` with every MAC in the given formats (docs/semantics.md §4-5).

    ``a`` (..., K) is rounded to ``inputs`` and ``b`` (K, N) to ``weights`` (default
    ``inputs``); each output element is the sequential dot product over k = 0..K-1,
    products exact (or rounded to ``product``), partial sums rounded to ``acc`` after
    every add, chunked into ``chunk_acc`` every ``chunk`` terms when given. An ``acc``
    that rounds stochastically (``"e4m4:sr"``) gives output (..., i, j) the generator
    ``stochastic_state(seed, i, j)`` (docs/semantics.md §13). Returns (..., N) in
    ``a``'s dtype (float32 or float64), holding values of the accumulator (or
    ``chunk_acc``) format.

    >>> ones = torch.ones(1, 64)
    >>> matmul(ones, ones.T, "e4m3"), matmul(ones, ones.T, "fp32")  # e4m3 stagnates at 16
    (tensor([[16.]]), tensor([[64.]]))
    >>> matmul(ones, ones.T, "e4m3", chunk=8)  # chunks of 8 into fp32
    tensor([[64.]])
    >>> matmul(ones, ones.T, "e4m3:sr"), matmul(ones, ones.T, "e4m3:sr", seed=1)  # stochastic: no stagnation
    (tensor([[56.]]), tensor([[64.]]))
    """
    cfg = AccumConfig(acc=acc, inputs=inputs, weights=weights, product=product, chunk=chunk,
                      chunk_acc=chunk_acc, seed=seed)
    return emulated_matmul(a, b, cfg)


def emulated_matmul(a: torch.Tensor, b: torch.Tensor, cfg: AccumConfig) -> torch.Tensor:
    """:func:`matmul` with its formats given as one :class:`AccumConfig`."""
    _check_operands(a, b, floating=True)
    check_config(cfg, a.dtype)
    kernel = _backend(a, 0)
    lead, k = a.shape[:-1], a.shape[-1]
    a2 = quantize(a.detach().reshape(math.prod(lead), k), cfg.inputs).float()  # (M, K)
    b2 = quantize(b.detach(), cfg.weights).float()  # (K, N)
    if cfg.acc.rounding == "stochastic":  # the generators' start states (docs/semantics.md §13)
        rows, cols = stochastic.row_indices(a.shape), torch.arange(b.shape[1])
        states = stochastic.stochastic_states(cfg.seed, rows, cols).to(a.device)
        return kernel(a2, b2, cfg, states).to(a.dtype).reshape(*lead, b.shape[1])
    if kernel is _cpu_matmul and a.dtype == torch.float32:  # the kernel writes float32 itself
        return _cpu_matmul(a2, b2, cfg, dtype=torch.float32).reshape(*lead, b.shape[1])
    out = kernel(a2, b2, cfg)  # (M, N) float64
    return out.to(a.dtype).reshape(*lead, b.shape[1])


def int_matmul(a: torch.Tensor, b: torch.Tensor, acc: IntFormat | str = "int32", *,
               chunk: int | None = None, chunk_acc: IntFormat | str = "int32") -> torch.Tensor:
    """Integer ``a @ b`` with the accumulator wrapped or saturated after every add.

    ``a`` (..., K) and ``b`` (K, N) are integer tensors with values in int32's range;
    products are exact. Returns the (..., N) accumulator values as int64.
    """
    cfg = IntAccumConfig(acc=acc, chunk=chunk, chunk_acc=chunk_acc)
    return emulated_int_matmul(a, b, cfg)


def emulated_int_matmul(a: torch.Tensor, b: torch.Tensor, cfg: IntAccumConfig) -> torch.Tensor:
    """:func:`int_matmul` with its formats given as one :class:`IntAccumConfig`."""
    _check_operands(a, b, floating=False)
    check_config(cfg)
    for name, t in (("a", a), ("b", b)):
        narrow = t.dtype in (torch.int8, torch.uint8, torch.int16, torch.int32)
        if not narrow and t.numel() and (int(t.min()) < -2**31 or int(t.max()) >= 2**31):
            raise ValueError(f"{name} holds values outside int32's range")
    lead, k = a.shape[:-1], a.shape[-1]
    out = _backend(a, 1)(a.reshape(math.prod(lead), k).to(torch.int32), b.to(torch.int32), cfg)
    return out.reshape(*lead, b.shape[1])


# -- the CPU backend ----------------------------------------------------------------


def _lanes_on_rows(m: int, n: int, lanes: int = 64) -> bool:
    """Whether to run a kernel on the transposed problem (out^T = b^T a^T).

    The kernels put output columns in lanes (64 per block in the CPU kernel's SIMD
    loops, a tile's width on the GPU); a layer with fewer output channels (LeNet5's
    conv1 has 6) would leave most lanes idle, so then the rows (batch x output pixels)
    go in the lanes instead. Every output element is still the same sequential dot
    product over k, so the result is identical.
    """
    return n < lanes and m > n


def _orient(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The contiguous operands the kernels run on: ``(a, b, False)``, or ``(b^T, a^T,
    True)`` for the transposed problem when :func:`_lanes_on_rows` says so."""
    transposed = _lanes_on_rows(a.shape[0], b.shape[1])
    if transposed:
        a, b = b.t(), a.t()
    return a.contiguous(), b.contiguous(), transposed


def _oriented(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, kernel) -> torch.Tensor:
    """Run ``kernel(a, b, out, m, n, k)`` on the operands :func:`_orient` gives; returns
    the (M, N) result."""
    a, b, transposed = _orient(a, b)
    (m, k), n = a.shape, b.shape[1]
    out = torch.empty(m, n, dtype=dtype)
    kernel(a.data_ptr(), b.data_ptr(), out.data_ptr(), m, n, k)
    return out.t() if transposed else out


def narrow_lanes(cfg: AccumConfig) -> bool:
    """Whether the kernel may accumulate in float32 lanes (twice as many per vector):
    every breakpoint of the accumulator (values, midpoints, subnormal midpoints) is a
    float32 number and every product of two inputs has at most 24 significant bits, so
    exact float32 products and TwoSums carry the exact sums (docs/emulator.md)."""
    acc = cfg.acc
    product_bits = cfg.inputs.man_bits + cfg.weights.man_bits + 2
    return (cfg.product is None and acc.man_bits <= 22 and acc.emax <= 127
            and acc.emin - acc.man_bits - 1 >= -149 and acc.emin >= -125 and product_bits <= 24)


def _mac_params(cfg: AccumConfig) -> _native.MacParams:
    unused = cfg.acc  # product/outer params are ignored by the kernel when not enabled
    return _native.MacParams(
        acc=_native.format_params(cfg.acc),
        product=_native.format_params(cfg.product or unused),
        outer=_native.format_params(cfg.chunk_acc if cfg.chunk else unused),
        has_product=int(cfg.product is not None),
        chunk=cfg.chunk or 0,
        narrow=int(narrow_lanes(cfg)),
    )


def _cpu_matmul(a: torch.Tensor, b: torch.Tensor, cfg: AccumConfig, states: torch.Tensor | None = None,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The CPU backend: (M, N) results of ``dtype`` (float64, or float32 written by the
    kernel itself when the result format fits it). A config with a dot-product unit runs
    the unit's kernel (:func:`emulator.dpu.cpu_dpu_matmul`), a stochastic accumulator
    the stochastic kernel, its generators starting at ``states``."""
    if states is not None:
        return _cpu_sr_matmul(a, b, cfg, states).to(dtype)
    if cfg.unit is not None:
        from emulator.dpu import cpu_dpu_matmul

        return cpu_dpu_matmul(a, b, cfg).to(dtype)
    a, b, transposed = _orient(a, b)
    out = torch.empty(1, a.shape[0], b.shape[1], dtype=dtype)
    _rounded_matmul_into(a, b[None], out, cfg)
    return out[0].t() if transposed else out[0]


def _cpu_sr_matmul(a: torch.Tensor, b: torch.Tensor, cfg: AccumConfig, states: torch.Tensor) -> torch.Tensor:
    """(M, N) float64 results of the sequential MAC with a stochastically rounding
    accumulator, the generator of output (i, j) starting at ``states[i, j]``."""
    a, b, transposed = _orient(a, b)
    words = (states.t() if transposed else states).to(torch.int64)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).contiguous()  # uint32 bits
    (m, k), n = a.shape, b.shape[1]
    out = torch.empty(m, n, dtype=torch.float64)
    if out.numel():
        _native.library().psum_matmul_sr(a.data_ptr(), b.data_ptr(), out.data_ptr(), words.data_ptr(), m, n, k,
                                         _mac_params(cfg), cfg.acc.random_bits, torch.get_num_threads())
    return out.t() if transposed else out


def _rounded_matmul_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, cfg: AccumConfig) -> torch.Tensor:
    """``out[i] = a @ b[i]`` on the CPU for operands already rounded to ``cfg``'s input
    formats, every output element the sequential dot product over k (docs/semantics.md
    §4-5), as float64 or float32 (``out``'s dtype, which the result format must fit).

    ``a`` (M, K) and ``b`` (B, K, N) are float32 CPU tensors, ``out`` (B, M, N); ``b``
    and ``out`` may be strided views as long as their last dimension is contiguous.
    Private: operands that are not already rounded would break the kernel's exactness
    (its products must be exact), and it does not check that.
    """
    for name, t, dims, dtypes in (("a", a, 2, (torch.float32,)), ("b", b, 3, (torch.float32,)),
                                  ("out", out, 3, (torch.float32, torch.float64))):
        if t.dtype not in dtypes or t.device.type != "cpu" or t.dim() != dims:
            raise ValueError(f"{name} must be a {dims}-d {' or '.join(map(str, dtypes))} CPU tensor, not "
                             f"{t.dtype} {tuple(t.shape)} on {t.device}")
    (m, k), (batch, kb, n) = a.shape, b.shape
    if kb != k or tuple(out.shape) != (batch, m, n):
        raise ValueError(f"shapes do not chain: a {tuple(a.shape)}, b {tuple(b.shape)}, out {tuple(out.shape)}")
    a = a.contiguous()
    if b.stride(2) != 1 and n > 1:
        b = b.contiguous()
    if out.stride(2) != 1 and n > 1:
        raise ValueError("out's last dimension must be contiguous")
    check_config(cfg, out.dtype)
    if out.numel():
        _native.library().psum_matmul_strided(
            a.data_ptr(), b.data_ptr(), out.data_ptr(), m, n, k, batch, 0, b.stride(0), out.stride(0),
            b.stride(1), out.stride(1), int(out.dtype == torch.float32), _mac_params(cfg), torch.get_num_threads())
    return out


#: The CPU kernel's implementations (docs/emulator.md): register tiles with
#: directed-rounding adds where their preconditions hold, one fused multiply-add per step
#: for an IEEE binary32 accumulator, else blocks of fast steps.
KERNEL_PATHS = ("float64 blocks", "float32 blocks", "float64 tiles", "float32 tiles", "binary32 tiles")


def kernel_path(a: torch.Tensor, b: torch.Tensor, cfg: AccumConfig) -> str:
    """Which implementation the CPU kernel takes for ``a @ b`` under ``cfg`` (one of
    :data:`KERNEL_PATHS`); all of them give the same bits."""
    _check_operands(a, b, floating=True)
    check_config(cfg, a.dtype)
    a2 = quantize(a.detach().reshape(math.prod(a.shape[:-1]), a.shape[-1]), cfg.inputs).float()
    b2 = quantize(b.detach(), cfg.weights).float()
    a2, b2, _ = _orient(a2, b2)
    (m, k), n = a2.shape, b2.shape[1]
    path = _native.library().psum_matmul_path(a2.data_ptr(), b2.data_ptr(), m, n, k, _mac_params(cfg),
                                              torch.get_num_threads())
    return KERNEL_PATHS[path]


def exact_int_sum(a: torch.Tensor, b: torch.Tensor, cfg: IntAccumConfig, bound: int) -> torch.Tensor | None:
    """``a @ b`` (``torch.matmul``: 2-D or batched) of integer-valued tensors (integer or
    float dtype) as the accumulator leaves it, by one exact sum (docs/semantics.md §6),
    or None where that would not give the step-by-step result; ``bound`` must be at
    least ``K * max|a| * max|b|``.

    Wrapping after every add is arithmetic modulo ``2^bits``, so it equals the exact sum
    reduced once (in any order). A saturating accumulator equals the exact sum where no
    partial sum can leave its range (``bound < 2^(bits-1)``). A float matmul is exact
    while every partial sum is an integer the float holds exactly: float32 when ``bound
    <= 2^24``, float64 when it is at most 2^53. Returns int64 values.
    """
    if not a.numel() or not b.numel() or not exact_sum_applies(cfg, bound):
        return None
    dtype = torch.float32 if bound <= 2**24 else torch.float64
    exact = torch.matmul(a.to(dtype), b.to(dtype)).to(torch.int64)
    if bound < 2 ** (cfg.acc.bits - 1):  # no sum can leave the accumulator's range
        return exact
    return fit_int(exact, cfg.acc)


def exact_sum_applies(cfg: IntAccumConfig, bound: int) -> bool:
    """Whether :func:`exact_int_sum` gives the accumulator's values for sums bounded by
    ``bound``: unchunked, within float64's exact integers, and wrapping or unable to
    saturate."""
    return (cfg.chunk is None and bound <= 2**53
            and (cfg.acc.overflow == "wrap" or bound < 2 ** (cfg.acc.bits - 1)))


def fit_int(values: torch.Tensor, fmt: IntFormat) -> torch.Tensor:
    """``fmt.fit`` elementwise on int64 values (docs/semantics.md §1): saturate clamps to
    the format's range, wrap keeps the low ``bits`` (sign-extended where signed)."""
    if fmt.overflow == "saturate":
        return values.clamp(fmt.min_value, fmt.max_value)
    if not fmt.signed:
        return values & ((1 << fmt.bits) - 1)
    shift = 64 - fmt.bits
    return (values << shift) >> shift


def _one_exact_sum(a: torch.Tensor, b: torch.Tensor, cfg: IntAccumConfig) -> torch.Tensor | None:
    """An unchunked integer (K-deep) matmul by one exact sum, its bound from the data."""
    if not a.numel() or not b.numel():
        return None
    return exact_int_sum(a, b, cfg, a.shape[1] * _absmax(a) * _absmax(b))


def _absmax(t: torch.Tensor) -> int:
    low, high = t.aminmax()
    return max(-int(low), int(high))


def _cpu_int_matmul(a: torch.Tensor, b: torch.Tensor, cfg: IntAccumConfig) -> torch.Tensor:
    fast = _one_exact_sum(a, b, cfg)
    if fast is not None:
        return fast
    params = _native.IntMacParams(
        bits=cfg.acc.bits, saturate=int(cfg.acc.overflow == "saturate"),
        outer_bits=cfg.chunk_acc.bits, outer_saturate=int(cfg.chunk_acc.overflow == "saturate"),
        chunk=cfg.chunk or 0,
    )
    run = _native.library().psum_int_matmul
    return _oriented(a, b, torch.int64, lambda *args: run(*args, params, torch.get_num_threads()))


register_backend("cpu", _cpu_matmul, _cpu_int_matmul)


# -- references: the k-loop, step by step ----------------------------------------------


def round_sum(x: torch.Tensor, y: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """``round_fmt(x + y)`` of the exact sum of two float64 tensors of exact values.

    The sum is carried as a TwoSum pair (``hi = x + y`` rounded, ``lo`` its exact
    error) and rounded with ``lo`` as the sticky bit, which is correct rounding of
    the exact sum (docs/semantics.md §4).
    """
    not_stochastic(fmt, "format")
    hi = x + y
    back = hi - x
    lo = (x - (hi - back)) + (y - back)
    out = torch.empty_like(hi)
    _native.check_fits(fmt, "float64")
    _native.library().psum_round_sum_f64(hi.data_ptr(), lo.contiguous().data_ptr(), out.data_ptr(),
                                         hi.numel(), _native.format_params(fmt), 1)
    return out


def matmul_reference(a: torch.Tensor, b: torch.Tensor, cfg: AccumConfig) -> torch.Tensor:
    """The plain k-loop of docs/semantics.md §5 in PyTorch; (M, N) float64 results. A
    stochastically rounding accumulator steps its generators (§13: output (i, j) from
    ``stochastic_state(cfg.seed, i, j)``) and rounds with :func:`sr_round_sum`."""
    aq = quantize(a.double(), cfg.inputs)  # (M, K)
    bq = quantize(b.double(), cfg.weights)  # (K, N)
    (m, k), n = aq.shape, bq.shape[1]
    rounds_stochastically = cfg.acc.rounding == "stochastic"
    if rounds_stochastically:
        states = stochastic.stochastic_states(cfg.seed, torch.arange(m), torch.arange(n))
    step = cfg.chunk or max(k, 1)
    outer = torch.zeros(m, n, dtype=torch.float64)
    acc = outer
    for k0 in range(0, k, step):
        acc = torch.zeros(m, n, dtype=torch.float64)
        for kk in range(k0, min(k0 + step, k)):
            p = aq[:, kk, None] * bq[None, kk, :]  # (M, N), exact
            if cfg.product is not None:
                p = quantize(p, cfg.product)
            if rounds_stochastically:
                states = stochastic.step(states)
                acc = stochastic.sr_round_sum(acc, p, cfg.acc, stochastic.draw(states, cfg.acc.random_bits))
            else:
                acc = round_sum(acc, p.contiguous(), cfg.acc)
        if cfg.chunk:
            outer = round_sum(outer, acc, cfg.chunk_acc)
    return outer if cfg.chunk else acc


def int_matmul_reference(a: torch.Tensor, b: torch.Tensor, cfg: IntAccumConfig) -> torch.Tensor:
    """The plain integer k-loop; (M, N) int64 accumulator values."""
    a, b = a.to(torch.int64), b.to(torch.int64)
    (m, k), n = a.shape, b.shape[1]

    step = cfg.chunk or max(k, 1)
    outer = torch.zeros(m, n, dtype=torch.int64)
    acc = outer
    for k0 in range(0, k, step):
        acc = torch.zeros(m, n, dtype=torch.int64)
        for kk in range(k0, min(k0 + step, k)):
            acc = fit_int(acc + a[:, kk, None] * b[None, kk, :], cfg.acc)
        if cfg.chunk:
            outer = fit_int(outer + acc, cfg.chunk_acc)
    return outer if cfg.chunk else acc
