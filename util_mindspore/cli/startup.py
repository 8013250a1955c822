"""How every script starts and ends: what it does before MindSpore is imported (take SIGINT / SIGTERM, quiet
MindSpore's own log unless `--verbose`), and its way out: bad input is one line and exit 1, a signal one line and
exit 130 / 143, a bug its traceback.

This module must not import MindSpore: what `prepare_process` sets is read when MindSpore loads.
"""
import argparse
import os
import sys
from typing import Callable, Optional, Sequence

from util_mindspore.errors import UserError
from util_mindspore.files.atomic import missing_folders, remove_empty_folders
from util_mindspore.files.names import printable
from util_mindspore.process import interrupts
from util_mindspore.process.logs import setup_logging

# MindSpore's log level (C++ and Python): 3 = errors only; --verbose keeps MindSpore's own choice (warnings).
QUIET_MINDSPORE_LOG = "3"


def prepare_process(argv: Optional[Sequence[str]] = None, signals: bool = True) -> None:
    """Call first in a script's `__main__` block, before MindSpore is imported."""
    argv = sys.argv[1:] if argv is None else argv
    if "--verbose" not in argv and "GLOG_v" not in os.environ:
        os.environ["GLOG_v"] = QUIET_MINDSPORE_LOG
    if signals:
        interrupts.block_signals()


def user_message(exc: BaseException) -> str:
    """The one line `error: ...` shows for a UserError or a file / disk error (OSError names its path)."""
    if isinstance(exc, OSError):
        text = f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc)
    else:
        text = str(exc)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return printable(lines[0] if lines else type(exc).__name__)


def exit_code(main: Callable[[argparse.Namespace], int], args: argparse.Namespace,
              stop_message: Optional[Callable[[int], str]] = None) -> int:
    """main(args)'s exit code, or 1 after one line on stderr for what the user can act on: a UserError, or a file
    that cannot be read or written (OSError: a missing file, a full or read-only disk). Anything else is a bug and
    keeps its traceback. A SIGINT / SIGTERM taken by util_mindspore/process/interrupts.py ends with one line
    (`stop_message(signum)`) and exit 130 / 143."""

    def stopped(signum: int, where: Optional[str] = None) -> int:
        text = stop_message(signum) if stop_message else f"stopped by {interrupts.signal_name(signum)}"
        if where:  # "stopped by SIGTERM after epoch 3, step 20 of 100: ..."
            name = f"stopped by {interrupts.signal_name(signum)}"
            text = text.replace(name, f"{name} {where}", 1)
        print(printable(text), file=sys.stderr)
        return interrupts.EXIT_CODES[signum]

    try:
        return main(args)
    except (UserError, OSError) as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 1
    except interrupts.StopRequested as stop:
        return stopped(stop.signum, stop.where)
    except KeyboardInterrupt:
        if not interrupts.active():
            raise
        return stopped(interrupts.requested() or interrupts.signal.SIGINT)


def run_main(main: Callable[[argparse.Namespace], int], args: argparse.Namespace, folders: Sequence[str] = (),
             stop_message: Optional[Callable[[int], str]] = None) -> int:
    """A script's `run()`: logging set up, `main(args)` run under exit_code (bad input: one line and exit 1;
    SIGINT / SIGTERM: 130 / 143), and the `folders` this run created removed again when it fails while empty."""
    setup_logging()
    created = [path for folder in folders if folder for path in missing_folders(folder)]
    code = exit_code(main, args, stop_message=stop_message)
    if code:
        remove_empty_folders(created)
    return code
