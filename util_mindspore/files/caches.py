"""Where our caches live and what makes an entry stale: converted weights, checkpoints exported for OpenVINO and
compiled graphs sit under one root (`$RETFOUND_MS_CACHE`, default `~/.cache/retfound_mindspore`), and an entry
made by another version of our code is never used (`code_digest`)."""
import functools
import hashlib
import importlib.metadata
import os
from typing import List

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout / install root
_PACKAGE = os.path.join(_ROOT, "util_mindspore")


def default_cache_dir() -> str:
    """$RETFOUND_MS_CACHE, else ~/.cache/retfound_mindspore."""
    return os.environ.get("RETFOUND_MS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                               "retfound_mindspore")


def project_sources() -> List[str]:
    """Every Python source of ours: the top-level scripts and the whole package, in a stable order."""
    scripts = [os.path.join(_ROOT, f) for f in sorted(os.listdir(_ROOT)) if f.endswith(".py")]
    package = [os.path.join(folder, f) for folder, dirs, files in sorted(os.walk(_PACKAGE))
               for f in sorted(files) if f.endswith(".py") and "__pycache__" not in folder]
    return scripts + sorted(package)


@functools.cache
def code_digest() -> str:
    """sha256 of MindSpore's version and every source file of ours: what makes a compiled graph (or an exported
    file) of this version. Computed once per process (the sources do not change under a running process)."""
    digest = hashlib.sha256(importlib.metadata.version("mindspore").encode())
    for path in project_sources():
        with open(path, "rb") as fh:
            digest.update(os.path.relpath(path, _ROOT).encode() + b"\0" + fh.read())
    return digest.hexdigest()
