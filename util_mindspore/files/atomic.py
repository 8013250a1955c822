"""Files that appear whole or not at all: written under a temporary name, fsynced, renamed, directory fsynced."""
import contextlib
import os
import shutil
from typing import IO, Any, Callable, Iterable, Iterator, List, Optional, Union


def fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def temporary_name(path: str) -> str:
    """A name beside `path` that no other process writing the same path uses."""
    return f"{path}.{os.getpid()}.partial"


def publish(tmp: str, path: str) -> None:
    """Make the finished temporary file `tmp` the file `path`, durably."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """open() for writing `path`; on an error (or Ctrl-C) the temporary file is removed and `path` is untouched."""
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def append_whole(path: str, text: str, initial: str = "") -> None:
    """Append `text` to a small file by rewriting it whole through atomic_write (an in-place append cut by a crash
    leaves half a line); `initial` is the content of a file that does not exist yet (a header)."""
    existing = initial
    if os.path.exists(path):
        with open(path, newline="", encoding="utf-8") as fh:
            existing = fh.read()
    with atomic_write(path, newline="", encoding="utf-8") as fh:
        fh.write(existing + text)


def writable_dir(path: str) -> bool:
    """Whether files can be created in the folder `path` (it exists, is writable, on a filesystem mounted rw)."""
    try:
        return os.path.isdir(path) and os.access(path, os.W_OK) and not os.statvfs(path).f_flag & os.ST_RDONLY
    except OSError:
        return False


def is_temporary(name: str) -> bool:
    """Whether a file name is one of our temporaries (atomic_write's `*.partial`, a .ckpt's `*.partial.ckpt`, an
    export's `.<name>.<format>.<pid>.partial` staging folder)."""
    return name.endswith((".partial", ".partial.ckpt"))


def remove_stale_temporaries(folder: str, log: Optional[Callable[[str], None]] = None) -> List[str]:
    """Temporaries a crashed or killed run left in `folder` (the caller holds the folder's run lock, so no live run
    writes them): never read, removed. Returns their names."""
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        if not is_temporary(name):
            continue
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
            removed.append(name)
            if log is not None:
                log(name)
    return removed


def missing_folders(folder: str) -> List[str]:
    """`folder` and its ancestors that do not exist yet, deepest first: what a run may create and should remove
    again (remove_empty_folders) when it fails on its input."""
    missing, path = [], os.path.abspath(folder)
    while path and not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def remove_empty_folders(folders: Union[str, Iterable[str]]) -> None:
    """Remove each of `folders` (and the folders inside it) that holds no file, deepest first: what a run that
    failed on its input or was stopped at start-up leaves (its output folders, MindSpore's empty one inside)."""
    for folder in ([folders] if isinstance(folders, str) else folders):
        for dirpath, _, _ in sorted(os.walk(folder), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)  # only succeeds when empty
