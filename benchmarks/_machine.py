"""What every benchmark shares: the machine it ran on, printed first by every benchmark so that figures
from different machines are not compared blindly: CPU model, the flags the CPU kernels
were compiled with (and the compiler), thread count, torch version, and which of the
kernel's implementations are compiled in; and a timer."""

from __future__ import annotations

import platform
import subprocess
import time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """One line: CPU, compiler and flags, threads, torch version, kernel paths."""
    import torch

    from emulator import _native

    cc = _native._compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    tiles = "AVX-512 register tiles" if _tiles_compiled() else "no register tiles (no AVX-512)"
    return (f"CPU {cpu_model()}; {torch.get_num_threads()} threads; torch {torch.__version__}; "
            f"kernels: {(version.splitlines() or [cc])[0]} {' '.join(_native._FLAGS)}; {tiles}")


def _tiles_compiled() -> bool:
    import torch

    from emulator import AccumConfig
    from emulator.matmul import kernel_path

    return kernel_path(torch.ones(4, 4), torch.ones(4, 64), AccumConfig(acc="e4m7")) == "float32 tiles"


def timed(fn) -> float:
    """Wall seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
