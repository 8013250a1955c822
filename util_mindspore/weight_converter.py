"""Turn a RETFound checkpoint source into MindSpore parameters: download once, convert once, load strictly.

Sources: a published name (YukunZhou/<name>/<name>.pth on HuggingFace), `org/repo[/file]` on the hub,
a local .pth/.pt/.bin/.safetensors, or a .ckpt of ours. Downloads go through huggingface_hub only, so
its cache, HF_TOKEN / `huggingface-cli login`, HF_ENDPOINT and HF_HUB_OFFLINE all apply.

Unlike upstream (which loads with strict=False and ignores what did not fit), every key is accounted
for: a missing or mis-shaped backbone parameter is an error, and the load report lists the rest.
"""
import argparse
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import time
import typing
import zipfile

import numpy as np

from util_mindspore import torch_pickle
from util_mindspore.pos_embed import interpolate_pos_embed

logger = logging.getLogger("retfound.weights")

CONVERTER_VERSION = 1
CHECKPOINT_EXTENSIONS = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")

# Every published RETFound checkpoint, described once: HuggingFace repo, file, and source family.
PUBLISHED = {
    "RETFound_mae_natureCFP": "mae",
    "RETFound_mae_natureOCT": "mae",
    "RETFound_mae_meh": "mae",
    "RETFound_mae_shanghai": "mae",
    "RETFound_dinov2_meh": "dinov2",
    "RETFound_dinov2_shanghai": "dinov2",
}
HF_ORG = "YukunZhou"

# What our training checkpoints hold beside the model (see util_mindspore/misc.py): never model weights.
TRAINING_STATE_PREFIXES = ("optimizer.", "loss_scale.", "accum.")

# Backbone parameters: a model parameter of these families must come from the checkpoint.
_BACKBONE = re.compile(r"^(cls_token|pos_embed|patch_embed\.|blocks\.)")
# Source keys that are not part of the encoder (MAE decoder, DINO heads, masking token).
_DROPPED = re.compile(r"^(decoder_|mask_token$|dino_head\.|ibot_head\.|dino_loss|ibot_patch_loss)")


