"""Small data sets, command lines and readers shared by the tests."""
import csv
import os

import numpy as np
from PIL import Image

from util_mindspore.evaluation import metrics as metrics_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "hf_test_token"  # what the loopback hub (tests/hf_server.py, the `hub` fixture) accepts for gated repos


def read_metrics(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == metrics_lib.METRIC_COLUMNS
    return [[float(v) for v in row] for row in rows[1:]]


def make_dataset(root, classes=("a", "b", "c"), per_split=None, size=40):
    per_split = per_split or {"train": 8, "val": 3, "test": 3}
    rng = np.random.default_rng(0)
    for split, count in per_split.items():
        for k, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                pixels = (rng.random((size, size, 3)) * 60 + 60 * k).astype(np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
    return str(root)


TINY = "vit_tiny_patch16_depth2"  # the registered 2-block ViT-Tiny: plumbing tests compile in seconds


def small_argv(data, out, epochs=3, extra=()):
    """main_finetune_mindspore.py's command line for a quick run of the 2-block ViT-Tiny at 32 px."""
    return ["--model", TINY, "--data_path", data, "--nb_classes", "3", "--input_size", "32",
            "--batch_size", "4", "--epochs", str(epochs), "--warmup_epochs", "1", "--blr", "0.02", "--drop_path", "0",
            "--output_dir", out, "--task", "t", "--num_workers", "2", "--log_dir", os.path.join(out, "tb"), *extra]


def one_line_error(capsys_or_text):
    """The single `error: ...` line a script printed (asserting there is exactly one and no traceback)."""
    text = capsys_or_text if isinstance(capsys_or_text, str) else capsys_or_text.readouterr().err
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
    return lines[0]


def script(name, *argv, cwd=None, env=None, timeout=900):
    """Run one of the project's scripts as a user does, in a fresh process (signals and MindSpore's log set up as
    in its __main__ block); graph compilations are shared through one cache for the test session."""
    import subprocess
    import sys

    from tests.conftest import SUBPROCESS_COMPILE_CACHE
    environment = dict(os.environ if env is None else env)
    environment.setdefault("RETFOUND_MS_COMPILE_CACHE", SUBPROCESS_COMPILE_CACHE)
    if environment.get("RETFOUND_MS_COMPILE_CACHE") == "off":
        environment["RETFOUND_MS_COMPILE_CACHE"] = SUBPROCESS_COMPILE_CACHE
    return subprocess.run([sys.executable, os.path.join(ROOT, name), *argv], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=environment, timeout=timeout)


def publish(hub, tmp_path, repo_name, writer, **kwargs):
    """Write a checkpoint with `writer` and serve it from the loopback hub as YukunZhou/<repo_name>/<repo_name>.pth
    (kwargs go to the writer, whose model may be called `name`)."""
    path = str(tmp_path / f"{repo_name}.pth")
    writer(path, **kwargs)
    hub.add(f"YukunZhou/{repo_name}", f"{repo_name}.pth", path, gated=True)
    return path


def read_tensorboard_scalars(folder):
    """{tag: [(step, value), ...]} from the TensorBoard event files in `folder` (TFRecord framing, Event protos)."""
    import struct

    from tensorboardX.proto import event_pb2
    scalars = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as fh:
            data = fh.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def mount_namespace_available():
    """Whether this machine lets a test mount its own filesystems (a user and mount namespace: no real root)."""
    import shutil
    import subprocess
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    return probe.returncode == 0


def run_with_mounts(mounts, argv, cwd, timeout=600, list_after=None):
    """Run `python <argv>` in a private mount namespace after `mounts` (shell commands: tmpfs of a given size for
    a full disk, read-only bind mounts): the filesystems exist for that process only. `list_after`: a folder whose
    files (recursively) are printed to stdout after the run, as `FILE <path>` lines, while its mounts still exist."""
    import shlex
    import subprocess
    import sys
    command = " && ".join(mounts + [shlex.join([sys.executable, *argv])])
    if list_after:
        command = f"{command}; code=$?; find {shlex.quote(str(list_after))} -type f -printf 'FILE %p\\n'; exit $code"
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", command],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


def assert_picture(path, min_size=(200, 150), min_colours=8):
    """A figure written as a raster (PNG / JPG) or a PDF holds a picture, not a blank or a broken file: the raster
    decodes at a figure's size with several colours (text, axes and data), the PDF has a page and drawing."""
    from PIL import Image
    if path.lower().endswith(".pdf"):
        with open(path, "rb") as fh:
            data = fh.read()
        assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF"), f"{path}: not a whole PDF"
        assert data.count(b"/Type /Page") >= 1 or data.count(b"/Type/Page") >= 1, f"{path}: a PDF without a page"
        return
    with Image.open(path) as image:
        image.load()
        assert image.width >= min_size[0] and image.height >= min_size[1], f"{path}: {image.size}"
        pixels = np.asarray(image.convert("RGB"))
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert colours >= min_colours and pixels.std() > 5, f"{path}: {colours} colours, blank?"
