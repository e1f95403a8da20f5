"""The psum command line, run as a user runs it (a subprocess) and in-process."""

import json
import subprocess
import sys

import pytest

from psum import __version__
from psum.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "psum", *args], capture_output=True, text=True)


def test_version():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"psum {__version__}"


def test_format_table_and_json(capsys):
    assert main(["format", "e4m7", "bf16", "int24:sat"]) == 0
    out = capsys.readouterr().out
    assert "| e4m7 " in out and "| bf16 " in out and "| int24:sat " in out
    assert main(["format", "--json", "e4m3", "e5m10b12:sat:ftz:rz", "int8"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0] == {**rows[0], "spec": "e4m3", "max_finite": 240.0, "min_subnormal": 2.0**-9,
                       "epsilon": 0.125, "bits": 8, "has_inf": True}
    assert rows[1]["overflow"] == "saturate" and rows[1]["min_subnormal"] is None
    assert rows[1]["max_finite"] == (2 - 2**-10) * 2.0 ** (31 - 12)
    assert rows[2] == {"spec": "int8", "kind": "int", "bits": 8, "signed": True,
                       "overflow": "wrap", "min": -128, "max": 127}


def test_candidates(capsys):
    assert main(["format", "--candidates", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    specs = {r["spec"] for r in rows}
    assert len(rows) >= 40 and {"fp16", "bf16", "fp32", "e4m7"} <= specs


@pytest.mark.parametrize("args, fragment", [
    (["format", "e4x7"], "invalid format spec 'e4x7'"),
    (["format", "e4m53"], "man_bits must be between 0 and 52, not 53"),
    (["format", "e4m7:foo"], "unknown mode 'foo'"),
    (["format", "int1"], "bits must be between 2 and 64"),
    (["format"], "needs at least one SPEC"),
    (["nosuchcommand"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(args, fragment):
    proc = run(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("psum: error: ") and fragment in lines[-1]
    assert len([line for line in lines if line.startswith("psum: error")]) == 1
