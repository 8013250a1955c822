"""Converting checkpoint sources to cached .ckpt files: safe reading, the bytes written, the cache."""
import errno
import json
import logging
import multiprocessing
import os
import time
import zipfile

import mindspore as ms
import numpy as np
import pytest

from tests.helpers import TOKEN, publish
from util_mindspore.checkpoints import ckpt_format, torch_pickle
from util_mindspore.checkpoints.conversion import download_and_convert_weights
from util_mindspore.checkpoints.train_checkpoint import read_checkpoint
from util_mindspore.errors import WeightError

torch = pytest.importorskip("torch", reason="writing checkpoints in the published layouts needs torch")
pytest.importorskip("timm", reason="the PyTorch reference needs timm==0.9.2")
from util_mindspore.reference import checkpoint_layouts as layouts  # noqa: E402


def test_torch_free_reader_gives_the_arrays_torch_load_gives(tmp_path):
    path = str(tmp_path / "mae.pth")
    layouts.mae_pretrained(path)
    with torch.serialization.safe_globals([__import__("argparse").Namespace]):
        expected = torch.load(path, map_location="cpu", weights_only=True)
    ours = torch_pickle.load(path)
    assert ours["epoch"] == 799 and ours["args"].mask_ratio == 0.75 and ours["scaler"]["_growth_tracker"] == 17
    assert set(ours["model"]) == set(expected["model"])
    for key, tensor in expected["model"].items():
        array = ours["model"][key].to_numpy()
        assert array.dtype == np.float32 and array.shape == tuple(tensor.shape)
        np.testing.assert_array_equal(array, tensor.numpy())


def test_torch_free_reader_handles_views_half_and_bfloat16(tmp_path):
    base = torch.randn(4, 6)
    obj = {"view": base[1:3, ::2], "t": base.t(), "half": torch.randn(3).half(), "bf16": torch.randn(5).bfloat16(),
           "long": torch.arange(4), "param": torch.nn.Parameter(torch.randn(2, 2))}
    path = str(tmp_path / "misc.pth")
    torch.save(obj, path)
    ours = torch_pickle.load(path)
    for key, tensor in obj.items():
        np.testing.assert_array_equal(ours[key].to_numpy(), tensor.detach().float().numpy()
                                      if key == "bf16" else tensor.detach().numpy())


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_a_pickle_payload_never_runs(tmp_path, layout):
    """zip files go through our reader, legacy (pre-1.6) ones through torch.load(weights_only=True)."""
    marker = tmp_path / "payload_ran"
    path = str(tmp_path / "evil.pth")
    torch.save({"model": {"cls_token": torch.zeros(1)}, "args": _Payload(marker)}, path,
               _use_new_zipfile_serialization=(layout == "zip"))
    with pytest.raises(WeightError, match="refusing to") as err:
        download_and_convert_weights(path, cache_dir=str(tmp_path / "cache"))
    assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    assert not list((tmp_path / "cache").glob("*.ckpt"))


def test_legacy_format_is_read_through_torch(tmp_path):
    path = str(tmp_path / "legacy.pth")
    sd = layouts.mae_pretrained(str(tmp_path / "zip.pth"))
    torch.save({"model": sd}, path, _use_new_zipfile_serialization=False)
    arrays = read_checkpoint(download_and_convert_weights(path, cache_dir=str(tmp_path / "cache"))).weights
    np.testing.assert_array_equal(arrays["blocks.3.mlp.fc1.weight"], sd["blocks.3.mlp.fc1.weight"].numpy())
    assert any(k.startswith("decoder") for k in arrays)  # kept: continued MAE pre-training needs the decoder
    meta = json.load(open(str(tmp_path / "cache" / "legacy.json")))
    assert meta["source_fingerprint"] == "sha256:" + __import__("hashlib").sha256(open(path, "rb").read()).hexdigest()


