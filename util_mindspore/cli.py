"""The command-line entry points (`retfound-train`, `retfound-predict`, ... installed by pip) and what every script
does before MindSpore is imported: take SIGINT / SIGTERM (util_mindspore/interrupts.py) and quiet MindSpore's own
log (its C++ warnings about hash files and deprecations look like failures to a reader) unless `--verbose`.

This module must not import MindSpore: what it sets is read when MindSpore loads.
"""
import argparse
import importlib
import os
import sys
from typing import Callable, Optional, Sequence

from util_mindspore import interrupts
from util_mindspore.atomic_files import missing_folders, remove_empty_folders
from util_mindspore.errors import exit_code
from util_mindspore.logs import setup_logging

# MindSpore's log level (C++ and Python): 3 = errors only; --verbose keeps MindSpore's own choice (warnings).
QUIET_MINDSPORE_LOG = "3"


def prepare_process(argv=None, signals=True):
    """Call first in a script's `__main__` block, before MindSpore is imported."""
    argv = sys.argv[1:] if argv is None else argv
    if "--verbose" not in argv and "GLOG_v" not in os.environ:
        os.environ["GLOG_v"] = QUIET_MINDSPORE_LOG
    if signals:
        interrupts.block_signals()


def run_main(main: Callable[[argparse.Namespace], int], args: argparse.Namespace, folders: Sequence[str] = (),
             stop_message: Optional[Callable[[int], str]] = None) -> int:
    """A script's `run()`: logging set up, `main(args)` run under errors.exit_code (bad input: one line and exit 1;
    SIGINT / SIGTERM: 130 / 143), and the `folders` this run created removed again when it fails while empty."""
    setup_logging()
    created = [path for folder in folders if folder for path in missing_folders(folder)]
    code = exit_code(main, args, stop_message=stop_message)
    if code:
        remove_empty_folders(created)
    return code


def _run(module_name, signals=True):
    prepare_process(signals=signals)
    module = importlib.import_module(module_name)
    module.ENTRY_SCRIPT = True
    sys.exit(module.run())


def train():
    """retfound-train: main_finetune_mindspore.py (upstream's main_finetune.py command line)."""
    _run("main_finetune_mindspore")


def pretrain():
    """retfound-pretrain: main_pretrain_mindspore.py (MAE pre-training on unlabelled images)."""
    _run("main_pretrain_mindspore")


def predict():
    """retfound-predict: predict_mindspore.py."""
    _run("predict_mindspore")


def export():
    """retfound-export: export_mindspore.py."""
    _run("export_mindspore")


def convert():
    """retfound-convert: convert_weights_example.py."""
    _run("convert_weights_example", signals=False)


def selfcheck():
    """retfound-selfcheck: selfcheck_mindspore.py."""
    _run("selfcheck_mindspore", signals=False)


def reconstruct():
    """retfound-reconstruct: mae_visualize_mindspore.py (what an MAE reconstructs)."""
    _run("mae_visualize_mindspore", signals=False)


def benchmark():
    """retfound-benchmark: benchmark_mindspore.py (models x datasets x seeds, with confidence intervals)."""
    _run("benchmark_mindspore")
