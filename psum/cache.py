"""Where psum keeps what it can recompute: compiled kernels, synthesis results.

Everything cached is checked when read (a digest recorded beside it, or a parse that
must succeed) and rebuilt when it is damaged, so a truncated file never crashes a run.
"""

from __future__ import annotations

import os
from pathlib import Path


class CacheError(Exception):
    """The cache folder cannot be used (``$PSUM_CACHE_DIR`` is a file, or not writable)."""


def cache_dir() -> Path:
    """``$PSUM_CACHE_DIR``, else ``~/.cache/psum``."""
    return Path(os.environ.get("PSUM_CACHE_DIR") or Path.home() / ".cache" / "psum")


def cache_folder(*parts: str) -> Path:
    """``cache_dir()/parts...``, created; a :class:`CacheError` in one line if it cannot be."""
    folder = cache_dir().joinpath(*parts)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot use the cache folder {folder} ({exc.strerror or exc}); "
                         "set PSUM_CACHE_DIR to a writable directory") from None
    if not folder.is_dir():
        raise CacheError(f"cannot use the cache folder {folder}: it is not a directory; "
                         "set PSUM_CACHE_DIR to a writable directory")
    return folder
