"""The device self-check, run as users run it, on CPU at every AMP level (the same graphs a GPU compiles)."""
import re
import subprocess
import sys

import pytest

import selfcheck_mindspore
from tests.helpers import ROOT

TINY = ["--device", "CPU", "--model", "vit_tiny_patch16", "--input_size", "32", "--batch_size", "2", "--steps", "2"]
CHECKS = ["forward vs float32 CPU", "two train steps", "loss scale state", "checkpoint save / reload"]


def selfcheck(*flags):
    return subprocess.run([sys.executable, "selfcheck_mindspore.py", *TINY, *flags], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


@pytest.mark.parametrize("level", ["O0", "O1", "O2", "O3"])
def test_every_level_passes_on_cpu(level):
    done = selfcheck("--amp_level", level)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    for check in CHECKS:
        assert re.search(rf"^PASS\s+{re.escape(check)}", done.stdout, re.M), done.stdout
    assert re.search(r"^INFO\s+train speed\s+[\d.]+ img/s", done.stdout, re.M)
    assert "CPU kernel forms" in done.stdout and done.stdout.rstrip().endswith("all checks passed")


def test_what_cannot_run_here_fails_in_one_line():
    done = selfcheck("--amp_level", "O2", "--amp_dtype", "bfloat16")
    assert done.returncode == 1
    assert re.search(r"^FAIL\s+error\s+--amp_dtype bfloat16: .* no bfloat16 MatMul kernel on CPU", done.stdout, re.M)
    assert "Traceback" not in done.stdout + done.stderr


def test_a_forward_outside_the_tolerance_fails(monkeypatch, capsys):
    """The check can fail: with a zero tolerance, float16's rounding is caught."""
    monkeypatch.setitem(selfcheck_mindspore.TOLERANCE, "float16", 0.0)
    assert selfcheck_mindspore.run([*TINY, "--amp_level", "O2", "--mode", "pynative"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^FAIL\s+forward vs float32 CPU\s+max \|diff\| [1-9]", out, re.M)
    assert out.rstrip().endswith("self-check: FAILED")
