"""Build and load psum's compiled CPU kernels (``emulator/kernels/*.c``).

Why a C library through ctypes rather than a torch C++ extension or numba: the kernels
need no torch API (they take raw pointers), so a plain C file compiles in about a
second with the system compiler instead of the half-minute a torch extension costs,
and it adds no dependency. OpenMP spreads the work over the cores.

The shared library is cached under ``$PSUM_CACHE_DIR`` (default ``~/.cache/psum``),
keyed by a hash of the source, the compiler, its flags and the machine; ``$CC``
chooses the compiler (default ``cc``). No compiler is a clear error, never a silent
slow path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import struct
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

from psum.cache import cache_folder
from psum.formats import FloatFormat

_SOURCE = Path(__file__).with_name("kernels") / "psum_cpu.c"
# -ffp-contract=off: a fused multiply-add would break the exact TwoSum error terms.
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math",
          "-fPIC", "-shared", "-std=c11"]


class KernelBuildError(RuntimeError):
    """The CPU kernels could not be compiled (no compiler, or the compile failed)."""


def _compiler() -> str:
    cc = os.environ.get("CC", "cc")
    path = shutil.which(cc)
    if path is None:
        raise KernelBuildError(
            f"psum's CPU kernels need a C compiler with OpenMP, and {cc!r} was not found "
            "(install gcc, e.g. `apt-get install gcc`, or set CC)"
        )
    return path


def _file_digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".blake2b")


def _build(cc: str, target: Path) -> None:
    """Compile into ``target``, with the digest of the result beside it (``.blake2b``)."""
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        proc = subprocess.run([cc, *_FLAGS, str(_SOURCE), "-o", str(out)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["(no output)"])[0]
            raise KernelBuildError(f"compiling {_SOURCE.name} with {cc} failed: {first}")
        digest = Path(tmp) / "digest"
        digest.write_text(_file_digest(out))
        os.replace(digest, _sidecar(target))
        os.replace(out, target)  # atomic: concurrent builders never see half a file


def _intact(target: Path) -> bool:
    """Whether the cached library is the whole file that was built (its digest matches):
    loading a truncated shared library would crash the process (SIGBUS), not raise."""
    try:
        return target.is_file() and _sidecar(target).read_text().strip() == _file_digest(target)
    except OSError:
        return False


@functools.cache
def library() -> ctypes.CDLL:
    """The compiled kernel library, built on first use."""
    cc = _compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                             check=False).stdout
    key = hashlib.blake2b(digest_size=12)
    for part in (_SOURCE.read_bytes(), cc.encode(), version.encode(), " ".join(_FLAGS).encode(),
                 platform.machine().encode(), platform.node().encode()):
        key.update(part)
        key.update(b"\0")
    target = cache_folder("kernels") / f"psum_cpu-{key.hexdigest()}.so"
    if not _intact(target):  # missing, or damaged since it was built: build it (again)
        _build(cc, target)
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        raise KernelBuildError(f"cannot load the compiled kernels {target}: {exc}") from None
    fmt_ptr = ctypes.POINTER(FormatParams)
    signatures = {
        "psum_quantize_f32": [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, fmt_ptr],
        "psum_quantize_f64": [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, fmt_ptr],
        "psum_round_sum_f64": [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_int64, fmt_ptr],
        "psum_int_matmul": [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                            ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(IntMacParams)],
    }
    signatures["psum_matmul_strided"] = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 9 \
        + [ctypes.c_int, ctypes.POINTER(MacParams)]
    signatures["psum_conv2d"] = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 17 + [ctypes.POINTER(MacParams)]
    signatures["psum_dpu_matmul"] = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [fmt_ptr, fmt_ptr] \
        + [ctypes.c_int64] * 5
    signatures["psum_matmul_sr"] = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.POINTER(MacParams),
                                                                                   ctypes.c_int64]
    signatures["psum_matmul_path"] = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                      ctypes.c_int64, ctypes.POINTER(MacParams)]
    for name, args in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = [*args, ctypes.c_int]  # every kernel ends with a thread count
        fn.restype = ctypes.c_int if name == "psum_matmul_path" else None
    return lib


class FormatParams(ctypes.Structure):
    """ctypes mirror of ``psum_fmt`` in psum_cpu.c: a FloatFormat as double patterns."""

    _fields_ = [(name, ctypes.c_int64) for name in (
        "man_bits", "emin", "subnormals", "nearest_even", "max_abs", "overflow_abs",
        "inf_abs", "min_normal_abs", "min_sub_abs", "half_min_sub_abs", "ftz_up_abs",
        "nan_result", "rare_below_abs",
    )]


class MacParams(ctypes.Structure):
    """ctypes mirror of ``psum_mac``: accumulator, product and chunk formats."""

    _fields_ = [("acc", FormatParams), ("product", FormatParams), ("outer", FormatParams),
                ("has_product", ctypes.c_int64), ("chunk", ctypes.c_int64), ("narrow", ctypes.c_int64)]


class IntMacParams(ctypes.Structure):
    """ctypes mirror of ``psum_int_mac``."""

    _fields_ = [(name, ctypes.c_int64) for name in (
        "bits", "saturate", "outer_bits", "outer_saturate", "chunk")]


def _pattern(value: Fraction | float) -> int:
    """Pattern of the double equal to ``value`` (which must be exactly a double)."""
    as_float = float(value)
    if not isinstance(value, float) and Fraction(as_float) != value:
        raise AssertionError(f"{value} is not exactly a double")  # guarded by check_fits
    return struct.unpack("<Q", struct.pack("<d", as_float))[0]


def fit_problems(fmt: FloatFormat, dtype_name: str) -> list[str]:
    """Why ``fmt`` cannot run on ``dtype_name`` tensors (empty when it can): every value
    and rounding breakpoint must be exact in the kernels' double arithmetic, and every
    value of ``fmt`` a ``dtype_name`` number."""
    lowest = fmt.emin - fmt.man_bits - 2  # exponent of the finest breakpoint (FTZ)
    problems = []
    if fmt.man_bits > 50 or fmt.emax > 1023 or fmt.emin < -1022 or lowest < -1074:
        problems.append("its breakpoints are not all float64 numbers")
    if dtype_name == "float32" and (fmt.man_bits > 23 or fmt.emax > 127
                                    or fmt.emin - fmt.man_bits < -149):
        problems.append("its values are not all float32 numbers")
    return problems


def check_fits(fmt: FloatFormat, dtype_name: str) -> None:
    """Raise ValueError unless :func:`fit_problems` finds nothing."""
    problems = fit_problems(fmt, dtype_name)
    if problems:
        hint = " (use a float64 tensor)" if dtype_name == "float32" and len(problems) == 1 \
            and "float32" in problems[0] else ""
        raise ValueError(
            f"format {fmt} (exponents {fmt.emin}..{fmt.emax}, M={fmt.man_bits}) is not "
            f"supported on {dtype_name} tensors: {'; '.join(problems)}{hint}"
        )


@functools.cache
def format_params(fmt: FloatFormat) -> FormatParams:
    """The kernel's description of ``fmt`` (call :func:`check_fits` first)."""
    pow2 = lambda e: Fraction(2) ** e  # noqa: E731
    nan_result = {  # docs/semantics.md: NaN where the format has it, else its largest code
        (True, True): 0x7FF8000000000000,
        (True, False): _pattern(float("inf")),
        (False, False): _pattern(fmt.max_finite),
    }[(fmt.has_inf, fmt.has_nan)]
    max_abs = _pattern(fmt.max_finite)
    inf_abs = _pattern(float("inf"))
    return FormatParams(
        man_bits=fmt.man_bits,
        emin=fmt.emin,
        subnormals=int(fmt.subnormals),
        nearest_even=int(fmt.rounding == "nearest_even"),
        max_abs=max_abs,
        overflow_abs=inf_abs if fmt.has_inf and fmt.rounding != "toward_zero" else max_abs,
        inf_abs=inf_abs if fmt.has_inf else max_abs,
        min_normal_abs=_pattern(pow2(fmt.emin)),
        min_sub_abs=_pattern(pow2(fmt.emin - fmt.man_bits)),
        half_min_sub_abs=_pattern(pow2(fmt.emin - fmt.man_bits - 1)),
        ftz_up_abs=_pattern(pow2(fmt.emin) - pow2(fmt.emin - fmt.man_bits - 2)),
        nan_result=nan_result,
        # below the smallest subnormal (with subnormals) and float64 subnormals
        rare_below_abs=max(_pattern(pow2(fmt.emin - fmt.man_bits)) if fmt.subnormals else 0,
                           _pattern(pow2(-1022))),
    )
