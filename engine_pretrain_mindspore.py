"""upstream engine_pretrain.py's `train_one_epoch` of MAE pre-training, for MindSpore.

It lives in util_mindspore/training/pretraining.py, with the masking noise drawn on the host so that a run is
reproducible from its seed.
"""
from util_mindspore.training.pretraining import masking_noise, train_one_epoch

__all__ = ["train_one_epoch", "masking_noise"]