def test_truncated_checkpoint_is_refused_and_nothing_cached(tmp_path):
    path = str(tmp_path / "mae.pth")
    layouts.mae_pretrained(path)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    with pytest.raises(WeightError, match="unreadable"):
        download_and_convert_weights(path, cache_dir=str(tmp_path / "cache"))
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]


@pytest.mark.parametrize("change", [False, True])
def test_a_local_source_whose_mtime_changed_is_compared_by_its_tensors(tmp_path, change):
    """Saved again (new mtime): the same tensors are a cache hit, one changed value converts again."""
    path = str(tmp_path / "local.pth")
    layouts.mae_pretrained(path)
    obj = torch.load(path, weights_only=False)
    torch.save(obj, path)  # saved by the same torch as below: one object saved twice gives the same pickle
    ckpt = download_and_convert_weights(path)
    stamp, size = os.stat(ckpt).st_mtime_ns, os.path.getsize(path)
    if change:
        obj["model"]["blocks.1.norm1.bias"][3] += 1
    time.sleep(0.01)
    torch.save(obj, path)
    assert os.path.getsize(path) == size
    arrays = read_checkpoint(download_and_convert_weights(path)).weights
    assert (os.stat(ckpt).st_mtime_ns != stamp) == change
    np.testing.assert_array_equal(arrays["blocks.1.norm1.bias"], obj["model"]["blocks.1.norm1.bias"].numpy())


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_converted_ckpt_is_the_one_ms_save_checkpoint_writes(tmp_path, monkeypatch, kernel_copy):
    """float32 tensors stored as they lie are copied file to file (copy_file_range, or pread / write where the
    filesystem refuses it); views, offsets into a shared storage, float16 and bfloat16 are read and cast."""
    if not kernel_copy:
        def refuse(*args):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    shared = torch.randn(40)
    sd = {"cls_token": torch.randn(1, 1, 8), "pos_embed": torch.randn(1, 5, 8).half(),
          "patch_embed.proj.weight": torch.randn(8, 3, 2, 2), "patch_embed.proj.bias": shared[8:16],
          "blocks.0.attn.qkv.weight": torch.randn(8, 24).t(), "blocks.0.attn.qkv.bias": shared[16:40],
          "norm.weight": torch.randn(8).bfloat16(), "norm.bias": torch.randn(8), "decoder_embed.bias": shared[:8]}
    path = str(tmp_path / "mixed.pth")
    torch.save({"model": sd}, path)
    copied, copy_extent = [], ckpt_format._copy_extent
    monkeypatch.setattr(ckpt_format, "_copy_extent", lambda *a: copied.append(a[2]) or copy_extent(*a))
    ckpt = download_and_convert_weights(path, cache_dir=str(tmp_path / "cache"))
    assert sorted(copied) == [4 * 8, 4 * 8, 4 * 8, 4 * 8, 4 * 24, 4 * 12 * 8]  # the contiguous float32 tensors
    expected = str(tmp_path / "expected.ckpt")
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v.float().contiguous().numpy())} for k, v in sd.items()],
                       expected)
    theirs = open(expected, "rb").read()
    ours = open(ckpt, "rb").read()
    # then the source's metadata and our end marker (tests/checkpoints/test_ckpt_format.py)
    assert ours[:len(theirs)] == theirs
    assert read_checkpoint(ckpt).meta["layout"] == "finetuned" or read_checkpoint(ckpt).meta["layout"] == "mae"
    assert ckpt_format.END_MARKER.encode() in ours[len(theirs):]


def test_corrupt_tensor_bytes_are_refused_and_nothing_cached(tmp_path):
    """Storages are read into recycled buffers past zipfile: their CRC-32 is still checked."""
    path = str(tmp_path / "mae.pth")
    layouts.mae_pretrained(path)
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(fh.read(4), "<u2")
        fh.seek(info.header_offset + 30 + int(name_len) + int(extra_len) + info.file_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(WeightError, match=r"mae\.pth: unreadable .*CRC"):
        download_and_convert_weights(path, cache_dir=str(tmp_path / "cache"))
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]


