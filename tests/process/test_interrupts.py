"""Ctrl-C (SIGINT), SIGTERM and kill -9 sent to real processes (training, prediction, export): a safe stop with exit
130 / 143 and one line, no temporary file, and a next run that continues (training) or cleans up (prediction)."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SUBPROCESS_COMPILE_CACHE
from tests.helpers import ROOT, make_dataset, read_metrics, script, small_argv
from util_mindspore.checkpoints.train_checkpoint import read_checkpoint

pytestmark = pytest.mark.slow


def start(name, argv, cwd):
    env = dict(os.environ, RETFOUND_MS_COMPILE_CACHE=SUBPROCESS_COMPILE_CACHE)
    return subprocess.Popen([sys.executable, "-u", os.path.join(ROOT, name), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)


def wait_for_line(process, text):
    """Read the process's output until a line holds `text` (the process announces the state the test needs)."""
    for line in process.stdout:
        if text in line:
            return line
    raise AssertionError(f"the process ended before printing {text!r}: {process.communicate()[1][-3000:]}")


def test_ctrl_c_stops_training_at_a_safe_point_and_the_run_resumes(tmp_path):
    data = make_dataset(tmp_path / "data")
    argv = small_argv(data, str(tmp_path / "out"), epochs=30)
    task = tmp_path / "out" / "t"
    process = start("main_finetune_mindspore.py", argv, str(tmp_path))
    wait_for_line(process, "checkpoint-best.ckpt saved")  # epoch 0 finished: from here any moment is fair
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("stopped by")]
    last = str(task / "checkpoint-last.ckpt")
    assert len(lines) == 1 and "stopped by SIGINT" in lines[0] and f"--resume {last}" in lines[0], err[-3000:]
    assert not [f for f in os.listdir(task) if ".partial" in f]
    checkpoint = read_checkpoint(last)  # complete: its end marker and checksum hold
    assert f"(epoch {checkpoint.epoch})" in lines[0]
    epochs = str(checkpoint.epoch + 2)
    resumed = script("main_finetune_mindspore.py", *[epochs if a == "30" else a for a in argv], "--resume", last,
                     cwd=str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(read_metrics(task / "metrics_val.csv")) == checkpoint.epoch + 2  # no row twice
    epochs_logged = [int(line.split('"epoch": ')[1].split(",")[0]) for line in open(task / "log.txt")]
    assert epochs_logged == list(range(checkpoint.epoch + 2))


def test_sigterm_twice_stops_training_at_once_without_temporary_files(tmp_path):
    data = make_dataset(tmp_path / "data")
    process = start("main_finetune_mindspore.py", small_argv(data, str(tmp_path / "out"), epochs=30),
                    str(tmp_path))
    wait_for_line(process, "checkpoint-best.ckpt saved")
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-3000:]
    assert len([line for line in err.splitlines() if line.startswith("stopped by SIGTERM")]) == 1, err[-3000:]
    assert not [f for f in os.listdir(tmp_path / "out" / "t") if ".partial" in f]


@pytest.fixture
def many_images(tmp_path, trained_task):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(300):
        Image.fromarray((rng.random((36, 36, 3)) * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return str(folder), os.path.join(trained_task[0], "checkpoint-best.ckpt")


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_prediction_in_one_line_leaving_no_temporary_file(many_images, tmp_path, signum, code):
    photos, best = many_images
    out = tmp_path / "pred"
    process = start("predict_mindspore.py", ["--resume", best, "--data_path", photos, "--output_dir", str(out),
                                             "--batch_size", "2", "--embeddings"], str(tmp_path))
    wait_for_line(process, "Predict [")
    process.send_signal(signum)
    _, err = process.communicate(timeout=300)
    assert process.returncode == code, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("stopped by")]
    assert len(lines) == 1 and signal.Signals(signum).name in lines[0] and "Traceback" not in err
    assert not out.exists() or os.listdir(out) == []  # nothing written, nothing temporary


def test_a_prediction_killed_with_sigkill_leaves_temporaries_the_next_run_removes(many_images, tmp_path):
    photos, best = many_images
    out = tmp_path / "pred"
    argv = ["--resume", best, "--data_path", photos, "--output_dir", str(out), "--batch_size", "2", "--embeddings"]
    process = start("predict_mindspore.py", argv, str(tmp_path))
    wait_for_line(process, "Predict [")
    process.kill()
    process.wait()
    left = [f for f in os.listdir(out) if f.endswith(".partial")]
    assert left, "the killed run left no temporary file to clean"
    done = script("predict_mindspore.py", *argv, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["Feature.csv", "embeddings.json", "embeddings.npy", "predictions.csv"]


def test_a_signal_during_export_keeps_no_file(trained_task, tmp_path):
    out = tmp_path / "export"
    process = start("export_mindspore.py", ["--resume", os.path.join(trained_task[0], "checkpoint-best.ckpt"),
                                            "--format", "mindir,onnx", "--output_dir", str(out)], str(tmp_path))
    wait_for_line(process, "mindir:")  # the first format is done and verified: the stop comes between formats
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-3000:]
    assert "stopped by SIGINT: no file of this export was kept" in err
    assert not out.exists() or os.listdir(out) == []
