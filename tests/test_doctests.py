"""The examples in the public API's docstrings (the API reference, `make docs`) run as
written: each module's doctests, which fail the suite when an example's output changes."""

import doctest
import importlib

import pytest

MODULES = ["psum.formats", "psum.golden", "emulator.quantize", "emulator.matmul", "emulator.convert",
           "hwgen.mac", "synth.flow"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run_as_written(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} fail (run doctest -v)"


def test_the_api_reference_builds_with_pdoc(tmp_path):
    """`make docs`: pdoc writes a page per public module, with the examples above."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "pdoc", "--docformat", "numpy", "-o", str(tmp_path), "psum",
                           "emulator", "hwgen", "synth", "reports"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "index.html").is_file()
    convert_page = (tmp_path / "emulator" / "convert.html").read_text()
    assert "calibrate" in convert_page and "EmulatedLinear" in convert_page  # the example's output
    assert "FloatMAC" in (tmp_path / "hwgen.html").read_text()
