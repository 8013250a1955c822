"""MindSpore .ckpt files written and read as a stream, with the bytes ms.save_checkpoint writes.

A .ckpt is a protobuf `Checkpoint` (mindspore/train/checkpoint.proto) written as one message per tensor:
  Checkpoint.value(1) { tag(1): name, tensor(2) { dims(1): int64 each, tensor_type(2): "Float32", content(3) } }
ms.save_checkpoint copies every tensor on its way to disk and ms.load_checkpoint parses it into Python bytes;
these write and read the same bytes straight from and into numpy (tests check byte equality with
ms.save_checkpoint and agreement with ms.load_checkpoint). Other .ckpt features (encryption, map tensors) are
refused: ms.load_checkpoint is never given a file whose checksum was not checked (a changed byte can crash it).

Every file we write ends with one more entry, END_MARKER (a string, so ms.load_checkpoint still reads the file):
the number of messages before it, their size in bytes and the CRC-32 of those bytes. A file cut short anywhere,
even between two tensors (what a kill during a save or an interrupted copy leaves), lacks it, and a file changed
since lacks the CRC: every reader refuses both in one line. A file without the marker that is known to be
complete (a training checkpoint of an earlier version, whose last entry is its metadata) is accepted by the
caller's `complete_without_marker`; any other can be sealed after checking it:
python -m util_mindspore.checkpoints.ckpt_format --seal FILE.
"""
import argparse
import errno
import json
import os
import sys
import typing
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from zlib_ng import zlib_ng

from util_mindspore.errors import WeightError, first_line
from util_mindspore.files.atomic import fsync_dir

_CKPT_TYPES = {"float32": "Float32", "float16": "Float16", "float64": "Float64", "int8": "Int8", "int16": "Int16",
               "int32": "Int32", "int64": "Int64", "uint8": "UInt8", "bool": "Bool"}
_CKPT_DTYPES = {v: np.dtype(k) for k, v in _CKPT_TYPES.items()}
_CKPT_SLICE = 512 << 20  # ms.save_checkpoint splits a tensor's bytes into messages of at most this size
CKPT_WRITE_AHEAD = 2  # save_arrays_ckpt draws at most this many items beyond the last one fully written
END_MARKER = "__retfound_end__"
_CRC_CHUNK = 16 << 20


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_field(number: int, length: int) -> bytes:
    return _varint(number << 3 | 2) + _varint(length)


def _ckpt_message_head(name: str, dims: typing.Sequence[int], type_name: str, content_len: int) -> bytes:
    """Everything of one Checkpoint message before its tensor bytes."""
    tag = name.encode()
    tensor = b"".join(_varint(1 << 3) + _varint(d) for d in dims) + _len_field(2, len(type_name)) + \
        type_name.encode() + _len_field(3, content_len)
    value = _len_field(1, len(tag)) + tag + _len_field(2, len(tensor) + content_len) + tensor
    return _len_field(1, len(value) + content_len) + value


def _ckpt_entry(value: typing.Union[np.ndarray, str, int, float]) -> typing.Tuple[typing.List[int], str, memoryview]:
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


# what an entry is written from: an array, a str / int / float (metadata), or tensor bytes lying in a file
CkptValue = typing.Union[np.ndarray, str, int, float, FileExtent]
# what a .ckpt is read back as: name -> numpy array or str
CkptEntries = typing.Dict[str, typing.Union[np.ndarray, str]]

# errors that say the kernel cannot copy between these two files (old kernel, other OS, filesystem pair)
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


def _copy_extent(src_fd: int, offset: int, count: int, dst_fd: int) -> None:
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


def _write_all(fh: typing.BinaryIO, data: typing.Union[bytes, memoryview]) -> None:
    view = memoryview(data)
    while view:  # an unbuffered write may take less than it was given
        view = view[fh.write(view):]


def _write_ckpt_entry(fh: typing.BinaryIO, name: str, value: CkptValue) -> int:
    """Write one entry; returns how many messages it took."""
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
    return len(range(0, max(nbytes, 1), _CKPT_SLICE))


