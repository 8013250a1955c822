"""Errors whose message is one line the user can act on, the helper that keeps messages to one line, and the
command-line scripts' way out."""
import sys

from util_mindspore.file_names import printable


def first_line(exc):
    """An exception's first line of text (or its type): error messages here stay one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class WeightError(ValueError):
    """A checkpoint cannot be fetched, read or loaded; the message is one line that says what to do."""


def exit_code(main, args):
    """main(args)'s exit code, or 1 after one line on stderr for what the user can act on: bad input (ValueError
    and its kinds: DataError, WeightError, DeviceError...), a missing key, a non-finite loss, a file that cannot be
    read or written. Anything else is a bug and keeps its traceback."""
    try:
        return main(args)
    except (ValueError, KeyError, FloatingPointError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    except OSError as exc:
        message = f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc)
    print(f"error: {printable(message)}", file=sys.stderr)
    return 1
