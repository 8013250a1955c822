"""Data-parallel runs under msrun on CPU: two workers, one converted checkpoint, identical weights."""
import csv
import os
import re
import shutil
import socket
import subprocess

import pytest

import main_finetune_mindspore
from tests.conftest import require
from tests.helpers import TINY, make_dataset, read_metrics
from tests.hf_server import FakeHub

torch = pytest.importorskip("torch", reason="writing a checkpoint in the published layout needs torch")
pytest.importorskip("timm", reason="the PyTorch reference needs timm==0.9.2")
from tests.helpers import ROOT  # noqa: E402
from util_mindspore.reference import checkpoint_layouts as layouts  # noqa: E402

pytestmark = pytest.mark.msrun


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def msrun_run(tmp_path_factory):
    require(shutil.which("msrun"), "msrun (installed with mindspore)")
    tmp = tmp_path_factory.mktemp("msrun")
    # 3 classes x 5 test images: 15, an odd test set over 2 ranks
    data = make_dataset(tmp / "data", per_split={"train": 8, "val": 3, "test": 5})
    pth = str(tmp / "RETFound_mae_meh.pth")
    layouts.mae_pretrained(pth, depth=2)
    with FakeHub(token="hf_test_token") as hub:
        hub.add("YukunZhou/RETFound_mae_meh", "RETFound_mae_meh.pth", pth, gated=True)
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_TOKEN="hf_test_token", HF_HUB_CACHE=str(tmp / "hf"),
                   RETFOUND_MS_CACHE=str(tmp / "weights"), RETFOUND_TEST_DIGEST_DIR=str(tmp / "digests"),
                   PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests", "msrun_hooks"), ROOT]))
        command = ["msrun", "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
                   f"--log_dir={tmp / 'logs'}", "--join=True", os.path.join(ROOT, "main_finetune_mindspore.py"),
                   "--model", TINY, "--finetune", "RETFound_mae_meh", "--data_path", data,
                   "--nb_classes", "3", "--input_size", "32", "--batch_size", "4", "--epochs", "2",
                   "--warmup_epochs", "1", "--output_dir", str(tmp / "out"), "--task", "t", "--num_workers", "2",
                   "--dist_eval"]
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(tmp), timeout=900)
        gets = hub.gets()
    logs = {name: open(tmp / "logs" / name).read() for name in os.listdir(tmp / "logs") if name.startswith("worker")}
    assert done.returncode == 0, done.stderr[-3000:] + "\n".join(logs.values())[-5000:]
    return tmp, data, gets, logs


def test_two_workers_train_to_identical_weights(msrun_run):
    tmp, _, _, logs = msrun_run
    digests = [open(tmp / "digests" / f"rank{r}.txt").read() for r in (0, 1)]
    assert digests[0] == digests[1]
    assert len(read_metrics(tmp / "out" / "t" / "metrics_val.csv")) == 2  # one row per epoch, written once
    assert sum("x 1 accumulation x 2 processes = 8" in text for text in logs.values()) == 1  # rank 0 says it


def test_two_ranks_download_and_convert_once(msrun_run):
    _, _, gets, logs = msrun_run
    assert gets == 1
    assert sum(text.count("converted ") for text in logs.values()) == 1
    assert sum(text.count("loaded ") for text in logs.values()) >= 2  # both ranks load the converted weights


def test_dist_eval_equals_single_process_eval_and_lists_every_image_once(msrun_run):
    tmp, data, _, _ = msrun_run
    with open(tmp / "out" / "t" / "predictions_test.csv", newline="") as fh:
        paths = [row[0] for row in list(csv.reader(fh))[1:]]
    assert len(paths) == len(set(paths)) == 15
    code = main_finetune_mindspore.run([
        "--eval", "--resume", str(tmp / "out" / "t" / "checkpoint-best.ckpt"), "--model", TINY,
        "--data_path", data, "--nb_classes", "3", "--input_size", "32", "--batch_size", "4",
        "--output_dir", str(tmp / "single"), "--task", "t"])
    assert code == 0
    distributed = read_metrics(tmp / "out" / "t" / "metrics_test.csv")
    single = read_metrics(tmp / "single" / "t" / "eval_checkpoint-best" / "metrics_test.csv")
    # every metric but val_loss: upstream's val_loss is the mean of per-batch losses, and each rank's slice is
    # batched on its own under --dist_eval (upstream's DistributedSampler batches differ from one process's too)
    assert [row[1:] for row in distributed] == [pytest.approx(row[1:], abs=1e-6) for row in single]


def test_sigterm_stops_every_rank_at_the_same_step(tmp_path):
    """A scheduler's SIGTERM reaches each worker: they agree on the step, stop, and each exits 143 (msrun then
    reports the failed workers); the checkpoint rank 0 wrote last is complete."""
    import signal
    import time

    from util_mindspore.checkpoints.train_checkpoint import read_checkpoint
    require(shutil.which("msrun"), "msrun (installed with mindspore)")
    data = make_dataset(tmp_path / "data", per_split={"train": 24, "val": 3, "test": 3})
    env = dict(os.environ, PYTHONPATH=ROOT, RETFOUND_MS_CACHE=str(tmp_path / "weights"))
    command = ["msrun", "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
               f"--log_dir={tmp_path / 'logs'}", "--join=True", os.path.join(ROOT, "main_finetune_mindspore.py"),
               "--model", TINY, "--data_path", data, "--nb_classes", "3", "--input_size", "32",
               "--batch_size", "2", "--epochs", "40", "--warmup_epochs", "1", "--output_dir", str(tmp_path / "out"),
               "--task", "t", "--num_workers", "2", "--log_dir", ""]
    msrun = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             cwd=str(tmp_path), start_new_session=True)
    try:
        last = tmp_path / "out" / "t" / "checkpoint-last.ckpt"
        started = time.time()
        while not last.exists():
            assert msrun.poll() is None and time.time() - started < 600, msrun.communicate()[1][-2000:]
            time.sleep(0.5)
        children = subprocess.run(["pgrep", "-P", str(msrun.pid)], capture_output=True, text=True).stdout.split()
        workers = [pid for pid in children if b"main_finetune_mindspore.py" in open(f"/proc/{pid}/cmdline", "rb").read()
                   and b"MS_ROLE=MS_WORKER" in open(f"/proc/{pid}/environ", "rb").read()]
        assert len(workers) == 2
        for pid in workers:
            os.kill(int(pid), signal.SIGTERM)
        msrun.communicate(timeout=600)
    finally:
        if msrun.poll() is None:
            os.killpg(msrun.pid, signal.SIGKILL)
    logs = [open(tmp_path / "logs" / name).read() for name in os.listdir(tmp_path / "logs")
            if name.startswith("worker")]
    stops = [[line for line in log.splitlines() if "stopped by SIGTERM" in line] for log in logs]
    assert len(logs) == 2 and all(len(s) == 1 for s in stops), [log[-1500:] for log in logs]
    where = [re.search(r"stopped by SIGTERM (after epoch \d+(, step \d+ of \d+)?)", s[0]).group(1) for s in stops]
    assert where[0] == where[1], where  # every rank stopped at the same safe point
    assert read_checkpoint(str(last)).epoch is not None
    assert not [f for f in os.listdir(tmp_path / "out" / "t") if ".partial" in f]