def _first_line(exc):
    """An exception's first line of text (or its type): error messages here stay one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class WeightError(ValueError):
    """A checkpoint cannot be fetched, read or loaded; the message is one line that says what to do."""


@dataclasses.dataclass
class Source:
    name: str  # cache stem
    kind: str  # 'hub', 'local' or 'ckpt'
    path: str = None
    repo_id: str = None
    filename: str = None


def default_cache_dir():
    return os.environ.get("RETFOUND_MS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                               "retfound_mindspore")


def resolve_source(name_or_path):
    """Decide what a --finetune / --resume value names (see the module docstring)."""
    value = str(name_or_path)
    if value in PUBLISHED:
        return Source(value, "hub", repo_id=f"{HF_ORG}/{value}", filename=f"{value}.pth")
    if os.path.exists(value):
        if os.path.isdir(value):
            raise WeightError(f"{value}: is a directory, not a checkpoint file")
        stem, ext = os.path.splitext(os.path.basename(value))
        if ext.lower() == ".ckpt":
            return Source(stem, "ckpt", path=os.path.abspath(value))
        if ext.lower() not in CHECKPOINT_EXTENSIONS:
            raise WeightError(f"{value}: unknown checkpoint type '{ext}' (use {', '.join(CHECKPOINT_EXTENSIONS)})")
        return Source(stem, "local", path=os.path.abspath(value))
    parts = value.split("/")
    looks_local = value.startswith((".", "/", "~")) or os.sep != "/" and os.sep in value
    if not looks_local and len(parts) >= 2 and all(parts):
        if len(parts) == 2 and not value.lower().endswith(CHECKPOINT_EXTENSIONS):
            filename = f"{parts[1]}.pth"  # the RETFound convention: <repo>/<repo>.pth
        elif len(parts) >= 3:
            filename = "/".join(parts[2:])
        else:
            filename = None
        if filename:
            stem = os.path.splitext(filename.replace("/", "_"))[0]
            return Source(f"{parts[0]}--{parts[1]}--{stem}", "hub", repo_id="/".join(parts[:2]), filename=filename)
    if value.lower().endswith(CHECKPOINT_EXTENSIONS) or looks_local:
        raise WeightError(f"{value}: no such checkpoint file")
    raise WeightError(f"unknown checkpoint '{value}': use a file path, 'org/repo[/file]', or one of "
                      f"{', '.join(PUBLISHED)}")


# --- reading ----------------------------------------------------------------------------------------------

def _to_numpy(value, buffer=None):
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, torch_pickle.LazyTensor):
        return value.to_numpy(buffer)
    # a torch.Tensor (torch reader); bfloat16 has no numpy type
    tensor = value.detach().cpu()
    if str(tensor.dtype) == "torch.bfloat16":
        tensor = tensor.float()
    return tensor.numpy()


def _is_tensor(value):
    return isinstance(value, (np.ndarray, torch_pickle.LazyTensor)) or type(value).__name__ in ("Tensor", "Parameter")


def _read_torch_file(path):
    """Unpickle a torch checkpoint without running code.

    Our zip reader comes first even when torch is installed: it is lazy, so a 1.2 GB ViT-L file converts
    in 53 MB peak RSS where torch.load(mmap=True) needs 3.0 GB (benchmarks/bench_convert.py). Files it
    cannot read (the legacy pre-1.6 format) go to torch.load(weights_only=True, Namespace allow-listed).
    """
    try:
        return torch_pickle.load(path)
    except torch_pickle.NotZipCheckpoint:
        import torch  # only torch reads the legacy format; without it the ImportError reports "unreadable"
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint_file(path):
    """The object stored in a checkpoint file, tensors left lazy where the format allows."""
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.numpy import load_file
            return load_file(path)
        return _read_torch_file(path)
    except WeightError:
        raise
    except Exception as exc:  # corrupt, truncated, unsafe: one line, no traceback for the user
        kind = "unsafe" if "refusing" in str(exc) or "weights_only" in str(exc).lower() or \
            "Unsupported global" in str(exc) else "unreadable (truncated or corrupt?)"
        raise WeightError(f"{path}: {kind} checkpoint: {_first_line(exc)}") from None


# --- layouts: one small function per source family ---------------------------------------------------------

def _select_state_dict(obj):
    """Pick the weights inside a checkpoint: model (MAE, fine-tuned), teacher (DINOv2), state_dict, module, root."""
    if isinstance(obj, dict):
        for key in ("model", "teacher", "state_dict", "module", "model_ema"):
            if key in obj and isinstance(obj[key], dict):
                return key, obj[key]
        return "root", obj
    raise WeightError(f"checkpoint holds a {type(obj).__name__}, not a dict of weights")


def _strip_prefixes(sd):
    out = {}
    for key, value in sd.items():
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _convert_mae(sd):
    """MAE pretraining (encoder + decoder) and fine-tuned checkpoints: keep the encoder, names unchanged."""
    return {k: v for k, v in sd.items() if not _DROPPED.match(k)}


def _convert_dinov2(sd):
    """DINOv2 teacher: drop heads, un-chunk `blocks.<chunk>.<i>.`, rename SwiGLU w12/w3 as upstream does."""
    out = {}
    for key, value in sd.items():
        if _DROPPED.match(key):
            continue
        key = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)
        key = key.replace("mlp.w12.", "mlp.fc1.").replace("mlp.w3.", "mlp.fc2.")
        out[key] = value
    return out


def checkpoint_filter_fn(obj):
    """Published checkpoint object -> (flat dict name -> tensor, layout name). The one place for layout rules."""
    container, sd = _select_state_dict(obj)
    sd = {k: v for k, v in sd.items() if _is_tensor(v)}
    if not sd:
        raise WeightError(f"checkpoint '{container}' holds no tensors")
    dinov2 = container == "teacher" or any(k.startswith("backbone.") for k in sd) or \
        any(k.startswith(("dino_head.", "ibot_head.")) for k in sd)
    sd = _strip_prefixes(sd)
    if dinov2:
        return _convert_dinov2(sd), "dinov2"
    return _convert_mae(sd), ("finetuned" if "head.weight" in sd else "mae")


# --- cache ------------------------------------------------------------------------------------------------

def _sha256(path, chunk=16 << 20):
    digest, buffer = hashlib.sha256(), bytearray(chunk)  # one buffer: no fresh memory per chunk
    view = memoryview(buffer)
    with open(path, "rb") as fh:
        while size := fh.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def _local_fingerprint(path):
    """What a local source holds, for the cache when its size or mtime changed. A zip checkpoint (torch >= 1.6)
    is known by its directory: member names, sizes and CRC-32s, which the conversion checks against the bytes
    it converts. That takes milliseconds, where hashing ViT-L's 1.2 GB takes 0.8 s; a changed tensor goes
    unnoticed only if its CRC-32 stays the same (a 2**-32 chance). Other files are hashed."""
    try:
        with zipfile.ZipFile(path) as archive:
            listing = [[i.filename.partition("/")[2], i.file_size, i.CRC] for i in archive.infolist()]
    except zipfile.BadZipFile:
        return f"sha256:{_sha256(path)}"
    return f"zip-crc32:{hashlib.sha256(json.dumps(listing).encode()).hexdigest()}"


def _file_identity(path):
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_meta(meta_path):
    try:
        with open(meta_path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _write_atomic_json(path, data):
    tmp = f"{path}.partial"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


# --- MindSpore .ckpt files, streamed ---------------------------------------------------------------------------
# A .ckpt is a protobuf `Checkpoint` (mindspore/train/checkpoint.proto) written as one message per tensor:
#   Checkpoint.value(1) { tag(1): name, tensor(2) { dims(1): int64 each, tensor_type(2): "Float32", content(3) } }
# ms.save_checkpoint copies every tensor three times on its way to disk (3.8 s for ViT-L) and ms.load_checkpoint
# parses it into Python bytes (7-8 s); these two write and read the same bytes straight from and into numpy
# (ViT-L: 1.0 s / 2.8 s on a busy machine; tests/test_weight_converter.py checks byte equality with
# ms.save_checkpoint and agreement with ms.load_checkpoint). Anything else (encrypted, CRC trailer, map
# tensors) is left to ms.load_checkpoint.

_CKPT_TYPES = {"float32": "Float32", "float16": "Float16", "float64": "Float64", "int8": "Int8", "int16": "Int16",
               "int32": "Int32", "int64": "Int64", "uint8": "UInt8", "bool": "Bool"}
_CKPT_DTYPES = {v: np.dtype(k) for k, v in _CKPT_TYPES.items()}
_CKPT_SLICE = 512 << 20  # ms.save_checkpoint splits a tensor's bytes into messages of at most this size
CKPT_WRITE_AHEAD = 2  # save_arrays_ckpt draws at most this many items beyond the last one fully written


def _varint(n):
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_field(number, length):
    return _varint(number << 3 | 2) + _varint(length)


def _ckpt_message_head(name, dims, type_name, content_len):
    """Everything of one Checkpoint message before its tensor bytes."""
    tag = name.encode()
    tensor = b"".join(_varint(1 << 3) + _varint(d) for d in dims) + _len_field(2, len(type_name)) + \
        type_name.encode() + _len_field(3, content_len)
    value = _len_field(1, len(tag)) + tag + _len_field(2, len(tensor) + content_len) + tensor
    return _len_field(1, len(value) + content_len) + value


def _ckpt_entry(value):
    """(dims, type name, bytes view) as ms.save_checkpoint stores an array, a str, an int or a float."""
    if isinstance(value, str):  # MindSpore keeps strings as numpy unicode (UTF-32) with dims [0]
        return [0], "str", memoryview(np.array(value).tobytes())
    if isinstance(value, bool):  # as ms.Tensor(value) types Python scalars
        value = np.array(value, np.bool_)
    elif isinstance(value, int):
        value = np.array(value, np.int64)
    elif isinstance(value, float):
        value = np.array(value, np.float32)
    array = np.asarray(value)  # not ascontiguousarray: it turns a scalar into shape (1,)
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    if array.dtype.name not in _CKPT_TYPES:
        raise WeightError(f"cannot store a {array.dtype} array in a .ckpt")
    return list(array.shape), _CKPT_TYPES[array.dtype.name], memoryview(array.reshape(-1)).cast("B")


class FileExtent(typing.NamedTuple):
    """A float32 C-order tensor whose bytes lie in an open file as they are: the .ckpt writer copies them there
    in the kernel (as a file copy does) instead of reading them into memory and writing them out again."""
    file: typing.BinaryIO
    offset: int
    shape: tuple


# errors that say the kernel cannot copy between these two files (old kernel, other OS, filesystem pair)
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


def _copy_extent(src_fd, offset, count, dst_fd):
    """Copy `count` bytes at `offset` to dst's position: copy_file_range, or pread / write where it fails."""
    kernel = hasattr(os, "copy_file_range")
    while count > 0:
        done = 0
        if kernel:
            try:
                done = os.copy_file_range(src_fd, dst_fd, count, offset)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                kernel = False
        if not kernel:
            done = os.write(dst_fd, os.pread(src_fd, min(count, 16 << 20), offset))
        if done == 0:
            raise OSError(f"source file ended {count} bytes early")
        offset, count = offset + done, count - done


