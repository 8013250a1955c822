"""The command-line entry points `pip install` puts on PATH (`retfound-train`, `retfound-predict`, ...): each
prepares the process as the scripts' own `__main__` blocks do (util_mindspore/cli/startup.py), then runs the
upstream-named script's `run()`.
"""
import importlib
import sys

from util_mindspore.cli.startup import prepare_process


def _run(module_name: str, signals: bool = True) -> None:
    prepare_process(signals=signals)
    module = importlib.import_module(module_name)
    module.ENTRY_SCRIPT = True
    sys.exit(module.run())


def train() -> None:
    """retfound-train: main_finetune_mindspore.py (upstream's main_finetune.py command line)."""
    _run("main_finetune_mindspore")


def pretrain() -> None:
    """retfound-pretrain: main_pretrain_mindspore.py (MAE pre-training on unlabelled images)."""
    _run("main_pretrain_mindspore")


def predict() -> None:
    """retfound-predict: predict_mindspore.py."""
    _run("predict_mindspore")


def export() -> None:
    """retfound-export: export_mindspore.py."""
    _run("export_mindspore")


def convert() -> None:
    """retfound-convert: convert_weights_example.py."""
    _run("convert_weights_example", signals=False)


def selfcheck() -> None:
    """retfound-selfcheck: selfcheck_mindspore.py."""
    _run("selfcheck_mindspore", signals=False)


def reconstruct() -> None:
    """retfound-reconstruct: mae_visualize_mindspore.py (what an MAE reconstructs)."""
    _run("mae_visualize_mindspore", signals=False)


def benchmark() -> None:
    """retfound-benchmark: benchmark_mindspore.py (models x datasets x seeds, with confidence intervals)."""
    _run("benchmark_mindspore")
