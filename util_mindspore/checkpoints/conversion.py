"""Convert a checkpoint source to a cached MindSpore .ckpt once: read torch files safely, apply the layout
rules, and keep the cache (a .ckpt beside a .json that marks a complete conversion and says what it came from).
"""
import argparse
import contextlib
import hashlib
import json
import logging
import os
import pickle
import re
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from util_mindspore.checkpoints import hub, torch_pickle
from util_mindspore.checkpoints.ckpt_format import CKPT_WRITE_AHEAD, FileExtent, save_arrays_ckpt
from util_mindspore.checkpoints.source_layouts import checkpoint_filter_fn, source_args
from util_mindspore.errors import WeightError, first_line
from util_mindspore.files.atomic import atomic_write, writable_dir
from util_mindspore.files.caches import default_cache_dir

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("retfound.weights")

# 2: .ckpt files carry an end marker; 3: the MAE decoder and mask tokens are kept (continued pre-training, DINOv3's
# mask_token) and the source's training arguments are recorded. Entries of older versions are converted again.
CONVERTER_VERSION = 3
CONVERTED_FORMAT = "retfound-mindspore-converted-1"


def _to_numpy(value: Union[np.ndarray, torch_pickle.LazyTensor, "torch.Tensor"],
              buffer: Optional[np.ndarray] = None) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, torch_pickle.LazyTensor):
        return value.to_numpy(buffer)
    # a torch.Tensor (torch reader); bfloat16 has no numpy type
    tensor = value.detach().cpu()
    if str(tensor.dtype) == "torch.bfloat16":
        tensor = tensor.float()
    return tensor.numpy()


def _read_torch_file(path: str) -> object:
    """Unpickle a torch checkpoint without running code.

    Our zip reader comes first even when torch is installed: it reads tensors lazily, where torch.load holds
    them all. Files it cannot read (the legacy pre-1.6 format) go to torch.load(weights_only=True, Namespace
    allow-listed).
    """
    try:
        return torch_pickle.load(path)
    except torch_pickle.NotZipCheckpoint:
        with open(path, "rb") as fh:
            head = fh.read(2)
        if head == b"PK":  # a zip whose directory (at its end) is missing
            raise WeightError(f"{path}: unreadable (truncated or corrupt?) checkpoint: its zip archive is incomplete") \
                from None
        if head[:1] != b"\x80":  # the legacy format is a pickle (protocol 2+): anything else is not torch's
            raise WeightError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)") from None
        try:
            import torch  # only torch reads the legacy format
        except ImportError:
            raise WeightError(f"{path}: a legacy (torch < 1.6) checkpoint: reading it needs torch (pip install -e "
                              "\".[torch]\"), or re-save it with a current torch") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's refusal of an object outside its allow-list, or a bad pickle
        if "weights_only" in str(exc).lower() or "Unsupported global" in str(exc):
            raise _refused_legacy_pickle(path, exc) from exc
        raise _unreadable(path, exc) from exc
    except (EOFError, RuntimeError) as exc:  # a cut legacy file; torch's "invalid magic number" and the like
        raise _unreadable(path, exc) from exc


def _refused_legacy_pickle(path: str, exc: BaseException) -> WeightError:
    """torch.load(weights_only=True) refusing an object of a legacy checkpoint, in one line saying what it needs."""
    needed = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    what = needed.group(1) if needed else "beyond tensors and dicts"
    return WeightError(f"{path}: refusing to load it: the checkpoint needs the Python object {what}, and "
                       "unpickling it could run code; if you trust it, re-save its weights with "
                       "torch.save(model.state_dict(), ...)")


def read_checkpoint_file(path: str) -> object:
    """The object stored in a checkpoint file, tensors left lazy where the format allows. A damaged or unsafe file
    is one line (WeightError, its cause chained); any other exception is a bug and keeps its traceback."""
    if path.lower().endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        try:
            return load_file(path)
        except SafetensorError as exc:
            raise _unreadable(path, exc) from exc
    try:
        return _read_torch_file(path)
    except torch_pickle.UnsafePickleError as exc:
        raise WeightError(first_line(exc)) from exc
    except torch_pickle.DamagedCheckpoint as exc:
        raise WeightError(f"{path}: damaged checkpoint: {first_line(exc)}") from exc


