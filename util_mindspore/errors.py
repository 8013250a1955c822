"""Errors whose message is one line the user can act on, and the helper that keeps messages to one line."""


def first_line(exc):
    """An exception's first line of text (or its type): error messages here stay one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class WeightError(ValueError):
    """A checkpoint cannot be fetched, read or loaded; the message is one line that says what to do."""
