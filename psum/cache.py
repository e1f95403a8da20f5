"""Where psum keeps what it can recompute: compiled kernels, synthesis results."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$PSUM_CACHE_DIR``, else ``~/.cache/psum``."""
    return Path(os.environ.get("PSUM_CACHE_DIR") or Path.home() / ".cache" / "psum")
