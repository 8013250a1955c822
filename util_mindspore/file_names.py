"""File names are bytes on Linux; Python gives the bytes that are not UTF-8 as lone surrogates ('\\udcff'), which
UTF-8 files, JSON readers and matplotlib refuse. Every name we write as text goes through `printable`: its
undecodable bytes as backslash escapes (b'\\xff' -> the four characters \\xff), the rest unchanged."""
import os


def printable(name):
    return os.fsencode(name).decode("utf-8", "backslashreplace") if isinstance(name, str) else name
