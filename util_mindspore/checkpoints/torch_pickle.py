"""Read PyTorch `.pth` checkpoints without torch and without running pickled code.

A torch zip checkpoint is a pickle (`<root>/data.pkl`) that refers to raw tensor storages
(`<root>/data/<key>`). We unpickle with an allow-list (tensors, ordered dicts, argparse.Namespace,
plain containers) and rebuild tensors lazily: nothing is read from a storage until `to_numpy`, so the
parts we drop (MAE decoder, DINO heads, optimizer state) never cost memory.
"""
import argparse
import collections
import errno
import os
import pickle
import struct
import zipfile
from typing import IO, Optional, Sequence, Tuple, Type, Union

import numpy as np

try:  # zlib-ng's CRC-32 uses carry-less multiply: several times faster than zlib 1.2's
    from zlib_ng.zlib_ng import crc32
except ImportError:  # a platform without its wheel: the same sums, slower
    from zlib import crc32

# torch storage class name -> numpy dtype (bfloat16 is read as its uint16 bits and widened in to_numpy)
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The checkpoint asks for a Python object outside the allow-list (it could run code)."""


class NotZipCheckpoint(ValueError):
    """Not a torch zip archive: a legacy (torch < 1.6) file, or a truncated / corrupt one."""


class DamagedCheckpoint(ValueError):
    """The archive describes tensors its bytes cannot hold (a cut or forged file): refused before any allocation."""


class _Storage:
    def __init__(self, archive: zipfile.ZipFile, name: str, dtype: Union[Type[np.generic], str]) -> None:
        self.archive, self.name, self.dtype = archive, name, dtype

    def data_offset(self) -> Optional[int]:
        """Where the member's bytes start in the checkpoint file, or None when they are not stored as they are
        (compressed: torch never compresses storages) or the archive is closed."""
        info = self.archive.getinfo(self.name)
        if info.compress_type != zipfile.ZIP_STORED or self.archive.fp is None:
            return None
        local = os.pread(self.archive.fp.fileno(), 30, info.header_offset)  # name, extra lengths at bytes 26-29
        if local[:4] != b"PK\x03\x04":
            raise DamagedCheckpoint(f"bad local header for {self.name}")
        return info.header_offset + 30 + sum(struct.unpack("<HH", local[26:30]))

    def read(self, buffer: Optional[np.ndarray] = None) -> np.ndarray:
        """The storage as a flat array, its CRC-32 checked. With `buffer` (a writable uint8 array) the bytes are
        read into it and the result is a view of it: a converter that recycles a few buffers touches no new
        memory per tensor (new memory is slow to fault in on some VMs). Bytes the zip reader cannot parse, or a
        wrong CRC-32, are DamagedCheckpoint."""
        try:
            return self._read(buffer)
        except (zipfile.BadZipFile, EOFError, UnicodeDecodeError, NotImplementedError, struct.error,
                OverflowError) as exc:
            raise DamagedCheckpoint(f"tensor storage {self.name}: {_first_line(exc)}") from exc

    def _read(self, buffer: Optional[np.ndarray]) -> np.ndarray:
        info = self.archive.getinfo(self.name)
        start = self.data_offset() if buffer is not None and info.file_size <= buffer.size else None
        if start is None:
            raw = self.archive.read(self.name)
        else:
            raw, done = buffer[:info.file_size], 0
            view, fd = memoryview(raw), self.archive.fp.fileno()
            while done < info.file_size:  # pread, not the archive's shared file position
                got = os.preadv(fd, [view[done:]], start + done)
                if not got:
                    break
                done += got
            if done != info.file_size or crc32(raw) != info.CRC:
                raise zipfile.BadZipFile(f"Bad CRC-32 or truncated data for {self.name}")
        if self.dtype == "bfloat16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            return bits.view(np.float32)
        return np.frombuffer(raw, dtype=np.dtype(self.dtype).newbyteorder("<"))

    @property
    def nbytes(self) -> int:
        return self.archive.getinfo(self.name).file_size

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize

    def check(self, file_size: int) -> None:
        """The member exists, is stored as torch stores it (never compressed), and lies inside the file: its
        declared size is then bounded by the file's, so nothing is allocated from a forged size."""
        try:
            info = self.archive.getinfo(self.name)
        except KeyError:
            raise DamagedCheckpoint(f"tensor storage {self.name} is missing from the archive") from None
        if info.compress_type != zipfile.ZIP_STORED:
            raise DamagedCheckpoint(f"tensor storage {self.name} is compressed, which torch.save never does")
        if info.header_offset + info.file_size > file_size:
            raise DamagedCheckpoint(f"tensor storage {self.name} claims {info.file_size} bytes, past the file's end")