def test_changed_source_or_force_converts_again(hub, tmp_path):
    path = publish(hub, tmp_path, "RETFound_mae_natureCFP", layouts.mae_pretrained)
    download_and_convert_weights("RETFound_mae_natureCFP", token=TOKEN)
    layouts.mae_pretrained(path, seed=99)  # the hub now serves another file (new ETag)
    ckpt = download_and_convert_weights("RETFound_mae_natureCFP", token=TOKEN)
    assert hub.gets() == 2
    first_key = read_checkpoint(ckpt).weights["cls_token"]
    expected = torch.load(path, weights_only=False)["model"]["cls_token"].numpy()
    np.testing.assert_array_equal(first_key, expected)
    before = os.stat(ckpt).st_mtime_ns
    time.sleep(0.01)
    download_and_convert_weights("RETFound_mae_natureCFP", token=TOKEN, force=True)
    assert os.stat(ckpt).st_mtime_ns != before


def test_local_file_cache_hit_and_change(tmp_path):
    path = str(tmp_path / "local.pth")
    layouts.mae_pretrained(path)
    ckpt = download_and_convert_weights(path)
    stamp = os.stat(ckpt).st_mtime_ns
    assert download_and_convert_weights(path) == ckpt and os.stat(ckpt).st_mtime_ns == stamp
    layouts.mae_pretrained(path, seed=5)
    download_and_convert_weights(path)
    assert os.stat(ckpt).st_mtime_ns != stamp


def test_a_touched_but_unchanged_local_file_is_a_cache_hit(tmp_path):
    path = str(tmp_path / "local.pth")
    layouts.mae_pretrained(path)
    ckpt = download_and_convert_weights(path)
    stamp = os.stat(ckpt).st_mtime_ns
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10 ** 9))
    assert download_and_convert_weights(path) == ckpt and os.stat(ckpt).st_mtime_ns == stamp
    meta = json.load(open(ckpt[:-len(".ckpt")] + ".json"))
    assert meta["source_identity"]["mtime_ns"] == os.stat(path).st_mtime_ns


def _convert_in_child(endpoint, cache, hf_cache, queue):
    os.environ.update(HF_ENDPOINT=endpoint, RETFOUND_MS_CACHE=cache, HF_HUB_CACHE=hf_cache)
    import huggingface_hub.constants as hf_constants
    hf_constants.ENDPOINT, hf_constants.HF_HUB_CACHE = endpoint, hf_cache
    converted = []
    handler = logging.Handler()
    handler.emit = lambda record: converted.append(record.getMessage().startswith("converted"))
    logging.getLogger("retfound.weights").addHandler(handler)
    logging.getLogger("retfound.weights").setLevel(logging.INFO)
    path = download_and_convert_weights("RETFound_mae_meh", token=TOKEN)
    queue.put((path, sum(converted)))


def test_ranks_starting_together_download_and_convert_once(hub, tmp_path):
    publish(hub, tmp_path, "RETFound_mae_meh", layouts.mae_pretrained)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    args = (hub.endpoint, str(tmp_path / "shared_cache"), str(tmp_path / "shared_hf"), queue)
    workers = [ctx.Process(target=_convert_in_child, args=args) for _ in range(2)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert results[0][0] == results[1][0]
    assert sorted(n for _, n in results) == [0, 1]
    assert hub.gets() == 1


def test_random_bytes_and_failed_names_say_what_is_wrong_and_leave_no_lock(tmp_path, hub):
    junk = str(tmp_path / "junk.pth")
    with open(junk, "wb") as fh:
        fh.write(np.random.default_rng(0).bytes(5000))
    cache = tmp_path / "cache"
    with pytest.raises(WeightError, match=r"junk\.pth: not a PyTorch checkpoint"):
        download_and_convert_weights(junk, cache_dir=str(cache))
    with pytest.raises(WeightError, match="someone/missing"):  # unknown to the hub (which says 401, as HF)
        download_and_convert_weights("someone/missing", cache_dir=str(cache))
    assert [f for f in os.listdir(cache) if f.endswith(".lock")] == []
