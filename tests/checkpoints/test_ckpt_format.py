"""Our streamed .ckpt writer and reader against MindSpore's own."""
import json
import os

import mindspore as ms
import numpy as np
import pytest

from tests.helpers import ROOT
from util_mindspore.checkpoints import ckpt_format
from util_mindspore.checkpoints.ckpt_format import save_arrays_ckpt
from util_mindspore.checkpoints.train_checkpoint import read_checkpoint
from util_mindspore.errors import WeightError


def test_streamed_ckpt_writer_and_reader_match_mindspore(tmp_path):
    """Our .ckpt bytes equal ms.save_checkpoint's, and both readers agree, for every kind of entry we store."""
    rng = np.random.default_rng(0)
    arrays = {"blocks.0.attn.qkv.weight": rng.standard_normal((6, 4)).astype(np.float32),
              "optimizer.step": np.array(3.0, np.float32), "ids": np.arange(5, dtype=np.int64),
              "half": rng.standard_normal(7).astype(np.float16), "strided": np.arange(12, dtype=np.int32)[::2]}
    extra = {"epoch": 4, "best_score": 0.5, "meta": json.dumps({"classes": ["é", "b"]}), "empty": ""}
    ours, theirs = str(tmp_path / "ours.ckpt"), str(tmp_path / "theirs.ckpt")
    save_arrays_ckpt(arrays, ours, append_dict=extra)
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v.copy(order="C"))} for k, v in arrays.items()], theirs,
                       append_dict=dict(extra))
    ours_bytes, theirs_bytes = open(ours, "rb").read(), open(theirs, "rb").read()
    assert ours_bytes[:len(theirs_bytes)] == theirs_bytes  # then one more entry: the end marker
    assert ckpt_format.END_MARKER in ms.load_checkpoint(ours)  # MindSpore still reads the file
    assert not os.path.exists(str(tmp_path / "ours.partial.ckpt"))
    fast = ckpt_format._read_plain_ckpt(theirs)[0]
    for name, value in ms.load_checkpoint(ours).items():
        if name == ckpt_format.END_MARKER:
            continue
        if isinstance(value, str):
            assert fast[name] == value, name
        else:  # MindSpore reads a scalar back as shape (1,); we keep its shape ()
            np.testing.assert_array_equal(fast[name].reshape(value.shape), value.asnumpy(), err_msg=name)
            assert fast[name].dtype == value.asnumpy().dtype, name
    checkpoint = read_checkpoint(ours)
    assert checkpoint.epoch == 4 and checkpoint.best_score == 0.5 and checkpoint.meta["classes"] == ["é", "b"]
    assert set(checkpoint.state) == {"optimizer.step"} and checkpoint.state["optimizer.step"].shape == ()
    np.testing.assert_array_equal(checkpoint.weights["strided"], arrays["strided"])


def small_training_checkpoint(path):
    rng = np.random.default_rng(1)
    arrays = {f"blocks.{i}.w": rng.standard_normal((32, 32)).astype(np.float32) for i in range(4)}
    arrays.update({f"optimizer.exp_avg.blocks.{i}.w": np.zeros((32, 32), np.float32) for i in range(4)})
    meta = json.dumps({"format": "retfound-mindspore-train-1", "class_names": ["a", "b"], "model": "m"})
    save_arrays_ckpt(arrays, path, append_dict={"epoch": 3, "best_score": 0.5, "meta": meta})
    return arrays


def message_ends(path):
    """Byte offsets where each message of a .ckpt ends (the record boundaries a cut copy may stop at)."""
    data, ends, pos = open(path, "rb").read(), [], 0
    while pos < len(data):
        start, end = ckpt_format._read_len_field(data, pos, 1)
        ends.append(end)
        pos = end
    return ends


REFUSALS = ("incomplete", "damaged", "empty file")


