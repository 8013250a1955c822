"""One run per output folder: a training, prediction or export run holds `<folder>/.retfound.lock` (an flock) while it
writes there, so a second run into the same folder stops in one line naming the holder, instead of mixing its
rows and checkpoints with the first's. A lock whose run died (kill -9, a lost node) is free again (the kernel drops
an flock with its process) and is taken over. The holder's PID, host, start time and command are in the file, for
the message. Under msrun rank 0 holds it for the run (`hold_for_run`), and every rank learns the outcome.
"""
import argparse
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from typing import Iterator, Tuple

from util_mindspore.errors import UserError
from util_mindspore.process import distributed

logger = logging.getLogger("retfound")
LOCK_NAME = ".retfound.lock"


class FolderInUse(UserError):
    """Another live run writes into this folder."""


def _holder_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
        return f"{info.get('what', 'a run')} by PID {info.get('pid')} on {info.get('host')} since {info.get('since')}"
    except (OSError, ValueError):
        return "another run"


def _acquire(folder: str, what: str) -> Tuple[int, str]:
    """(fd, path) of the folder's lock, taken; FolderInUse when a live run holds it."""
    path = os.path.join(folder, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise FolderInUse(f"{folder} is in use by another run ({_holder_text(path)}): wait for it to end, or "
                              "write elsewhere (another --task or --output_dir)") from exc
        try:  # the holder we waited on may have removed the file meanwhile: lock the file that is there
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    stale = os.fstat(fd).st_size > 0
    if stale:
        logger.info("taking over the lock of a run that ended (%s)", _holder_text(path))
    info = {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return fd, path


@contextlib.contextmanager
def hold(folder: str, what: str) -> Iterator[None]:
    """Hold `folder`'s lock (creating the folder) for the duration; FolderInUse if a live run holds it."""
    os.makedirs(folder, exist_ok=True)
    fd, path = _acquire(folder, what)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)  # while still locked: a waiting run then locks a new file (see _acquire)
        os.close(fd)


@contextlib.contextmanager
def hold_for_run(folder: str, what: str, args: argparse.Namespace) -> Iterator[None]:
    """`hold` on rank 0 of a (possibly msrun) run; every rank raises FolderInUse when rank 0 could not take it."""
    if not distributed.is_main_process(args):
        if distributed.all_reduce_max(0, args):
            raise FolderInUse(f"{folder} is in use by another run (rank 0 found its lock)")
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(hold(folder, what))
        except FolderInUse:
            distributed.all_reduce_max(1, args)
            raise
        distributed.all_reduce_max(0, args)
        yield