def _write_all(fh, data):
    view = memoryview(data)
    while view:  # an unbuffered write may take less than it was given
        view = view[fh.write(view):]


def _write_ckpt_entry(fh, name, value):
    if isinstance(value, FileExtent):
        dims, type_name, nbytes = list(value.shape), "Float32", 4 * int(np.prod(value.shape, dtype=np.int64))
    else:
        dims, type_name, data = _ckpt_entry(value)
        nbytes = len(data)
    for start in range(0, max(nbytes, 1), _CKPT_SLICE):
        count = min(_CKPT_SLICE, nbytes - start)
        _write_all(fh, _ckpt_message_head(name, dims, type_name, count))
        if isinstance(value, FileExtent):
            _copy_extent(value.file.fileno(), value.offset + start, count, fh.fileno())
        else:
            _write_all(fh, data[start:start + count])


def save_arrays_ckpt(arrays, path, append_dict=None):
    """Write name -> array (then append_dict's str / int / float) as a MindSpore .ckpt via a temp file.

    The bytes are those ms.save_checkpoint writes; a crash never leaves half a file under `path`. `arrays` may
    be a dict or an iterable of (name, array or FileExtent) pairs: a generator that reads tensors one by one
    overlaps its reading with the writing, done by a second thread (both release the GIL), and never holds
    them all. When the generator draws item k, items up to k - CKPT_WRITE_AHEAD - 1 are written: their memory
    may be reused. An exception from the generator leaves nothing behind.
    """
    from concurrent.futures import ThreadPoolExecutor
    tmp = f"{path[:-len('.ckpt')] if path.endswith('.ckpt') else path}.partial.ckpt"
    pairs = arrays.items() if isinstance(arrays, dict) else arrays
    try:
        # unbuffered: _copy_extent writes at the file descriptor's position, behind any Python buffer
        with open(tmp, "wb", buffering=0) as fh, ThreadPoolExecutor(1) as writer:
            pending = []
            for name, value in pairs:
                pending.append(writer.submit(_write_ckpt_entry, fh, name, value))
                if len(pending) > CKPT_WRITE_AHEAD:  # bounded read-ahead
                    pending.pop(0).result()
            for name, value in (append_dict or {}).items():
                pending.append(writer.submit(_write_ckpt_entry, fh, name, value))
            for future in pending:
                future.result()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class _NotPlainCkpt(Exception):
    """The file uses a .ckpt feature the streamed reader leaves to ms.load_checkpoint."""


