"""Our streamed .ckpt writer and reader against MindSpore's own."""
import json
import os

import mindspore as ms
import numpy as np
import pytest

from util_mindspore import ckpt_format
from util_mindspore.ckpt_format import save_arrays_ckpt
from util_mindspore.errors import WeightError
from util_mindspore.train_checkpoint import read_checkpoint


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
    assert open(ours, "rb").read() == open(theirs, "rb").read()
    assert not os.path.exists(str(tmp_path / "ours.partial.ckpt"))
    fast = ckpt_format._read_plain_ckpt(theirs)
    for name, value in ms.load_checkpoint(ours).items():
        if isinstance(value, str):
            assert fast[name] == value, name
        else:  # MindSpore reads a scalar back as shape (1,); we keep its shape ()
            np.testing.assert_array_equal(fast[name].reshape(value.shape), value.asnumpy(), err_msg=name)
            assert fast[name].dtype == value.asnumpy().dtype, name
    checkpoint = read_checkpoint(ours)
    assert checkpoint.epoch == 4 and checkpoint.best_score == 0.5 and checkpoint.meta["classes"] == ["é", "b"]
    assert set(checkpoint.state) == {"optimizer.step"} and checkpoint.state["optimizer.step"].shape == ()
    np.testing.assert_array_equal(checkpoint.weights["strided"], arrays["strided"])


def test_a_truncated_ckpt_is_reported_in_one_line(tmp_path):
    path = str(tmp_path / "cut.ckpt")
    save_arrays_ckpt({"w": np.ones((64, 64), np.float32)}, path)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    with pytest.raises(WeightError, match=r"cut\.ckpt: unreadable MindSpore checkpoint") as err:
        read_checkpoint(path)
    assert "\n" not in str(err.value)