def _crc32_of(fd: int, length: int) -> int:
    crc, offset = 0, 0
    while offset < length:
        chunk = os.pread(fd, min(_CRC_CHUNK, length - offset), offset)
        if not chunk:
            raise OSError(errno.EIO, "file shorter than written")
        crc = zlib_ng.crc32(chunk, crc)
        offset += len(chunk)
    return crc


def _end_marker(messages: int, length: int, crc: int) -> str:
    return json.dumps({"version": 1, "messages": messages, "bytes": length, "crc32": crc})


def _seal(fh: typing.BinaryIO, messages: int) -> None:
    """Append END_MARKER for everything written so far (read back for its CRC-32, from the page cache)."""
    length = os.fstat(fh.fileno()).st_size
    _write_ckpt_entry(fh, END_MARKER, _end_marker(messages, length, _crc32_of(fh.fileno(), length)))

def save_arrays_ckpt(arrays: typing.Union[typing.Mapping[str, CkptValue],
                                          typing.Iterable[typing.Tuple[str, CkptValue]]],
                     path: str, append_dict: typing.Optional[typing.Mapping[str, CkptValue]] = None) -> None:
    """Write name -> array (then append_dict's str / int / float) as a MindSpore .ckpt via a temp file.

    The bytes are those ms.save_checkpoint writes; a crash never leaves half a file under `path`. `arrays` may
    be a dict or an iterable of (name, array or FileExtent) pairs: a generator that reads tensors one by one
    overlaps its reading with the writing, done by a second thread (both release the GIL), and never holds
    them all. When the generator draws item k, items up to k - CKPT_WRITE_AHEAD - 1 are written: their memory
    may be reused. An exception from the generator leaves nothing behind.
    """
    tmp = partial_name(path)
    pairs = arrays.items() if isinstance(arrays, dict) else arrays
    try:
        # unbuffered: _copy_extent writes at the file descriptor's position, behind any Python buffer
        with open(tmp, "w+b", buffering=0) as fh, ThreadPoolExecutor(1) as writer:
            pending, messages = [], 0
            for name, value in pairs:
                pending.append(writer.submit(_write_ckpt_entry, fh, name, value))
                if len(pending) > CKPT_WRITE_AHEAD:  # bounded read-ahead
                    messages += pending.pop(0).result()
            for name, value in (append_dict or {}).items():
                pending.append(writer.submit(_write_ckpt_entry, fh, name, value))
            messages += sum(future.result() for future in pending)
            _seal(fh, messages)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    except OSError as exc:  # a full or read-only disk: name the file (the write calls do not)
        raise OSError(exc.errno, exc.strerror or str(exc), exc.filename or path) from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def partial_name(path: str) -> str:
    """The temporary name a .ckpt is written under (a crash may leave it: it is never read, and is removed)."""
    return f"{path[:-len('.ckpt')] if path.endswith('.ckpt') else path}.partial.ckpt"


class _NotPlainCkpt(Exception):
    """The bytes are not a .ckpt of plain tensors (cut short, changed, or a feature this reader does not read)."""


def _read_varint(buf: bytes, pos: int) -> typing.Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _NotPlainCkpt("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _read_len_field(buf: bytes, pos: int, number: int,
                    available: typing.Optional[int] = None) -> typing.Tuple[int, int]:
    """(start, end) of a length-delimited field; `available`: bytes that exist from buf[0] on (default len(buf))."""
    key, pos = _read_varint(buf, pos)
    if key != (number << 3 | 2):
        raise _NotPlainCkpt(f"unexpected field {key >> 3} (wire type {key & 7})")
    length, pos = _read_varint(buf, pos)
    if pos + length > (len(buf) if available is None else available):
        raise _NotPlainCkpt("truncated message")
    return pos, pos + length


