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