def _read_varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _NotPlainCkpt("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _read_len_field(buf, pos, number, available=None):
    """(start, end) of a length-delimited field; `available`: bytes that exist from buf[0] on (default len(buf))."""
    key, pos = _read_varint(buf, pos)
    if key != (number << 3 | 2):
        raise _NotPlainCkpt(f"unexpected field {key >> 3} (wire type {key & 7})")
    length, pos = _read_varint(buf, pos)
    if pos + length > (len(buf) if available is None else available):
        raise _NotPlainCkpt("truncated message")
    return pos, pos + length


def _read_plain_ckpt(path):
    """name -> numpy array or str from a .ckpt of plain tensors (see the block comment above).

    Each message head is parsed from a small read; the tensor bytes are read straight into their array.
    """
    chunks, meta = {}, {}
    size = os.path.getsize(path)
    if size == 0:
        raise _NotPlainCkpt("empty file")
    with open(path, "rb") as fh:
        pos = 0
        while pos < size:
            fh.seek(pos)
            head = fh.read(4096)
            try:
                start, end = _read_len_field(head, 0, 1, size - pos)  # Checkpoint.value
                tag_start, tag_end = _read_len_field(head, start, 1)
                name = head[tag_start:tag_end].decode()
                t_start, t_end = _read_len_field(head, tag_end, 2, size - pos)  # a map tensor is field 3
                dims, p = [], t_start
                while head[p] == 0x08:  # dims, unpacked int64
                    d, p = _read_varint(head, p + 1)
                    dims.append(d)
                type_start, type_end = _read_len_field(head, p, 2)
                c_start, c_end = _read_len_field(head, type_end, 3, size - pos)
            except IndexError:
                raise _NotPlainCkpt("message head too long") from None
            if t_end != end or c_end != t_end:
                raise _NotPlainCkpt("extra fields in a value")
            meta[name] = (dims, head[type_start:type_end].decode())
            content = np.empty(c_end - c_start, np.uint8)
            fh.seek(pos + c_start)
            if fh.readinto(content) != len(content):
                raise _NotPlainCkpt("truncated tensor")
            chunks.setdefault(name, []).append(content)
            pos += end
    out = {}
    for name, (dims, type_name) in meta.items():
        parts = chunks[name]
        if type_name == "str":
            raw = b"".join(part.tobytes() for part in parts)
            out[name] = str(np.frombuffer(raw, dtype=f"<U{max(len(raw) // 4, 1)}")[0])
            continue
        if type_name not in _CKPT_DTYPES:
            raise _NotPlainCkpt(f"tensor type {type_name}")
        data = parts[0] if len(parts) == 1 else np.concatenate(parts)
        out[name] = data.view(_CKPT_DTYPES[type_name]).reshape(dims)
    return out


def _hub_file_etag(source, token, revision):
    """ETag of the hub file (a HEAD request, no download); None when the hub cannot be asked."""
    import huggingface_hub.constants as hf_constants
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    if hf_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE"):
        return None
    url = hf_hub_url(source.repo_id, source.filename, revision=revision,
                     endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        return get_hf_file_metadata(url, token=token).etag
    except Exception as exc:  # HTTP errors, offline mode, connection errors and timeouts of any HTTP client
        logger.info("could not ask the hub for %s/%s (%s)", source.repo_id, source.filename, _first_line(exc))
        return None


def _download(source, token, revision):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    where = f"{source.repo_id}/{source.filename}"
    try:
        return hf_hub_download(source.repo_id, source.filename, revision=revision, token=token,
                               endpoint=os.environ.get("HF_ENDPOINT") or None)
    except GatedRepoError:
        raise WeightError(_gated_message(source)) from None
    except LocalEntryNotFoundError:  # before EntryNotFoundError: it is a subclass in huggingface_hub 1.x+
        raise WeightError(f"{where}: not in the HuggingFace cache and the hub cannot be reached "
                          "(offline or HF_HUB_OFFLINE=1); download it once while online") from None
    except RepositoryNotFoundError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise WeightError(_gated_message(source)) from None
        raise WeightError(f"{source.repo_id}: repository not found on the hub "
                          f"({os.environ.get('HF_ENDPOINT') or 'huggingface.co'})") from None
    except RevisionNotFoundError:
        raise WeightError(f"{where}: revision '{revision}' not found") from None
    except EntryNotFoundError:
        raise WeightError(f"{where}: no such file in the repository") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise WeightError(_gated_message(source)) from None
        raise WeightError(f"{where}: download failed: {_first_line(exc)}") from None


def _gated_message(source):
    return (f"{source.repo_id} is gated: request access at https://huggingface.co/{source.repo_id}, then run "
            "`huggingface-cli login` or set HF_TOKEN (or pass --token)")


def _cache_paths(cache_dir, source):
    base = os.path.join(cache_dir, source.name)
    return base + ".ckpt", base + ".json", base + ".lock"


def _is_cache_hit(source, ckpt_path, meta_path, token, revision):
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
        _write_atomic_json(meta_path, dict(meta, source_identity=_file_identity(source.path)))
        return True
    if meta.get("repo_id") != source.repo_id or meta.get("filename") != source.filename or \
            meta.get("revision") != revision:
        return False
    etag = _hub_file_etag(source, token, revision)
    if etag is None:  # offline or unreachable: the conversion we have is the best we can do
        logger.info("hub unreachable: using the cached conversion %s", ckpt_path)
        return True
    return etag == meta.get("etag")


def _unreadable(path, exc):
    return WeightError(f"{path}: unreadable (truncated or corrupt?) checkpoint: {_first_line(exc)}")


def _check_storages(storages):
    """Read each storage once into one buffer: _Storage.read checks its CRC-32."""
    buffer = np.empty(max((s.nbytes for s in storages), default=0), np.uint8)
    for storage in storages:
        storage.read(buffer)


def _convert(source, path, ckpt_path, meta_path, extra_meta):
    """Write the .ckpt: float32 tensors stored as they lie are copied file to file in the kernel, as a file copy
    is; the rest are read into CKPT_WRITE_AHEAD + 1 recycled buffers. Meanwhile a second thread reads the
    copied storages to check their CRC-32, so a corrupt file is refused before the .ckpt is renamed into place.

    ViT-L (1.2 GB, benchmarks/bench_convert.py): 0.95-1.0 s and 53 MB peak RSS, against 1.0-1.1 s to copy the
    file; reading every tensor into buffers and writing it out took 3.1-4.1 s on this 2-core VM."""
    from concurrent.futures import ThreadPoolExecutor
    started = time.time()
    with open(path, "rb") as source_file, ThreadPoolExecutor(1) as checker:
        state_dict, layout = checkpoint_filter_fn(read_checkpoint_file(path))
        names, size = list(state_dict), os.fstat(source_file.fileno()).st_size
        try:
            ranges = {k: v.file_range() for k, v in state_dict.items() if isinstance(v, torch_pickle.LazyTensor)}
        except (zipfile.BadZipFile, OSError) as exc:
            raise _unreadable(path, exc) from None
        ranges = {k: r for k, r in ranges.items() if r is not None and sum(r) <= size}
        copied = {state_dict[k].storage.name: state_dict[k].storage for k in ranges}
        crc_checked = checker.submit(_check_storages, list(copied.values()))

        def tensors():
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
                except (zipfile.BadZipFile, OSError) as exc:  # a storage's CRC or size is wrong
                    raise _unreadable(path, exc) from None
                yield key, array.astype(np.float32, copy=False) if np.issubdtype(array.dtype, np.floating) else array
            try:  # before save_arrays_ckpt renames its temp file
                crc_checked.result()
            except (zipfile.BadZipFile, OSError) as exc:
                raise _unreadable(path, exc) from None

        save_arrays_ckpt(tensors(), ckpt_path)
    meta = dict(extra_meta, source_name=source.name, layout=layout,
                converter_version=CONVERTER_VERSION, num_tensors=len(names),
                keys_sample=sorted(names)[:3], converted_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    _write_atomic_json(meta_path, meta)
    logger.info("converted %s (%s layout, %d tensors) in %.1f s -> %s", path, layout, len(names),
                time.time() - started, ckpt_path)


def download_and_convert_weights(name_or_path, cache_dir=None, token=None, revision=None, force=False):
    """Path of the MindSpore .ckpt for a checkpoint source; downloads and converts only when needed.

    Ranks starting together convert once: the first takes a file lock, the others wait and reuse it.
    """
    from filelock import FileLock
    source = resolve_source(name_or_path)
    if source.kind == "ckpt":
        return source.path
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    ckpt_path, meta_path, lock_path = _cache_paths(cache_dir, source)
    token = token or None
    with FileLock(lock_path):
        if not force and _is_cache_hit(source, ckpt_path, meta_path, token, revision):
            return ckpt_path
        if source.kind == "local":
            path, extra = source.path, {"source_path": source.path, "source_identity": _file_identity(source.path),
                                        "source_fingerprint": _local_fingerprint(source.path)}
        else:
            path = _download(source, token, revision)
            etag = os.path.basename(os.path.realpath(path))  # huggingface_hub names blobs by their ETag
            extra = {"repo_id": source.repo_id, "filename": source.filename, "revision": revision, "etag": etag,
                     # an LFS file's ETag is its sha256 (all checkpoints are LFS files; small git files are hashed)
                     "source_sha256": etag if re.fullmatch(r"[0-9a-f]{64}", etag) else _sha256(path)}
        # The metadata marks a complete conversion: drop it first. Without it the old .ckpt is never used again;
        # remove that too, as writing the new one beside it costs more (ext4 flushes a file renamed over another
        # file: 0.6-1.0 s for ViT-L).
        for stale in (meta_path, ckpt_path):
            if os.path.exists(stale):
                os.remove(stale)
        _convert(source, path, ckpt_path, meta_path, extra)
    return ckpt_path


# --- loading into a model ---------------------------------------------------------------------------------

@dataclasses.dataclass
class LoadReport:
    source: str
    loaded: list
    missing: list
    unexpected: list
    interpolated: list
    reinitialized: list

    def __str__(self):
        def few(keys):
            return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "") if keys else "none"
        return (f"loaded {len(self.loaded)} tensors from {self.source}; missing: {few(self.missing)}; "
                f"unexpected: {few(self.unexpected)}; interpolated: {few(self.interpolated)}; "
                f"re-initialised: {few(self.reinitialized)}")


def load_arrays_into_model(model, arrays, source="state dict", keep_head=True):
    """Load name -> array into `model` by name; strict about the backbone, loud about everything else."""
    import mindspore as ms  # MindSpore only for loading into a model: converting runs without it

    from util_mindspore.layers import trunc_normal_linear_
    params = dict(model.parameters_and_names())
    arrays = dict(arrays)
    interpolated, reinitialized, mismatched = [], [], []
    if "pos_embed" in arrays and "pos_embed" in params and \
            tuple(arrays["pos_embed"].shape) != tuple(params["pos_embed"].shape):
        grid = model.patch_embed.grid_size
        old = arrays["pos_embed"].shape
        arrays["pos_embed"] = interpolate_pos_embed(arrays["pos_embed"], grid)
        interpolated.append(f"pos_embed {tuple(old)}->{tuple(arrays['pos_embed'].shape)}")
    head_keys = [k for k in params if k.startswith("head.")]
    head_fits = keep_head and head_keys and all(
        k in arrays and tuple(arrays[k].shape) == tuple(params[k].shape) for k in head_keys)
    for name, param in params.items():
        if name in arrays and tuple(arrays[name].shape) != tuple(param.shape) and not name.startswith("head."):
            mismatched.append(f"{name} {tuple(arrays[name].shape)} vs model {tuple(param.shape)}")
    missing = [n for n in params if n not in arrays]
    missing_backbone = [n for n in missing if _BACKBONE.match(n)]
    if mismatched or missing_backbone:
        problem = (f"mis-shaped: {'; '.join(mismatched[:3])}" if mismatched else
                   f"missing backbone keys: {', '.join(missing_backbone[:4])}")
        total = len(mismatched) + len(missing_backbone)
        raise WeightError(f"{source} does not fit this model ({total} keys): {problem}")
    loaded = []
    for name, param in params.items():
        if name.startswith("head.") and not head_fits:
            continue
        if name in arrays:
            param.set_data(ms.Tensor(np.ascontiguousarray(arrays[name]), dtype=param.dtype))
            loaded.append(name)
    if head_keys and not head_fits:
        trunc_normal_linear_(model.head, std=2e-5)
        reinitialized.extend(head_keys)
    unexpected = sorted(k for k in arrays if k not in params or (k.startswith("head.") and not head_fits))
    missing = [n for n in missing if n not in reinitialized]
    report = LoadReport(source, loaded, missing, unexpected, interpolated, reinitialized)
    logger.info("%s", report)
    return report


def read_ckpt(ckpt_path):
    """(model arrays, training-state arrays, info) from one of our .ckpt files: a conversion or a training checkpoint.

    Training state is what TRAINING_STATE_PREFIXES names; info holds epoch, best_score and the JSON meta
    (class names, args) when the file is a training checkpoint (util_mindspore/misc.save_model).
    """
    try:
        loaded = _read_plain_ckpt(ckpt_path)
    except (_NotPlainCkpt, ValueError):  # ValueError: a name or type that is not UTF-8
        loaded = _load_with_mindspore(ckpt_path)
    except OSError as exc:
        raise WeightError(f"{ckpt_path}: unreadable MindSpore checkpoint: {_first_line(exc)}") from None
    meta = json.loads(loaded.pop("meta")) if isinstance(loaded.get("meta"), str) else {}
    info = {"epoch": int(np.asarray(loaded.pop("epoch")).item()) if "epoch" in loaded else None,
            "best_score": float(np.asarray(loaded.pop("best_score")).item()) if "best_score" in loaded else None,
            **meta}
    arrays = {k: v for k, v in loaded.items() if isinstance(v, np.ndarray)}
    model_arrays = {k: v for k, v in arrays.items() if not k.startswith(TRAINING_STATE_PREFIXES)}
    state_arrays = {k: v for k, v in arrays.items() if k.startswith(TRAINING_STATE_PREFIXES)}
    return model_arrays, state_arrays, info


def _load_with_mindspore(ckpt_path):
    import mindspore as ms
    try:
        loaded = ms.load_checkpoint(ckpt_path)
    except Exception as exc:
        raise WeightError(f"{ckpt_path}: unreadable MindSpore checkpoint: {_first_line(exc)}") from None
    return {k: v if isinstance(v, str) else v.asnumpy() for k, v in loaded.items()}


def load_pretrained_weights(model, name_or_path, cache_dir=None, token=None, revision=None, force=False):
    """Convert if needed, then load into `model`; returns the LoadReport (also logged).

    pos_embed is interpolated to the model's grid as upstream does; a `head` whose shape differs (or that
    the source lacks) is re-initialised trunc_normal(std=2e-5) as upstream does. A head that fits (an
    upstream fine-tuned checkpoint-best.pth) is kept, where upstream would re-initialise it: we keep what
    the user's checkpoint holds.
    """
    ckpt_path = download_and_convert_weights(name_or_path, cache_dir, token=token, revision=revision, force=force)
    model_arrays, _, _ = read_ckpt(ckpt_path)
    return load_arrays_into_model(model, model_arrays, source=str(name_or_path))