def _parse_message_head(head: bytes, available: int) -> typing.Tuple[str, typing.List[int], str, int, int, int]:
    """(name, dims, type name, content start, content end, message end) of the message at head[0]: every length
    checked against the `available` bytes, so nothing beyond the file is ever sized."""
    try:
        start, end = _read_len_field(head, 0, 1, available)  # Checkpoint.value
        tag_start, tag_end = _read_len_field(head, start, 1)
        name = head[tag_start:tag_end].decode()
        t_start, t_end = _read_len_field(head, tag_end, 2, available)  # a map tensor is field 3
        dims, p = [], t_start
        while p < len(head) and head[p] == 0x08:  # dims, unpacked int64
            d, p = _read_varint(head, p + 1)
            dims.append(d)
        type_start, type_end = _read_len_field(head, p, 2)
        c_start, c_end = _read_len_field(head, type_end, 3, available)
        type_name = head[type_start:type_end].decode()
    except (IndexError, UnicodeDecodeError):
        raise _NotPlainCkpt("unreadable message head") from None
    if t_end != end or c_end != t_end:
        raise _NotPlainCkpt("extra fields in a value")
    return name, dims, type_name, c_start, c_end, end


def _read_plain_ckpt(path: str, stop: typing.Optional[int] = None) -> typing.Tuple[CkptEntries, int, int]:
    """(name -> numpy array or str, message count, start of the last message) of the messages before byte `stop`
    (default: the file's end). Each message head is parsed from a small read and checked against the bytes that
    exist; the tensor bytes are read straight into their array, whose size must match its dims and type."""
    chunks, meta, messages, last_start = {}, {}, 0, 0
    size = os.path.getsize(path) if stop is None else stop
    if size == 0:
        raise _NotPlainCkpt("empty file")
    with open(path, "rb") as fh:
        pos = 0
        while pos < size:
            fh.seek(pos)
            name, dims, type_name, c_start, c_end, end = _parse_message_head(fh.read(4096), size - pos)
            if name in meta and meta[name] != (dims, type_name):
                raise _NotPlainCkpt(f"entry {name} written twice with different shapes")
            meta[name] = (dims, type_name)
            content = np.empty(c_end - c_start, np.uint8)
            fh.seek(pos + c_start)
            if fh.readinto(content) != len(content):
                raise _NotPlainCkpt("truncated tensor")
            chunks.setdefault(name, []).append(content)
            messages, last_start = messages + 1, pos
            pos += end
    out = {}
    for name, (dims, type_name) in meta.items():
        parts = chunks[name]
        if type_name == "str":
            raw = b"".join(part.tobytes() for part in parts)
            try:
                out[name] = str(np.frombuffer(raw, dtype=f"<U{max(len(raw) // 4, 1)}")[0]) if raw else ""
            except ValueError:  # not a whole number of UTF-32 characters, or not characters at all
                raise _NotPlainCkpt(f"entry {name}: not a string") from None
            continue
        if type_name not in _CKPT_DTYPES:
            raise _NotPlainCkpt(f"tensor type {type_name}")
        data = parts[0] if len(parts) == 1 else np.concatenate(parts)
        dtype = _CKPT_DTYPES[type_name]
        if data.size != int(np.prod(dims, dtype=np.int64)) * dtype.itemsize:
            raise _NotPlainCkpt(f"entry {name}: {data.size} bytes for a {type_name} tensor of shape {dims}")
        out[name] = data.view(dtype).reshape(dims)
    return out, messages, last_start


_SEAL_HINT = "python -m util_mindspore.checkpoints.ckpt_format --seal"
_MARKER_TAG = _len_field(1, len(END_MARKER)) + END_MARKER.encode()
_TAIL = 8192  # the end marker message is well under this (a JSON of four numbers, stored as UTF-32)


