"""The published layouts reduced to our parameter names."""
import numpy as np

from util_mindspore.source_layouts import checkpoint_filter_fn


def test_layout_rules():
    sd = {"backbone.blocks.1.3.mlp.w12.weight": np.zeros(2), "backbone.blocks.1.3.mlp.w3.bias": np.zeros(2),
          "backbone.cls_token": np.zeros(2), "backbone.mask_token": np.zeros(2), "dino_head.mlp.0.weight": np.zeros(2)}
    converted, layout = checkpoint_filter_fn({"teacher": sd})
    assert layout == "dinov2"
    assert sorted(converted) == ["blocks.3.mlp.fc1.weight", "blocks.3.mlp.fc2.bias", "cls_token"]
    converted, layout = checkpoint_filter_fn({"model": {"module.head.weight": np.zeros(2),
                                                           "decoder_pred.weight": np.zeros(2)}, "epoch": 3})
    assert (sorted(converted), layout) == (["head.weight"], "finetuned")
