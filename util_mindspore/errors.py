"""The errors a user can act on, the helper that keeps their messages to one line, and the scripts' way out.

`UserError` is bad input: data, flags, checkpoints, files, devices. Its message is one line that names the file,
key or flag at fault; a script prints it as `error: ...` and exits 1. Everything else is a bug and keeps its
traceback (a `KeyError` or `ValueError` from our own code is not dressed up as the user's fault).
"""
import sys

from util_mindspore.file_names import printable


def first_line(exc):
    """An exception's first line of text (or its type): error messages here stay one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class UserError(Exception):
    """Bad input the user can correct; the message is one line that says what and where."""


class ArgumentError(UserError):
    """A command-line value outside its meaning (a negative lr, a probability above 1, ...)."""


class WeightError(UserError):
    """A checkpoint cannot be fetched, read or loaded; the message says what to do."""


class DataError(UserError):
    """The data folder is not usable; the message says where and why."""


class TrainingDiverged(UserError):
    """The loss is not finite (a learning rate too high for the data, fp16 overflow without loss scaling)."""


def user_message(exc):
    """The one line `error: ...` shows for a UserError or a file / disk error (OSError names its path)."""
    if isinstance(exc, OSError):
        text = f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc)
    else:
        text = str(exc)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return printable(lines[0] if lines else type(exc).__name__)


def exit_code(main, args, stop_message=None):
    """main(args)'s exit code, or 1 after one line on stderr for what the user can act on: a UserError, or a file
    that cannot be read or written (OSError: a missing file, a full or read-only disk). Anything else is a bug and
    keeps its traceback. A SIGINT / SIGTERM taken by util_mindspore/interrupts.py ends with one line
    (`stop_message(signum)`) and exit 130 / 143."""
    from util_mindspore import interrupts

    def stopped(signum, where=None):
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