class LazyTensor:
    """A tensor as the pickle describes it; `to_numpy()` reads its bytes. Its view is checked against its storage
    when it is built: a tensor that would read past its storage (a cut or forged file) is refused, never read."""

    def __init__(self, storage: _Storage, offset: int, shape: Sequence[int], stride: Sequence[int]) -> None:
        self.storage, self.offset = storage, int(offset)
        self.shape, self.stride = tuple(int(s) for s in shape), tuple(int(s) for s in stride)
        if len(self.shape) != len(self.stride) or self.offset < 0 or any(v < 0 for v in self.shape + self.stride):
            raise DamagedCheckpoint(f"tensor of storage {storage.name}: shape {self.shape}, stride {self.stride}, "
                                    f"offset {self.offset} do not describe a tensor")
        values = storage.nbytes // storage.itemsize
        if 0 not in self.shape and self.offset + 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride)) > \
                values:
            raise DamagedCheckpoint(f"a tensor of shape {self.shape} reads past the {values} values of its storage "
                                    f"{storage.name}")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def file_range(self) -> Optional[Tuple[int, int]]:
        """(offset, nbytes) of this tensor in the checkpoint file when its bytes there already are its C-order
        little-endian float32 contents, so they can be copied as they lie; else None."""
        if self.storage.dtype is not np.float32:
            return None
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride)):
            if size != 1 and stride != expected:
                return None
            expected *= size
        start = self.storage.data_offset()
        if start is None or (self.offset + expected) * 4 > self.storage.nbytes:
            return None
        return start + self.offset * 4, expected * 4

    def to_numpy(self, buffer: Optional[np.ndarray] = None) -> np.ndarray:
        """The tensor as a C-contiguous native-order array; with `buffer`, possibly a view of it (see _Storage)."""
        flat = self.storage.read(buffer)
        if not self.shape:
            return np.array(flat[self.offset])
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.shape,
                                               strides=tuple(s * item for s in self.stride), writeable=False)
        return np.ascontiguousarray(view).astype(view.dtype.newbyteorder("="), copy=False)


def _rebuild_tensor(storage: _Storage, storage_offset: int, size: Sequence[int], stride: Sequence[int],
                    *unused: object) -> LazyTensor:
    return LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: LazyTensor, requires_grad: bool = False, backward_hooks: object = None,
                       *unused: object) -> LazyTensor:
    return data


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, fileobj: IO[bytes], archive: zipfile.ZipFile, root: str, source: str) -> None:
        super().__init__(fileobj)
        self.archive, self.root, self.source = archive, root, source
        self.file_size = os.path.getsize(source)

    def find_class(self, module: str, name: str) -> object:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "argparse" and name == "Namespace":
            return argparse.Namespace
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise UnsafePickleError(
            f"{self.source}: refusing to unpickle '{module}.{name}': only tensors, dicts, argparse.Namespace "
            "and plain containers are read (a checkpoint that needs more could run code)")

    def persistent_load(self, pid: object) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and pid[1] in _STORAGE_DTYPES):
            raise UnsafePickleError(f"{self.source}: unexpected persistent id {pid!r}")
        storage = _Storage(self.archive, f"{self.root}/data/{pid[2]}", _STORAGE_DTYPES[pid[1]])
        storage.check(self.file_size)
        return storage


# What the zip and pickle readers raise on bytes that are not what they should be (flipped, cut, forged): a damaged
# file, never our bug. OSError only for EINVAL (a seek to a forged offset); other OSErrors are the disk's.
_DAMAGED_BYTES = (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, UnicodeDecodeError, struct.error,
                  NotImplementedError, OverflowError, ValueError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _damaged(path: str, exc: BaseException) -> "DamagedCheckpoint":
    return DamagedCheckpoint(f"{path}: {_first_line(exc)}")


def load(path: str) -> object:
    """Unpickle a torch zip checkpoint into plain Python objects with LazyTensor leaves.

    The zip archive stays open as long as the returned tensors are referenced. A file that is not a zip archive is
    NotZipCheckpoint (it may be a legacy torch file); bytes the zip or pickle reader cannot parse are
    DamagedCheckpoint, their cause chained; anything else raised here is a bug and propagates as it is.
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise NotZipCheckpoint(f"{path}: not a PyTorch zip checkpoint ({exc}); legacy (torch < 1.6) files and "
                               "truncated downloads are not readable") from exc
    except (NotImplementedError, UnicodeDecodeError, struct.error, OverflowError, ValueError) as exc:
        raise _damaged(path, exc) from exc
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        raise _damaged(path, exc) from exc
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise DamagedCheckpoint(f"{path}: no data.pkl in the archive: not a PyTorch checkpoint")
    root = pickles[0].split("/")[0]
    byteorder = f"{root}/byteorder"
    try:
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise DamagedCheckpoint(f"{path}: big-endian checkpoints are not supported")
        with archive.open(pickles[0]) as fh:
            return _SafeUnpickler(fh, archive, root, path).load()
    except (UnsafePickleError, DamagedCheckpoint):
        raise
    except _DAMAGED_BYTES as exc:
        raise _damaged(path, exc) from exc
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        raise _damaged(path, exc) from exc
