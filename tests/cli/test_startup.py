"""How a script ends: bad input is one line and exit 1, a bug keeps its traceback, wherever it happens. Faults are
injected deep in the package (the converter, the hub, the exporter, the runtimes, the data loader) and must come
out of the script as the exception they are, never as a user's error."""
import argparse
import os
import subprocess
import sys
import zipfile

import pytest

import convert_weights_example
import export_mindspore
import main_finetune_mindspore
import predict_mindspore
from tests.helpers import ROOT, one_line_error, small_argv
from util_mindspore.checkpoints import hub, torch_pickle
from util_mindspore.checkpoints.hub import Source
from util_mindspore.cli.startup import exit_code
from util_mindspore.errors import DataError, WeightError

torch = pytest.importorskip("torch", reason="writing a .pth needs torch")


class InjectedBug(Exception):
    """What a bug of ours raises: no handler may take it for bad input."""


def inject(monkeypatch, owner, name):
    def broken(*args, **kwargs):
        raise InjectedBug(f"injected into {name}")
    monkeypatch.setattr(owner, name, broken)


def test_bad_input_is_one_line_and_a_bug_its_traceback(capsys):
    def user_fault(_):
        raise DataError("data/train: no class folders inside")

    def disk_fault(_):
        raise OSError(28, "No space left on device", "/full/checkpoint.ckpt")

    def bug(_):
        return {}["missing"]
    assert exit_code(user_fault, argparse.Namespace()) == 1
    assert one_line_error(capsys) == "error: data/train: no class folders inside"
    assert exit_code(disk_fault, argparse.Namespace()) == 1
    assert one_line_error(capsys) == "error: /full/checkpoint.ckpt: No space left on device"
    with pytest.raises(KeyError):
        exit_code(bug, argparse.Namespace())


def test_a_bug_in_a_script_prints_its_traceback_and_exits_1(tmp_path):
    """As a user sees it: the process's stderr holds the traceback, not an `error:` line."""
    code = ("import sys, convert_weights_example as c\n"
            "from util_mindspore.checkpoints import torch_pickle\n"
            "def broken(*a, **k):\n"
            "    raise ZeroDivisionError('injected')\n"
            "torch_pickle.load = broken\n"
            "sys.exit(c.run(sys.argv[1:]))\n")
    path = str(tmp_path / "weights.pth")
    torch.save({"model": {"w": torch.zeros(2)}}, path)
    done = subprocess.run([sys.executable, "-c", code, "--finetune", path, "--cache_dir", str(tmp_path / "cache")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" in done.stderr and "ZeroDivisionError: injected" in done.stderr
    assert "\nerror:" not in done.stderr


def test_a_damaged_checkpoint_is_one_line_and_a_bug_in_its_reader_is_not(tmp_path, monkeypatch, capsys):
    path = str(tmp_path / "weights.pth")
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(4, 3, 16, 16)}}, path)
    argv = ["--finetune", path, "--cache_dir", str(tmp_path / "cache")]
    with open(path, "r+b") as fh:  # the zip's central directory, cut in two
        fh.truncate(os.path.getsize(path) - 30)
    assert convert_weights_example.run(argv) == 1
    assert "unreadable (truncated or corrupt?) checkpoint" in one_line_error(capsys)
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(4, 3, 16, 16)}}, path)
    inject(monkeypatch, torch_pickle._SafeUnpickler, "find_class")
    with pytest.raises(InjectedBug):
        convert_weights_example.run(argv)


def test_the_zip_reader_error_of_a_bug_is_not_taken_for_damage(tmp_path, monkeypatch):
    """Even an exception of the zip module's own types, raised by our code rather than by the file's bytes."""
    path = str(tmp_path / "weights.pth")
    torch.save({"model": {"w": torch.zeros(2)}}, path)

    def bug(*args, **kwargs):
        raise TypeError("injected")
    monkeypatch.setattr(torch_pickle, "_rebuild_tensor", bug)
    with pytest.raises(TypeError, match="injected"):
        torch_pickle.load(path)
    monkeypatch.undo()
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist()  # the file itself is fine


def test_a_bug_asking_the_hub_propagates_while_an_unreachable_hub_is_no_answer(monkeypatch):
    import huggingface_hub
    source = Source("RETFound_mae_meh", "hub", repo_id="YukunZhou/RETFound_mae_meh", filename="RETFound_mae_meh.pth")
    assert hub.hub_file_etag(source, None, None) is None  # tests point HF_ENDPOINT at a dead port: no answer
    inject(monkeypatch, huggingface_hub, "get_hf_file_metadata")
    with pytest.raises(InjectedBug):
        hub.hub_file_etag(source, None, None)


def test_a_bug_in_the_exporter_propagates_and_leaves_nothing(trained_task, tmp_path, monkeypatch):
    from util_mindspore.inference import export
    out = tmp_path / "export"
    inject(monkeypatch, export, "free_onnx_batch")
    with pytest.raises(InjectedBug):
        export_mindspore.run(["--resume", os.path.join(trained_task[0], "checkpoint-best.ckpt"), "--format",
                              "mindir,onnx", "--output_dir", str(out)])
    assert not out.exists() or not [f for f in os.listdir(out) if not f.startswith(".retfound")]


def test_a_bug_opening_a_runtime_propagates_while_a_bad_file_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from util_mindspore.inference import runtimes
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(WeightError, match="onnxruntime cannot load it"):
        runtimes.onnx_session(str(bad))
    import onnxruntime
    inject(monkeypatch, onnxruntime, "InferenceSession")
    with pytest.raises(InjectedBug):
        runtimes.onnx_session(str(bad))


def test_a_bug_in_the_data_pipeline_stops_training_with_its_traceback(dataset, tmp_path, monkeypatch, capsys):
    from util_mindspore.data import transforms
    inject(monkeypatch, transforms, "random_resized_crop_box")
    with pytest.raises(InjectedBug):
        main_finetune_mindspore.run(small_argv(dataset, str(tmp_path / "out"), epochs=1))
    assert "error:" not in capsys.readouterr().err


def test_a_bug_while_predicting_an_image_propagates(trained_task, dataset, tmp_path, monkeypatch):
    """An unreadable image is a row of its own; a bug decoding one is not taken for one."""
    from util_mindspore.data import image_sources
    inject(monkeypatch, image_sources.Image, "open")
    with pytest.raises(InjectedBug):
        predict_mindspore.run(["--resume", os.path.join(trained_task[0], "checkpoint-best.ckpt"), "--data_path",
                               os.path.join(dataset, "test"), "--output_dir", str(tmp_path / "p")])
    written = os.listdir(tmp_path / "p") if (tmp_path / "p").exists() else []
    assert not [f for f in written if f.endswith(".csv")], written  # no table of a run that failed
