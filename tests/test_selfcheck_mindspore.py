"""The device self-check, run as users run it, on CPU at every AMP level (the same graphs a GPU compiles), with the
CPU runtimes it times."""
import re
import subprocess
import sys

import pytest

import selfcheck_mindspore
from tests.helpers import ROOT, TINY

TINY_FLAGS = ["--device", "CPU", "--model", TINY, "--input_size", "32", "--batch_size", "2", "--steps", "2"]
CHECKS = ["forward vs float32 CPU", "two train steps", "loss scale state", "checkpoint save / reload"]


def selfcheck(*flags):
    return subprocess.run([sys.executable, "selfcheck_mindspore.py", *TINY_FLAGS, *flags], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def assert_passes(output):
    for check in CHECKS:
        assert re.search(rf"^PASS\s+{re.escape(check)}", output, re.M), output
    assert re.search(r"^INFO\s+train speed\s+[\d.]+ img/s", output, re.M)
    assert "CPU kernel forms" in output and output.rstrip().endswith("all checks passed")


def test_the_accelerator_default_o2_passes_on_cpu_and_times_every_cpu_runtime_installed(capsys):
    """O2 (float16, loss scaling: what GPU and Ascend run); onnxruntime and OpenVINO (float32, and bfloat16 where
    the CPU has it) each timed on the exported model, its export verified first."""
    assert selfcheck_mindspore.run([*TINY_FLAGS, "--amp_level", "O2"]) == 0
    output = capsys.readouterr().out
    assert_passes(output)
    assert re.search(r"^INFO\s+onnxruntime float32 speed\s+[\d.]+ img/s .*export verified to", output, re.M), output
    assert re.search(r"^INFO\s+openvino float32 speed\s+[\d.]+ img/s", output, re.M), output


@pytest.mark.slow
@pytest.mark.parametrize("level", ["O0", "O1", "O3"])
def test_every_other_level_passes_on_cpu_as_a_script(level):
    done = selfcheck("--amp_level", level, "--runtimes", "none")
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert_passes(done.stdout)


def test_what_cannot_run_here_fails_in_one_line(capsys):
    assert selfcheck_mindspore.run([*TINY_FLAGS, "--amp_level", "O2", "--amp_dtype", "bfloat16"]) == 1
    output = capsys.readouterr().out
    assert re.search(r"^FAIL\s+error\s+--amp_dtype bfloat16: .* no bfloat16 MatMul kernel on CPU", output, re.M)


def test_a_forward_outside_the_tolerance_fails(monkeypatch, capsys):
    """The check can fail: with a zero tolerance, float16's rounding is caught."""
    from util_mindspore.models import compute_policy
    monkeypatch.setattr(compute_policy, "REDUCED_TOLERANCE_UNITS", 0)
    assert selfcheck_mindspore.run([*TINY_FLAGS, "--amp_level", "O2", "--mode", "pynative", "--runtimes",
                                    "none"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^FAIL\s+forward vs float32 CPU\s+max \|diff\| [1-9]", out, re.M)
    assert out.rstrip().endswith("self-check: FAILED")
