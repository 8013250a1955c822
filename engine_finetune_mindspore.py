"""upstream engine_finetune.py's `train_one_epoch` and `evaluate`, for MindSpore.

Both live in util_mindspore/training/classification.py (the compiled step in util_mindspore/training/train_step.py,
the epoch loop it shares with pre-training in util_mindspore/training/epoch_loop.py).
"""
from util_mindspore.training.classification import evaluate, train_one_epoch

__all__ = ["train_one_epoch", "evaluate"]