def test_a_ckpt_cut_anywhere_is_refused_in_one_line(tmp_path):
    """What a kill during a save or an interrupted copy leaves: cut at every record boundary and mid-record."""
    path = str(tmp_path / "whole.ckpt")
    small_training_checkpoint(path)
    data = open(path, "rb").read()
    ends = message_ends(path)
    # (cut just before the marker, a training checkpoint holds everything: that is how earlier versions wrote it)
    cuts = ends[:-2] + [ends[0] // 2, len(data) - 3, len(data) - 40, 0]
    for cut in cuts:
        cut_path = str(tmp_path / "cut.ckpt")
        with open(cut_path, "wb") as fh:
            fh.write(data[:cut])
        with pytest.raises(WeightError) as err:
            read_checkpoint(cut_path)
        message = str(err.value)
        assert "\n" not in message and message.startswith(cut_path), message
        assert message.split(": ", 1)[1].startswith(REFUSALS), message


SWEEP = """
import json, os, sys
import numpy as np
from util_mindspore.errors import WeightError
from util_mindspore.checkpoints.train_checkpoint import read_checkpoint
path, flipped = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
whole = read_checkpoint(path)
counts = {"refused": 0, "accepted": 0, "changed": []}
for i in range(len(data)):
    for mask in (0x01, 0x80):
        damaged = bytearray(data)
        damaged[i] ^= mask
        with open(flipped, "wb") as fh:
            fh.write(damaged)
        try:
            got = read_checkpoint(flipped)
        except WeightError as exc:
            assert str(exc).startswith(flipped) and "\\n" not in str(exc), str(exc)
            counts["refused"] += 1
            continue
        counts["accepted"] += 1
        same = got.meta == whole.meta and got.epoch == whole.epoch and set(got.weights) == set(whole.weights) and \
            all(np.array_equal(got.weights[k], whole.weights[k]) for k in whole.weights)
        if not same:
            counts["changed"].append(i)
print(json.dumps(counts))
"""


def test_every_single_byte_flip_of_a_checkpoint_is_refused_never_a_crash_or_a_changed_load(tmp_path):
    """Every byte of a small training checkpoint, two bit flips each, in a child process (a crash there fails the
    test instead of ending it): each damaged copy is refused in one line or, never here, read unchanged."""
    import subprocess
    import sys
    path = str(tmp_path / "small.ckpt")
    rng = np.random.default_rng(2)
    meta = json.dumps({"format": "retfound-mindspore-train-1", "class_names": ["a", "b", "c"]})
    save_arrays_ckpt({"blocks.0.w": rng.standard_normal((4, 6)).astype(np.float32),
                      "head.bias": np.zeros(3, np.float32), "optimizer.step": np.array(2.0, np.float32)}, path,
                     append_dict={"epoch": 1, "best_score": 0.5, "meta": meta})
    done = subprocess.run([sys.executable, "-c", SWEEP, path, str(tmp_path / "flipped.ckpt")], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    size = os.path.getsize(path)
    assert counts["refused"] == 2 * size and counts["accepted"] == 0 and counts["changed"] == [], counts


def test_flips_in_a_real_training_checkpoint_are_damage_not_a_misfit(copy_task):
    """Bytes changed inside the tensors, the records' heads and the metadata of a real checkpoint-last.ckpt: each is
    "damaged", never "does not fit this model"."""
    last = os.path.join(copy_task, "checkpoint-last.ckpt")
    data = open(last, "rb").read()
    ends = message_ends(last)
    offsets = [ends[0] + 3, ends[1] - 5, ends[len(ends) // 2] + 1, len(data) // 3, ends[-3] + 7, ends[-2] - 20]
    for offset in offsets:
        damaged = bytearray(data)
        damaged[offset] ^= 0x10
        flipped = last.replace(".ckpt", f"-{offset}.ckpt")
        with open(flipped, "wb") as fh:
            fh.write(damaged)
        with pytest.raises(WeightError, match=r"damaged checkpoint|incomplete or damaged"):
            read_checkpoint(flipped)


def test_a_ckpt_changed_after_writing_fails_its_checksum(tmp_path):
    path = str(tmp_path / "flipped.ckpt")
    small_training_checkpoint(path)
    with open(path, "r+b") as fh:
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(WeightError, match=r"flipped\.ckpt: damaged checkpoint: checksum mismatch"):
        read_checkpoint(path)


def test_a_training_checkpoint_of_an_earlier_version_still_loads(tmp_path):
    """Before the end marker, our training checkpoints ended with their metadata: that is enough to know them whole;
    a weights-only .ckpt without the marker can be sealed after a check."""
    path = str(tmp_path / "old.ckpt")
    arrays = small_training_checkpoint(path)
    ends = message_ends(path)
    with open(path, "r+b") as fh:
        fh.truncate(ends[-2])  # without the marker: as an earlier version wrote it
    checkpoint = read_checkpoint(path)
    assert checkpoint.epoch == 3 and set(checkpoint.weights) == {k for k in arrays if k.startswith("blocks")}
    foreign = str(tmp_path / "foreign.ckpt")
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(np.ones(3, np.float32))}], foreign)
    with pytest.raises(WeightError, match="python -m util_mindspore.checkpoints.ckpt_format --seal"):
        read_checkpoint(foreign)
    assert ckpt_format.main(["--seal", foreign]) == 0
    np.testing.assert_array_equal(read_checkpoint(foreign).weights["w"], np.ones(3, np.float32))


KILLED_SAVER = (
    "import numpy as np, sys\n"
    "from util_mindspore.checkpoints.ckpt_format import save_arrays_ckpt\n"
    "arrays = {f'w{i}': np.full((256, 1024), i, np.float32) for i in range(24)}\n"
    "save_arrays_ckpt(arrays, sys.argv[1])\n"
    "print('first save done', flush=True)\n"
    "while True:\n"
    "    save_arrays_ckpt(arrays, sys.argv[1])\n")


def test_kill_9_during_saves_never_leaves_a_file_that_is_read(tmp_path):
    """A process saving in a loop is killed at six moments after its first complete save: each time the checkpoint
    is whole, and what the kill left of the save under way (*.partial.ckpt) is whole or refused, never read torn."""
    import signal
    import subprocess
    import sys
    target = str(tmp_path / "saving.ckpt")
    partial = ckpt_format.partial_name(target)
    rng = np.random.default_rng(0)
    raced = 0
    for _ in range(6):
        process = subprocess.Popen([sys.executable, "-c", KILLED_SAVER, target], stdout=subprocess.PIPE, text=True,
                                   cwd=ROOT)
        assert process.stdout.readline().strip() == "first save done"  # a save is complete: now race the next ones
        for _ in range(int(rng.integers(1, 20))):  # a few more saves run (each partial file appears and goes)
            while not os.path.exists(partial):
                pass
        process.send_signal(signal.SIGKILL)
        process.wait()
        entries = ckpt_format.read_ckpt_entries(target)  # always there since the first save: always whole
        assert len(entries) == 24 and float(entries["w23"][0, 0]) == 23.0
        if os.path.exists(partial):
            raced += 1
            try:
                assert len(ckpt_format.read_ckpt_entries(partial)) == 24
            except WeightError as exc:
                assert str(exc).split(": ", 1)[1].startswith(REFUSALS), str(exc)
            os.remove(partial)
    assert raced >= 3, f"only {raced} of 6 kills landed during a save"
