"""Read-only and full filesystems, made in a private mount namespace for one process: one line naming the path,
exit 1, nothing half-written; a read-only cache costs speed, not the run. Training, prediction and conversion."""
import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import require
from tests.helpers import ROOT, make_dataset, mount_namespace_available, run_with_mounts, small_argv

pytestmark = pytest.mark.slow
TRAIN = os.path.join(ROOT, "main_finetune_mindspore.py")


@pytest.fixture(autouse=True)
def _namespaces():
    require(mount_namespace_available(), "`unshare --user --map-root-user --mount` (test filesystems)")


def error_lines(done):
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def files_left(done):
    return [line.split(" ", 1)[1] for line in done.stdout.splitlines() if line.startswith("FILE ")]


def test_a_full_output_disk_stops_training_in_one_line_and_leaves_no_partial_file(tmp_path):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    done = run_with_mounts([f"mount -t tmpfs -o size=1m tmpfs {out}"],
                           [TRAIN, *small_argv(data, str(out), epochs=2)], str(tmp_path), list_after=out)
    assert done.returncode == 1, done.stderr[-3000:]
    lines = error_lines(done)
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(out) in lines[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    left = files_left(done)
    assert left and not [f for f in left if ".partial" in f]  # what was written is whole; nothing half-written
    assert not any(f.endswith(".ckpt") for f in left)  # the checkpoint that did not fit is not there at all


def test_a_read_only_output_folder_is_one_line(tmp_path):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    done = run_with_mounts([f"mount --bind {out} {out}", f"mount -o remount,bind,ro {out}"],
                           [TRAIN, *small_argv(data, str(out), epochs=1)], str(tmp_path))
    assert done.returncode == 1, done.stderr[-3000:]
    lines = error_lines(done)
    assert len(lines) == 1 and "Read-only file system" in lines[0] and str(out) in lines[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and os.listdir(out) == []


def test_a_read_only_cache_still_trains_from_a_converted_entry(tmp_path):
    """A shared, read-only ~/.cache: the compile cache and the lock are off (a warning each), the run goes on."""
    torch = pytest.importorskip("torch")
    from main_finetune_mindspore import run
    from util_mindspore.reference.torch_models import create_reference, randomize_
    data = make_dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    weights = str(tmp_path / "tiny.pth")
    torch.save({"model": randomize_(create_reference("vit_tiny_patch16", num_classes=0, depth=2), 2).state_dict()},
               weights)
    assert run(small_argv(data, str(tmp_path / "first"), epochs=1, extra=[
        "--finetune", weights, "--weights_cache_dir", str(cache)])) == 0  # converts while the cache is writable
    read_only = [f"mount --bind {cache} {cache}", f"mount -o remount,bind,ro {cache}"]
    done = run_with_mounts(read_only, [TRAIN, *small_argv(data, str(tmp_path / "second"), epochs=1, extra=[
        "--finetune", weights, "--weights_cache_dir", str(cache), "--compile_cache_dir", str(cache / "compile")])],
        str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "compile cache is off" in output and "the lock is off" in output
    assert os.path.exists(tmp_path / "second" / "t" / "checkpoint-best.ckpt")


def test_a_full_disk_stops_prediction_with_embeddings_in_one_line_never_a_sigbus(tmp_path, trained_task):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        pixels = (rng.random((36, 36, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(photos / f"image_with_a_long_name_{i}.png")
    out = tmp_path / "pred"
    out.mkdir()
    done = run_with_mounts([f"mount -t tmpfs -o size=24k tmpfs {out}"], [
        os.path.join(ROOT, "predict_mindspore.py"), "--resume", os.path.join(trained_task[0], "checkpoint-best.ckpt"),
        "--data_path", str(photos), "--output_dir", str(out), "--embeddings"], str(tmp_path), list_after=out)
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    lines = error_lines(done)
    assert len(lines) == 1 and "No space left on device" in lines[0], done.stderr[-3000:]
    assert [f for f in files_left(done) if not os.path.basename(f).startswith(".")] == []


def test_the_converters_full_and_read_only_disks_are_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    from util_mindspore.reference.torch_models import create_reference
    weights = str(tmp_path / "tiny.pth")
    torch.save({"model": create_reference("vit_tiny_patch16", num_classes=0, depth=2).state_dict()}, weights)
    cache = tmp_path / "cache"
    cache.mkdir()
    convert = [os.path.join(ROOT, "convert_weights_example.py"), "--finetune", weights, "--model",
               "vit_tiny_patch16_depth2", "--input_size", "32", "--cache_dir", str(cache)]
    for mounts, problem in ((["mount -t tmpfs -o size=64k tmpfs " + str(cache)], "No space left on device"),
                            ([f"mount --bind {cache} {cache}", f"mount -o remount,bind,ro {cache}"],
                             "is not writable")):
        done = run_with_mounts(mounts, convert, str(tmp_path), list_after=cache)
        assert done.returncode == 1, done.stderr[-3000:]
        lines = error_lines(done)
        assert len(lines) == 1 and problem in lines[0] and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert not [f for f in files_left(done) if f.endswith((".ckpt", ".json", ".partial", ".partial.ckpt"))]
