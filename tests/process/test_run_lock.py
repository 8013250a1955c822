"""One run per output folder: a live holder is named, a dead one's lock is taken over, nothing is left behind."""
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from util_mindspore.process import run_lock


def test_a_live_holder_is_named_and_its_lock_goes_with_it(tmp_path):
    folder = str(tmp_path / "task")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from util_mindspore.process import run_lock\n"
        "with run_lock.hold(sys.argv[1], 'prediction'):\n    print('held', flush=True); sys.stdin.read()\n"),
        folder], cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(run_lock.FolderInUse, match=rf"in use by another run \(prediction by PID {holder.pid} on "
                                                   rf"{socket.gethostname()} since "):
        with run_lock.hold(folder, "training"):
            pass
    holder.communicate("")  # the holder ends normally: its lock file goes
    assert holder.returncode == 0 and os.listdir(folder) == []
    with run_lock.hold(folder, "training"):
        info = json.load(open(os.path.join(folder, run_lock.LOCK_NAME)))
        assert info["pid"] == os.getpid() and info["what"] == "training"


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, caplog):
    folder = str(tmp_path / "task")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from util_mindspore.process import run_lock\n"
        "with run_lock.hold(sys.argv[1], 'export'):\n    print('held', flush=True); time.sleep(600)\n"),
        folder], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # kill -9: no cleanup; the kernel drops the flock with the process
    holder.wait()
    assert os.path.exists(os.path.join(folder, run_lock.LOCK_NAME))
    with caplog.at_level("INFO", logger="retfound"):
        with run_lock.hold(folder, "training"):
            pass
    assert f"taking over the lock of a run that ended (export by PID {holder.pid}" in caplog.text
    assert os.listdir(folder) == []
