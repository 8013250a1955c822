"""File names are bytes on Linux; Python gives the bytes that are not UTF-8 as lone surrogates ('\\udcff'), which
UTF-8 files, JSON readers and matplotlib refuse. Every name we write as text goes through `printable`: its
undecodable bytes as backslash escapes (b'\\xff' -> the four characters \\xff), the rest unchanged."""
import os
from typing import TypeVar

_T = TypeVar("_T")  # printable / spreadsheet_safe give back other values than text as they are


def printable(name: _T) -> _T:
    return os.fsencode(name).decode("utf-8", "backslashreplace") if isinstance(name, str) else name


# What a spreadsheet runs as a formula when a cell starts with it (OWASP's CSV injection list).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: _T) -> _T:
    """A text cell a spreadsheet shows as text: one starting like a formula gets a leading apostrophe, as OWASP
    advises (`=cmd|...` -> `'=cmd|...`). Only for names and labels, never for numbers."""
    return "'" + text if isinstance(text, str) and text.startswith(_FORMULA_STARTS) else text


def output_path(folder: str, name: str, suffix: str) -> str:
    """Where an output made for the input `name` (a relative path) goes: the name mirrored under `folder`, `suffix`
    added, so two inputs never share one (x.jpg and x.png, a/b.jpg and a__b.jpg). `..` and `.` become %2E%2E and
    %2E, `%` becomes %25, and a leading `/` is dropped, so it stays inside `folder`."""
    parts = [p.replace("%", "%25") for p in name.replace(os.sep, "/").split("/") if p]
    parts = [p.replace(".", "%2E") if p in (".", "..") else p for p in parts]
    return os.path.join(folder, *parts) + suffix
