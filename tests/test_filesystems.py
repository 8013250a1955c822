"""Read-only and full filesystems, made in a private mount namespace: one line naming the path, exit 1, nothing
half-written; a read-only cache costs speed, not the run."""
import os

import pytest

from tests.helpers import ROOT, make_dataset, mount_namespace_available, run_with_mounts, small_argv

pytestmark = pytest.mark.skipif(not mount_namespace_available(),
                                reason="needs `unshare --user --map-root-user --mount` to make test filesystems")
SCRIPT = os.path.join(ROOT, "main_finetune_mindspore.py")


def error_lines(done):
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def test_a_full_output_disk_is_one_line_and_leaves_no_partial_file(tmp_path):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    done = run_with_mounts([f"mount -t tmpfs -o size=2m tmpfs {out}"],
                           [SCRIPT, *small_argv(data, str(out), epochs=2)], str(tmp_path), list_after=out)
    assert done.returncode == 1, done.stderr[-3000:]
    lines = error_lines(done)
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(out) in lines[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    left = [line.split(" ", 1)[1] for line in done.stdout.splitlines() if line.startswith("FILE ")]
    assert left and not [f for f in left if ".partial" in f]  # what was written is whole; nothing half-written
    assert not any(f.endswith(".ckpt") for f in left)  # the checkpoint that did not fit is not there at all


def test_a_read_only_output_folder_is_one_line(tmp_path):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    done = run_with_mounts([f"mount --bind {out} {out}", f"mount -o remount,bind,ro {out}"],
                           [SCRIPT, *small_argv(data, str(out), epochs=1)], str(tmp_path))
    assert done.returncode == 1, done.stderr[-3000:]
    lines = error_lines(done)
    assert len(lines) == 1 and "Read-only file system" in lines[0] and str(out) in lines[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and os.listdir(out) == []


def test_a_read_only_cache_still_trains_from_a_converted_entry(tmp_path):
    """A shared, read-only ~/.cache: the compile cache and the lock are off (a warning each), the run goes on."""
    torch = pytest.importorskip("torch")
    from tests.torch_reference import create_reference, randomize_
    data = make_dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    weights = str(tmp_path / "tiny.pth")
    torch.save({"model": randomize_(create_reference("vit_tiny_patch16", num_classes=0), 2).state_dict()}, weights)
    argv = small_argv(data, str(tmp_path / "first"), epochs=1, extra=["--finetune", weights,
                                                                       "--weights_cache_dir", str(cache)])
    from main_finetune_mindspore import run
    assert run(argv) == 0  # converts into the cache while it is writable
    read_only = [f"mount --bind {cache} {cache}", f"mount -o remount,bind,ro {cache}"]
    for name, extra in (("converted", ["--finetune", weights]),):  # (from scratch: only the compile cache is used)
        done = run_with_mounts(read_only, [SCRIPT, *small_argv(data, str(tmp_path / name), epochs=1, extra=[
            "--weights_cache_dir", str(cache), "--compile_cache_dir", str(cache / "compile"), *extra])], str(tmp_path))
        assert done.returncode == 0, done.stderr[-3000:]
        assert "compile cache is off" in done.stdout + done.stderr
        if extra:
            assert "the lock is off" in done.stdout + done.stderr
        assert os.path.exists(tmp_path / name / "t" / "checkpoint-best.ckpt")
