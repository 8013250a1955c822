"""Ctrl-C (SIGINT) and SIGTERM sent to a real training process: it stops at the next safe point, leaves no
temporary file, says in one line where the last complete checkpoint is, exits 130 / 143, and the run resumes."""
import os
import signal
import subprocess
import sys
import time

from tests.helpers import ROOT, make_dataset, read_metrics, small_argv
from util_mindspore.train_checkpoint import read_checkpoint


def start_training(tmp_path, epochs=30):
    data = make_dataset(tmp_path / "data")
    out = str(tmp_path / "out")
    argv = small_argv(data, out, epochs=epochs, extra=["--compile_cache_dir", "off"])
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "main_finetune_mindspore.py"), *argv],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
    return process, argv, os.path.join(out, "t")


def wait_for(path, process, timeout=300):
    started = time.time()
    while not os.path.exists(path):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() - started < timeout, f"{path} never appeared"
        time.sleep(0.2)


def test_ctrl_c_stops_training_at_a_safe_point_and_the_run_resumes(tmp_path):
    signum, code = signal.SIGINT, 130
    process, argv, task = start_training(tmp_path)
    last = os.path.join(task, "checkpoint-last.ckpt")
    wait_for(last, process)
    time.sleep(1.0)  # somewhere in the next epoch: a step, an evaluation or a save
    process.send_signal(signum)
    _, err = process.communicate(timeout=300)
    assert process.returncode == code, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("stopped by")]
    assert len(lines) == 1 and f"stopped by {signal.Signals(signum).name}" in lines[0], err[-3000:]
    assert f"--resume {last}" in lines[0]
    assert not [f for f in os.listdir(task) if ".partial" in f]
    checkpoint = read_checkpoint(last)  # complete: its end marker and checksum hold
    rows = len(read_metrics(os.path.join(task, "metrics_val.csv")))
    assert rows >= checkpoint.epoch + 1  # perhaps one more: the epoch under way wrote its row before its save

    resumed = subprocess.run([sys.executable, os.path.join(ROOT, "main_finetune_mindspore.py"),
                              *[a if a != "30" else str(checkpoint.epoch + 2) for a in argv], "--resume", last],
                             capture_output=True, text=True, cwd=str(tmp_path), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(read_metrics(os.path.join(task, "metrics_val.csv"))) == checkpoint.epoch + 2  # no row twice
    epochs = [int(line.split('"epoch": ')[1].split(",")[0]) for line in open(os.path.join(task, "log.txt"))]
    assert epochs == list(range(checkpoint.epoch + 2))


def test_sigterm_twice_stops_at_once_without_temporary_files(tmp_path):
    """SIGTERM (a scheduler's) exits 143; a second one does not wait for the next safe point. (One SIGTERM and
    its safe point: tests/test_distributed.py, under msrun.)"""
    process, _, task = start_training(tmp_path)
    wait_for(os.path.join(task, "checkpoint-last.ckpt"), process)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-3000:]
    assert len([line for line in err.splitlines() if line.startswith("stopped by SIGTERM")]) == 1, err[-3000:]
    assert not [f for f in os.listdir(task) if ".partial" in f]