def _find_end_marker(path: str, size: int) -> typing.Optional[typing.Tuple[typing.Dict[str, int], int]]:
    """(its JSON, where its message starts) when the file ends with our end marker, else None; raises WeightError
    when the tail names a marker that cannot be read (damaged). Reads the tail only: nothing of the file's records
    is parsed or sized before their CRC-32 is checked."""
    with open(path, "rb") as fh:
        fh.seek(max(0, size - _TAIL))
        tail = fh.read()
    found = tail.rfind(_MARKER_TAG)
    if found < 0:
        return None
    base = size - len(tail)
    for start in range(max(0, found - 12), found):  # the message's key and length come just before its tag
        try:
            name, dims, type_name, c_start, c_end, end = _parse_message_head(tail[start:], len(tail) - start)
        except _NotPlainCkpt:
            continue
        if name != END_MARKER or start + end != len(tail) or type_name != "str":
            continue
        raw = tail[start + c_start:start + c_end]
        try:
            text = str(np.frombuffer(raw, dtype=f"<U{max(len(raw) // 4, 1)}")[0]) if len(raw) % 4 == 0 else ""
            marker = json.loads(text)
            # the marker proves itself: exactly the text _end_marker writes for its own numbers
            if dims == [0] and text == _end_marker(marker["messages"], marker["bytes"], marker["crc32"]) and \
                    marker.get("version") == 1:
                return marker, base + start
        except (ValueError, TypeError, KeyError):
            pass
        break
    raise WeightError(f"{path}: incomplete or damaged checkpoint: no readable end marker (cut short by a crash or an "
                      "interrupted copy, or changed since it was written); use another copy")


def read_ckpt_entries(path: str, complete_without_marker: typing.Optional[
                          typing.Callable[[CkptEntries, typing.Optional[str]], bool]] = None) -> CkptEntries:
    """name -> numpy array or str of a complete, unchanged .ckpt (see the module docstring).

    A file with our end marker is verified first (the CRC-32 of every byte before the marker, read in chunks),
    and only then parsed: a damaged file is refused before any of its sizes is believed. A file without one is
    parsed with every length checked against the file, and accepted only when `complete_without_marker(entries,
    last_name)` says it is whole (a training checkpoint of an earlier version). MindSpore's own reader is never
    given an unverified file.
    """
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise WeightError(f"{path}: empty file, not a checkpoint")
        marker = _find_end_marker(path, size)
        if marker is not None:
            expected, marker_start = marker
            if expected["bytes"] != marker_start:
                raise WeightError(f"{path}: damaged checkpoint: its end marker does not match its contents")
            with open(path, "rb") as fh:
                if _crc32_of(fh.fileno(), marker_start) != expected["crc32"]:
                    raise WeightError(f"{path}: damaged checkpoint: checksum mismatch (changed or corrupted since "
                                      "it was written); use another copy")
            entries, messages, _ = _read_plain_ckpt(path, stop=marker_start)
            if messages != expected["messages"]:
                raise WeightError(f"{path}: damaged checkpoint: its end marker does not match its contents")
            return entries
        entries, _, _ = _read_plain_ckpt(path)
    except _NotPlainCkpt as exc:
        raise WeightError(f"{path}: incomplete or damaged checkpoint ({exc}): no end marker; a crash or an "
                          "interrupted copy?") from exc
    except OSError as exc:
        raise WeightError(f"{path}: unreadable MindSpore checkpoint: {first_line(exc)}") from exc
    last_name = list(entries)[-1] if entries else None
    if complete_without_marker is not None and complete_without_marker(entries, last_name):
        return entries
    raise WeightError(f"{path}: incomplete checkpoint: no end marker (cut short by a crash or an interrupted "
                      f"copy?); if it comes from elsewhere and you know it is whole: {_SEAL_HINT} {path}")


def seal_ckpt(path: str) -> None:
    """Append the end marker to a complete .ckpt of plain tensors written elsewhere (ms.save_checkpoint, an older
    version of this project)."""
    entries = read_ckpt_entries(path, complete_without_marker=lambda entries, last: True)
    if not entries:
        raise WeightError(f"{path}: holds no tensors")
    try:
        _, messages, _ = _read_plain_ckpt(path)
    except _NotPlainCkpt as exc:
        raise WeightError(f"{path}: cannot seal it: {exc}") from exc
    tmp = partial_name(path)
    try:
        with open(path, "rb") as src, open(tmp, "w+b", buffering=0) as fh:
            while chunk := src.read(_CRC_CHUNK):
                _write_all(fh, chunk)
            _seal(fh, messages)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Check a .ckpt written elsewhere and give it our end marker.")
    parser.add_argument("--seal", required=True, metavar="FILE")
    args = parser.parse_args(argv)
    try:
        seal_ckpt(args.seal)
    except (WeightError, OSError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 1
    print(f"sealed {args.seal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
