"""The errors a user can act on, and the helper that keeps their messages to one line.

`UserError` is bad input: data, flags, checkpoints, files, devices. Its message is one line that names the file,
key or flag at fault; a script prints it as `error: ...` and exits 1 (util_mindspore/cli/startup.py). Everything
else is a bug and keeps its traceback: code here raises a UserError only where it knows the input is at fault, and
never turns another exception into one. This module imports nothing: every package may raise these.
"""


def first_line(exc: BaseException) -> str:
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
