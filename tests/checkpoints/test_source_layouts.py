"""The published layouts reduced to our parameter names."""
import numpy as np

from util_mindspore.checkpoints.source_layouts import checkpoint_filter_fn, is_pretraining_only, source_args


def test_layout_rules():
    sd = {"backbone.blocks.1.3.mlp.w12.weight": np.zeros(2), "backbone.blocks.1.3.mlp.w3.bias": np.zeros(2),
          "backbone.cls_token": np.zeros(2), "backbone.mask_token": np.zeros(2), "dino_head.mlp.0.weight": np.zeros(2)}
    converted, layout = checkpoint_filter_fn({"teacher": sd})
    assert layout == "dinov2"  # DINO's heads dropped; the mask token kept (the load report lists it as unused)
    assert sorted(converted) == ["blocks.3.mlp.fc1.weight", "blocks.3.mlp.fc2.bias", "cls_token", "mask_token"]
    converted, layout = checkpoint_filter_fn({"model": {"module.head.weight": np.zeros(2),
                                                           "decoder_pred.weight": np.zeros(2)}, "epoch": 3})
    # the MAE decoder is kept: continued pre-training needs it; a classifier's load lists it as unused
    assert (sorted(converted), layout) == (["decoder_pred.weight", "head.weight"], "finetuned")
    assert is_pretraining_only("decoder_pred.weight") and is_pretraining_only("mask_token")
    assert not is_pretraining_only("head.weight")
    args = source_args({"args": __import__("argparse").Namespace(model="Dinov3", input_size=256, aug=object())})
    assert args == {"model": "Dinov3", "input_size": 256}
