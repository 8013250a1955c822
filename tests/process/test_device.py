"""Device names, backends this installation lacks, bfloat16 where no kernel exists, jit levels, stray files."""
import os
import subprocess
import sys
from types import SimpleNamespace

import mindspore as ms
import pytest

import main_finetune_mindspore
from tests.conftest import NOT_APPLICABLE
from tests.helpers import ROOT, make_dataset, small_argv
from util_mindspore.process import device


@pytest.mark.parametrize("value,expected", [
    ("CPU", ("CPU", None)), ("cpu", ("CPU", None)), ("cuda", ("GPU", None)), ("cuda:1", ("GPU", 1)),
    ("GPU", ("GPU", None)), ("Ascend", ("Ascend", None)), ("npu:3", ("Ascend", 3)), (None, (None, None))])
def test_device_names_include_upstreams_spelling(value, expected):
    assert device.parse_device(value) == expected


@pytest.mark.parametrize("value", ["tpu", "cuda:x", "gpu0", ""])
def test_an_unknown_device_is_refused_by_name(value):
    with pytest.raises(device.DeviceError, match="--device"):
        device.parse_device(value)


@pytest.mark.skipif(ms.hal.is_available("GPU") and ms.hal.is_available("Ascend"),
                    reason=f"{NOT_APPLICABLE} both backends load")
@pytest.mark.parametrize("flag", ["cuda", "GPU", "Ascend"])
def test_a_device_this_installation_cannot_run_stops_with_one_line(tmp_path, capsys, flag):
    target, _ = device.parse_device(flag)
    if device.backend_available(target):
        pytest.skip(f"{NOT_APPLICABLE} {target} is available")
    data = make_dataset(tmp_path / "data")
    assert main_finetune_mindspore.run(small_argv(data, str(tmp_path / "out"), extra=["--device", flag])) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --device {flag}: this MindSpore {ms.__version__} installation cannot run on "
                          f"{target}") and "install" in err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # stopped before any work


def test_bfloat16_without_a_kernel_stops_before_any_work(tmp_path, capsys):
    if device.bfloat16_supported():
        pytest.skip(f"{NOT_APPLICABLE} this device has bfloat16 kernels")
    data = make_dataset(tmp_path / "data")
    argv = small_argv(data, str(tmp_path / "out"), extra=["--device", "CPU", "--amp_level", "O2",
                                                           "--amp_dtype", "bfloat16"])
    assert main_finetune_mindspore.run(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --amp_dtype bfloat16: MindSpore {ms.__version__} has no bfloat16 MatMul kernel on "
                   "CPU; use --amp_dtype float16, or --amp_level O0 (float32)")
    assert not (tmp_path / "out").exists()


def test_bfloat16_is_fine_where_it_is_not_used():
    args = SimpleNamespace(device="CPU", amp_level="auto", amp_dtype="bfloat16", mode="graph", jit_level=None)
    assert device.configure(args) == ("CPU", "O0")


def test_jit_level_reaches_mindspore():
    """In a child process: MindSpore's jit_config cannot be set back to its own default once set."""
    script = (
        "from types import SimpleNamespace\n"
        "import mindspore as ms\n"
        "from util_mindspore.process import device\n"
        "for level in ('O0', 'O1', 'O2'):\n"
        "    device.configure(SimpleNamespace(device='CPU', amp_level='O0', amp_dtype='float16', mode='graph',\n"
        "                                     jit_level=level))\n"
        "    print(ms.get_context('jit_config')['jit_level'])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.stdout.split() == ["O0", "O1", "O2"], done.stderr[-2000:]


def test_mindspore_dump_folders_follow_the_run(monkeypatch, tmp_path):
    for name in device._MINDSPORE_PATH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(device, "_SET_BY_USER", set())
    device.keep_mindspore_files_in(str(tmp_path / "run"))
    assert os.environ["MS_OM_PATH"] == os.environ["MS_COMPILER_CACHE_PATH"] == str(tmp_path / "run")
    assert not (tmp_path / "run").exists()  # made by MindSpore only when it writes there
    monkeypatch.setattr(device, "_SET_BY_USER", {"MS_OM_PATH"})
    monkeypatch.setenv("MS_OM_PATH", "/users/choice")
    device.keep_mindspore_files_in(str(tmp_path / "other"))
    assert os.environ["MS_OM_PATH"] == "/users/choice"
