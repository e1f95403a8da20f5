"""psum: how few bits can a CNN's partial sums have, and what does each choice save?

The core package: number formats (:mod:`psum.formats`), the exact golden model of the
arithmetic (:mod:`psum.golden`) and the command line (:mod:`psum.cli`). Pure Python;
the emulator, hardware generator, synthesis and reports build on it.
"""

__version__ = "0.1.0"

from psum.formats import FloatFormat, IntFormat, parse  # noqa: E402

__all__ = ["FloatFormat", "IntFormat", "parse", "__version__"]
