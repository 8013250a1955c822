"""MindSpore's compile cache, in a directory of its own for each version of our code and each graph shape.

MindSpore re-checks only the scripts outside sys.path, and an installed project is inside it: left alone it would
load a graph compiled from an older models_vit_mindspore.py. So the directory name hashes the MindSpore version,
every source file of ours and the settings that shape the graphs; any change compiles afresh into a new
directory. MindSpore numbers cached graphs in compile order within a process, so only the first run of a process
uses the cache (a second in-process run would misnumber them), and never under msrun (untested with ranks
sharing one directory).
"""
import argparse
import hashlib
import json
import logging
import os
from typing import Dict, Mapping, Optional

from util_mindspore.errors import first_line
from util_mindspore.files.atomic import writable_dir
from util_mindspore.files.caches import code_digest, default_cache_dir

# Flags that only name files: two runs that differ in these alone compile the same graphs.
_NOT_IN_GRAPH = {"output_dir", "log_dir", "task", "finetune", "resume", "weights_cache_dir", "compile_cache_dir",
                 "data_path", "device_id", "dist_url", "start_epoch"}
_claimed = False


def cache_root(args: argparse.Namespace) -> Optional[str]:
    """--compile_cache_dir, else $RETFOUND_MS_COMPILE_CACHE, else <weights cache>/compile; None when 'off'."""
    value = args.compile_cache_dir or os.environ.get("RETFOUND_MS_COMPILE_CACHE") or \
        os.path.join(getattr(args, "weights_cache_dir", None) or default_cache_dir(), "compile")
    return None if value.lower() == "off" else value


def graph_key(args: argparse.Namespace, split_sizes: Mapping[str, int]) -> Dict[str, object]:
    """Every flag that can shape a graph, and the split sizes (they set the last batch's shape)."""
    key = {k: v for k, v in vars(args).items() if k not in _NOT_IN_GRAPH}
    key["split_sizes"] = dict(split_sizes)
    return key


def enable_compile_cache(root: Optional[str], key: Mapping[str, object]) -> Optional[str]:
    """Turn the cache on in root/<hash of our code, MindSpore and key>; returns that directory, or None when the
    cache is off (root None, or a run earlier in this process already used it)."""
    global _claimed
    if _claimed or not root:
        _switch(False)
        return None
    _claimed = True
    digest = hashlib.sha256(code_digest().encode())
    digest.update(json.dumps(key, sort_keys=True, default=str).encode())
    path = os.path.join(root, digest.hexdigest()[:20])
    try:
        os.makedirs(path, exist_ok=True)
        if not writable_dir(path):
            raise PermissionError(f"{path} is read-only")
    except OSError as exc:  # a read-only cache costs compile time, never the run
        logging.getLogger("retfound").warning("compile cache is off: %s cannot be written (%s)", root,
                                              first_line(exc))
        _switch(False)
        return None
    _switch(True, path)
    return path


def disable_compile_cache() -> None:
    """Off for the rest of this process, before its first graph: a process that compiles its graphs in another
    order than the run that filled the cache (a finished run's final test alone) must not load them by number."""
    _switch(False)


def _switch(on: bool, path: Optional[str] = None) -> None:
    """MindSpore's compile cache on (in `path`) or off: its MS_COMPILER_CACHE_ENABLE variable, read when a graph
    is compiled (set_context's enable_compile_cache is deprecated in 2.10)."""
    os.environ["MS_COMPILER_CACHE_ENABLE"] = "1" if on else "0"
    if path:
        import mindspore as ms
        ms.set_context(compile_cache_path=path)
