"""A trained model for inference (export, prediction), with the settings its checkpoint already knows.

`--resume` may be our .ckpt (which stores the model name, class names and the training arguments), an upstream
fine-tuned `checkpoint-best.pth`, or a published name (a pre-trained encoder, no head). Whatever the user does not
give is read from the checkpoint: the classes from `head.weight`, the input size from `pos_embed`'s grid, the
pooling from `fc_norm` / `norm`. A flag that contradicts the checkpoint stops with one line.
"""
import dataclasses
import math
import os
from typing import Optional

from mindspore.nn.utils import no_init_parameters

import models_vit_mindspore
from util_mindspore.conversion import download_and_convert_weights
from util_mindspore.errors import WeightError
from util_mindspore.train_checkpoint import read_checkpoint
from util_mindspore.weights import load_arrays_into_model


@dataclasses.dataclass
class TrainedModel:
    model: object
    name: str  # registered model name
    input_size: int
    global_pool: bool
    class_names: Optional[list]  # None for an encoder without a head
    source: str


def _checkpoint_path(source, cache_dir):
    if source.endswith(".ckpt") and os.path.isfile(source):
        return source
    return download_and_convert_weights(source, cache_dir)


def _grid_input_size(weights, patch_size):
    """Input size of the square grid pos_embed was trained on (class token + grid**2 rows)."""
    if "pos_embed" not in weights:  # rotary position embeddings (DINOv3): any size
        return None
    rows = weights["pos_embed"].shape[1] - 1
    grid = math.isqrt(rows)
    return grid * patch_size if grid * grid == rows else None


def load_trained_model(source, model_name=None, nb_classes=None, input_size=None, global_pool=None,
                       with_head=True, cache_dir=None) -> TrainedModel:
    """Build `model_name` (default: the checkpoint's, else RETFound_mae) and load `source` into it, strictly.

    with_head=False builds the encoder only (embeddings): any checkpoint with the backbone will do; None: the head
    when the checkpoint has one.
    """
    if not source:
        raise WeightError("--resume is required: our .ckpt, an upstream checkpoint-best.pth or a published name")
    checkpoint = read_checkpoint(_checkpoint_path(source, cache_dir))
    weights, trained_args = checkpoint.weights, checkpoint.meta.get("args", {})
    model_name = model_name or checkpoint.meta.get("model") or "RETFound_mae"
    if model_name not in models_vit_mindspore.list_models():
        raise WeightError(f"--model {model_name} is not a registered model; choose one of: "
                          f"{', '.join(models_vit_mindspore.list_models())}")
    if "pos_embed" not in weights and "rope_embed.periods" not in weights:
        raise WeightError(f"{source} holds no ViT backbone (no pos_embed, no rope_embed)")
    patch_size = weights["patch_embed.proj.weight"].shape[-1] if "patch_embed.proj.weight" in weights else 16
    if input_size is None:
        input_size = (trained_args.get("input_size") or _grid_input_size(weights, patch_size)
                      or models_vit_mindspore.default_input_size(model_name))
    if global_pool is None:
        global_pool = trained_args.get("global_pool", "fc_norm.weight" in weights)
    head_classes = weights["head.weight"].shape[0] if "head.weight" in weights else None
    class_names = checkpoint.class_names
    if with_head is None:
        with_head = head_classes is not None
    if with_head:
        if head_classes is None:
            raise WeightError(f"{source} has no classifier head (a pre-trained encoder): export its embeddings "
                              "(--embeddings) or give a fine-tuned checkpoint")
        if nb_classes is not None and nb_classes != head_classes:
            raise WeightError(f"--nb_classes {nb_classes} does not fit {source}: its head has {head_classes} classes")
        if not class_names or len(class_names) != head_classes:
            class_names = [f"class_{i}" for i in range(head_classes)]
    else:
        class_names = None
    with no_init_parameters():  # every parameter comes from the checkpoint
        model = models_vit_mindspore.create_model(model_name, img_size=input_size,
                                                  num_classes=head_classes if with_head else 0,
                                                  global_pool=global_pool)
    report = load_arrays_into_model(model, weights, source=source, keep_head=True)
    if report.missing or report.reinitialized:
        raise WeightError(f"{source} does not fit --model {model_name}: missing "
                          f"{', '.join((report.missing + report.reinitialized)[:4])}")
    model.init_parameters_data()
    model.set_train(False)
    return TrainedModel(model, model_name, input_size, bool(global_pool), class_names, source)
