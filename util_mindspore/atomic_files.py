"""Files that appear whole or not at all: written under a temporary name, fsynced, renamed, directory fsynced."""
import contextlib
import os


def fsync_dir(path):
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path):
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def temporary_name(path):
    """A name beside `path` that no other process writing the same path uses."""
    return f"{path}.{os.getpid()}.partial"


def publish(tmp, path):
    """Make the finished temporary file `tmp` the file `path`, durably."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_write(path, mode="w", **open_kwargs):
    """open() for writing `path`; on an error (or Ctrl-C) the temporary file is removed and `path` is untouched."""
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def append_whole(path, text, initial=""):
    """Append `text` to a small file by rewriting it whole through atomic_write (an in-place append cut by a crash
    leaves half a line); `initial` is the content of a file that does not exist yet (a header)."""
    existing = initial
    if os.path.exists(path):
        with open(path, newline="", encoding="utf-8") as fh:
            existing = fh.read()
    with atomic_write(path, newline="", encoding="utf-8") as fh:
        fh.write(existing + text)


def writable_dir(path):
    """Whether files can be created in the folder `path` (it exists, is writable, on a filesystem mounted rw)."""
    try:
        return os.path.isdir(path) and os.access(path, os.W_OK) and not os.statvfs(path).f_flag & os.ST_RDONLY
    except OSError:
        return False
