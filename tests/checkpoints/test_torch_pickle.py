"""The torch-free .pth reader refuses what its bytes cannot hold before allocating it: a tensor that reads past its
storage, a storage claiming more bytes than the file has, a compressed storage torch never writes; safetensors
whose header lies."""
import os
import struct
import zipfile

import numpy as np
import pytest

from util_mindspore.checkpoints.conversion import download_and_convert_weights
from util_mindspore.errors import WeightError

torch = pytest.importorskip("torch", reason="writing .pth files needs torch")


def rewrite_member(path, member, data=None, compress=False):
    """Copy the zip at `path` with one member's bytes replaced (or compressed), as a forged file would be."""
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info.filename)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w") as target:
        for info, content in entries:
            if info.filename.endswith(member):
                content = content if data is None else data
                target.writestr(info.filename, content,
                                compress_type=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
            else:
                target.writestr(info, content)


def storage_member(path, key_fragment="data/0"):
    with zipfile.ZipFile(path) as archive:
        return next(n for n in archive.namelist() if n.endswith(key_fragment))


def test_a_tensor_whose_storage_was_cut_is_refused_and_nothing_cached(tmp_path):
    """float16 pos_embed whose storage holds 4 of its 960 values: refused, where a strided view would read past."""
    path = str(tmp_path / "cut.pth")
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 8), "pos_embed": torch.randn(1, 120, 8).half()}}, path)
    with zipfile.ZipFile(path) as archive:
        member = next(n for n in archive.namelist() if "/data/" in n and archive.getinfo(n).file_size == 1920)
    rewrite_member(path, member, data=b"\0" * 8)
    cache = tmp_path / "cache"
    with pytest.raises(WeightError, match=r"cut\.pth: damaged checkpoint: a tensor of shape \(1, 120, 8\) reads past "
                                          r"the 4 values of its storage"):
        download_and_convert_weights(path, cache_dir=str(cache))
    assert not [f for f in os.listdir(cache) if f.endswith((".ckpt", ".json"))]


def test_a_storage_inflating_far_past_the_file_is_refused_before_allocation(tmp_path):
    """A small .pth whose storage is a deflated run of zeros (2 GB when inflated): torch never compresses
    storages, so it is refused at once, with no memory spent."""
    import resource
    path = str(tmp_path / "bomb.pth")
    torch.save({"model": {"w": torch.zeros(16)}}, path)
    member = storage_member(path)
    rewrite_member(path, member, data=b"\0" * (64 << 20), compress=True)
    assert os.path.getsize(path) < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WeightError, match=r"damaged checkpoint: tensor storage .* is compressed, which torch\.save "
                                          r"never does"):
        download_and_convert_weights(path, cache_dir=str(tmp_path / "cache"))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 << 10  # KiB: nothing near 64 MB read


def test_a_storage_claiming_more_bytes_than_the_file_is_refused(tmp_path):
    path = str(tmp_path / "claims.pth")
    torch.save({"model": {"w": torch.randn(64)}}, path)
    member = storage_member(path)
    data = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    # the member's sizes in the central directory (at +20 and +24 of its record, whose name starts at +46), forged
    position = data.find(member.encode(), data.find(b"PK\x01\x02")) - 46
    assert data[position:position + 4] == b"PK\x01\x02" and info.file_size == 256
    struct.pack_into("<II", data, position + 20, 1 << 31, 1 << 31)
    open(path, "wb").write(bytes(data))
    with pytest.raises(WeightError, match=r"claims\.pth: damaged checkpoint: tensor storage .* claims 2147483648 "
                                          r"bytes, past the file's end"):
        download_and_convert_weights(path, cache_dir=str(tmp_path / "cache"))


def test_safetensors_whose_header_points_past_the_data_are_refused(tmp_path):
    from safetensors.torch import save_file
    path = str(tmp_path / "cut.safetensors")
    save_file({"w": torch.randn(1000)}, path)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) - 100)
    with pytest.raises(WeightError, match=r"cut\.safetensors: unreadable"):
        download_and_convert_weights(path, cache_dir=str(tmp_path / "cache"))


def test_views_offsets_and_zero_sized_tensors_still_read(tmp_path):
    """The bounds check takes a view's real extent: slices, transposes, offsets and empty tensors are fine."""
    from util_mindspore.checkpoints import torch_pickle
    base = torch.randn(6, 5)
    obj = {"slice": base[2:4, 1::2], "t": base.t(), "empty": torch.zeros(0, 3), "tail": base.reshape(-1)[27:]}
    path = str(tmp_path / "views.pth")
    torch.save(obj, path)
    loaded = torch_pickle.load(path)
    for key, tensor in obj.items():
        np.testing.assert_array_equal(loaded[key].to_numpy(), tensor.numpy())