def _sha256(path: str, chunk: int = 16 << 20) -> str:
    digest, buffer = hashlib.sha256(), bytearray(chunk)  # one buffer: no fresh memory per chunk
    view = memoryview(buffer)
    with open(path, "rb") as fh:
        while size := fh.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def _local_fingerprint(path: str) -> str:
    """What a local source holds, for the cache when its size or mtime changed. A zip checkpoint (torch >= 1.6)
    is known by its directory: member names, sizes and CRC-32s, which the conversion checks against the bytes
    it converts: milliseconds, where hashing the whole file takes about as long as converting it. A changed
    tensor goes unnoticed only if its CRC-32 stays the same (a 2**-32 chance). Other files are hashed."""
    try:
        with zipfile.ZipFile(path) as archive:
            listing = [[i.filename.partition("/")[2], i.file_size, i.CRC] for i in archive.infolist()]
    except zipfile.BadZipFile:
        return f"sha256:{_sha256(path)}"
    return f"zip-crc32:{hashlib.sha256(json.dumps(listing).encode()).hexdigest()}"


def _file_identity(path: str) -> Dict[str, int]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_meta(meta_path: str) -> Optional[Dict[str, object]]:
    try:
        with open(meta_path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _write_atomic_json(path: str, data: Mapping[str, object]) -> None:
    with atomic_write(path) as fh:
        json.dump(data, fh, indent=1, sort_keys=True)


def _cache_paths(cache_dir: str, source: hub.Source) -> Tuple[str, str, str]:
    base = os.path.join(cache_dir, source.name)
    return base + ".ckpt", base + ".json", base + ".lock"


def _is_cache_hit(source: hub.Source, ckpt_path: str, meta_path: str, token: Optional[str],
                  revision: Optional[str]) -> bool:
    meta = _read_meta(meta_path)
    if meta is None or meta.get("converter_version") != CONVERTER_VERSION or not os.path.exists(ckpt_path):
        return False
    if source.kind == "local":
        if meta.get("source_path") != source.path:
            return False
        if meta.get("source_identity") == _file_identity(source.path):
            return True
        if meta.get("source_fingerprint") != _local_fingerprint(source.path):
            return False
        # same tensors, new mtime (a copy, a touch): remember the new identity so the next call skips this
        with contextlib.suppress(OSError):  # a read-only cache: the next call checks again
            _write_atomic_json(meta_path, dict(meta, source_identity=_file_identity(source.path)))
        return True
    if meta.get("repo_id") != source.repo_id or meta.get("filename") != source.filename or \
            meta.get("revision") != revision:
        return False
    etag = hub.hub_file_etag(source, token, revision)
    if etag is None:  # offline or unreachable: the conversion we have is the best we can do
        logger.info("hub unreachable: using the cached conversion %s", ckpt_path)
        return True
    return etag == meta.get("etag")


def _unreadable(path: str, exc: BaseException) -> WeightError:
    return WeightError(f"{path}: unreadable (truncated or corrupt?) checkpoint: {first_line(exc)}")


def _check_storages(storages: Sequence[torch_pickle._Storage]) -> None:
    """Read each storage once into one buffer: _Storage.read checks its CRC-32."""
    buffer = np.empty(max((s.nbytes for s in storages), default=0), np.uint8)
    for storage in storages:
        storage.read(buffer)


def _convert(source: hub.Source, path: str, ckpt_path: str, meta_path: str, extra_meta: Mapping[str, object]) -> None:
    """Write the .ckpt: float32 tensors stored as they lie are copied file to file in the kernel, as a file copy
    is; the rest are read into CKPT_WRITE_AHEAD + 1 recycled buffers. Meanwhile a second thread reads the
    copied storages to check their CRC-32, so a corrupt file is refused before the .ckpt is renamed into place.
    A conversion should take about as long as copying the file (benchmarks/bench_convert.py)."""
    started = time.time()
    with open(path, "rb") as source_file, ThreadPoolExecutor(1) as checker:
        source_object = read_checkpoint_file(path)
        state_dict, layout = checkpoint_filter_fn(source_object)
        ckpt_meta = {"format": CONVERTED_FORMAT, "layout": layout, "source_args": source_args(source_object)}
        del source_object
        names, size = list(state_dict), os.fstat(source_file.fileno()).st_size
        try:
            ranges = {k: v.file_range() for k, v in state_dict.items() if isinstance(v, torch_pickle.LazyTensor)}
        except (torch_pickle.DamagedCheckpoint, OSError) as exc:
            raise _unreadable(path, exc) from exc
        ranges = {k: r for k, r in ranges.items() if r is not None and sum(r) <= size}
        copied = {state_dict[k].storage.name: state_dict[k].storage for k in ranges}
        crc_checked = checker.submit(_check_storages, list(copied.values()))

        def tensors() -> Iterator[Tuple[str, Union[FileExtent, np.ndarray]]]:
            sizes = [v.storage.nbytes for k, v in state_dict.items() if isinstance(v, torch_pickle.LazyTensor)
                     and k not in ranges]
            buffers = [np.empty(max(sizes, default=0), np.uint8) for _ in range(CKPT_WRITE_AHEAD + 1)]
            for i, key in enumerate(names):
                value = state_dict.pop(key)
                if key in ranges:
                    yield key, FileExtent(source_file, ranges[key][0], value.shape)
                    continue
                try:
                    array = _to_numpy(value, buffers[i % len(buffers)])
                except (torch_pickle.DamagedCheckpoint, OSError) as exc:  # a storage's CRC or size is wrong
                    raise _unreadable(path, exc) from exc
                yield key, array.astype(np.float32, copy=False) if np.issubdtype(array.dtype, np.floating) else array
            try:  # before save_arrays_ckpt renames its temp file
                crc_checked.result()
            except (torch_pickle.DamagedCheckpoint, OSError) as exc:
                raise _unreadable(path, exc) from exc

        save_arrays_ckpt(tensors(), ckpt_path, append_dict={"meta": json.dumps(ckpt_meta)})
    meta = dict(extra_meta, source_name=source.name, layout=layout,
                converter_version=CONVERTER_VERSION, num_tensors=len(names),
                keys_sample=sorted(names)[:3], converted_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    _write_atomic_json(meta_path, meta)
    logger.info("converted %s (%s layout, %d tensors) in %.1f s -> %s", path, layout, len(names),
                time.time() - started, ckpt_path)


def is_cache_entry(ckpt_path: str, name_or_path: str) -> bool:
    """Whether ckpt_path is a conversion we made (re-made at will), not the user's own .ckpt."""
    return os.path.abspath(ckpt_path) != os.path.abspath(str(name_or_path))


@contextlib.contextmanager
def _cache_lock(cache_dir: str, lock_path: str, ckpt_path: str) -> Iterator[None]:
    """The cache entry's file lock, so ranks starting together convert once. A cache that cannot be written (a
    shared read-only cache) is still read: without the lock, with a warning. A lock file is removed again when its
    conversion failed, so failed names leave nothing behind."""
    from filelock import FileLock
    try:
        os.makedirs(cache_dir, exist_ok=True)
        lock = FileLock(lock_path)
        lock.acquire()
    except OSError as exc:
        logger.warning("weights cache %s: the lock is off (%s): reading it without", cache_dir, first_line(exc))
        yield
        return
    try:
        yield
    finally:
        if not os.path.exists(ckpt_path):
            with contextlib.suppress(OSError):
                os.remove(lock_path)
        lock.release()


def download_and_convert_weights(name_or_path: str, cache_dir: Optional[str] = None, token: Optional[str] = None,
                                 revision: Optional[str] = None, force: bool = False) -> str:
    """Path of the MindSpore .ckpt for a checkpoint source; downloads and converts only when needed.

    Ranks starting together convert once: the first takes a file lock, the others wait and reuse it.
    """
    source = hub.resolve_source(name_or_path)
    if source.kind == "ckpt":
        return source.path
    cache_dir = cache_dir or default_cache_dir()
    ckpt_path, meta_path, lock_path = _cache_paths(cache_dir, source)
    token = token or None
    with _cache_lock(cache_dir, lock_path, ckpt_path):
        if not force and _is_cache_hit(source, ckpt_path, meta_path, token, revision):
            return ckpt_path
        if not writable_dir(cache_dir):
            raise WeightError(f"{cache_dir}: the weights cache is not writable ({name_or_path} must be converted "
                              "into it): give --weights_cache_dir a writable folder or set RETFOUND_MS_CACHE")
        if source.kind == "local":
            path, extra = source.path, {"source_path": source.path, "source_identity": _file_identity(source.path),
                                        "source_fingerprint": _local_fingerprint(source.path)}
        else:
            path = hub.download(source, token, revision)
            etag = os.path.basename(os.path.realpath(path))  # huggingface_hub names blobs by their ETag
            extra = {"repo_id": source.repo_id, "filename": source.filename, "revision": revision, "etag": etag,
                     # an LFS file's ETag is its sha256 (all checkpoints are LFS files; small git files are hashed)
                     "source_sha256": etag if re.fullmatch(r"[0-9a-f]{64}", etag) else _sha256(path)}
        # The metadata marks a complete conversion: drop it first. Without it the old .ckpt is never used again;
        # remove that too, as writing the new one beside it costs more (ext4 flushes a file renamed over another).
        for stale in (meta_path, ckpt_path):
            if os.path.exists(stale):
                os.remove(stale)
        _convert(source, path, ckpt_path, meta_path, extra)
    return ckpt_path


def checkpoint_file(source: str, cache_dir: Optional[str] = None) -> str:
    """The .ckpt file a --resume / --finetune value names: one of ours as it is (its `.pth` spelling included);
    an upstream .pth, a .safetensors or a published name converted once and cached (download_and_convert_weights)."""
    return download_and_convert_weights(source, cache_dir)
