"""What a checkpoint says about the model it holds, for inference (export, prediction, embeddings).

`--resume` may be our .ckpt (which stores the model name, class names and the training arguments), an upstream
fine-tuned `checkpoint-best.pth` of any family (whose `args` name the model and input size), one of our MAE
pre-training checkpoints, or a published name (a pre-trained encoder, no head). Whatever the user does not give is
read from the checkpoint: the model from its arguments (or its tensors' shapes), the classes from `head.weight`,
the input size from its arguments or `pos_embed`'s grid, the pooling from `fc_norm` / `norm`. A flag that
contradicts a fine-tuned checkpoint stops with one line. Building the model is models_vit_mindspore's job
(`load_trained_model`).
"""
import dataclasses
import math
from typing import Dict, List, Optional

import numpy as np

from util_mindspore.checkpoints.conversion import checkpoint_file
from util_mindspore.checkpoints.train_checkpoint import TrainingCheckpoint, read_checkpoint
from util_mindspore.errors import WeightError
from util_mindspore.registry import (
    MODEL_CONFIGS,
    ModelConfig,
    UnknownModelError,
    describe_embedding,
    describe_vit,
    encoder_config,
    get_config,
    models_of_shape,
    published_weights,
    resolve_model_name,
)


@dataclasses.dataclass
class TrainedSpec:
    """A checkpoint's model, settings and weights, ready to build."""

    name: str  # the registered classifier (or encoder) to build
    input_size: int
    global_pool: bool
    class_names: Optional[List[str]]  # None for an encoder without a head
    weights: Dict[str, np.ndarray]
    source: str
    may_stay_initial: List[str]  # parameters the checkpoint may lack and that keep their initial values
    embedding: str  # what forward_embedding gives, in words (written into outputs' metadata)

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0


def _grid_input_size(weights: Dict[str, np.ndarray], patch_size: int) -> Optional[int]:
    """Input size of the square grid pos_embed was trained on (class token + grid**2 rows)."""
    if "pos_embed" not in weights:  # rotary position embeddings (DINOv3): any size
        return None
    rows = weights["pos_embed"].shape[1] - 1
    grid = math.isqrt(rows)
    return grid * patch_size if grid * grid == rows else None


def model_of_checkpoint(weights: Dict[str, np.ndarray], source: str, architecture: Optional[str] = None) -> str:
    """The registered model a checkpoint's tensors describe, when nothing names it: its family from the keys
    (storage tokens: DINOv3; LayerScale: DINOv2), its size from the patch projection and the blocks; among rows of
    one shape, the one the table reads unnamed checkpoints as. One line naming the choices when the table cannot
    tell, or when no row fits."""
    proj = weights.get("patch_embed.proj.weight")
    if proj is None or len(proj.shape) != 4:
        raise WeightError(f"{source} holds no ViT backbone (no patch_embed.proj.weight): give --model")
    depth = len({k.split(".")[1] for k in weights if k.startswith("blocks.")})
    storage = int(weights["storage_tokens"].shape[1]) if "storage_tokens" in weights else 0
    shape = (int(proj.shape[0]), depth, int(proj.shape[-1]))
    names = models_of_shape(*shape, storage, "blocks.0.ls1.gamma" in weights, architecture)
    if not names:
        raise WeightError(f"{source} holds {describe_vit(*shape)}, which no registered "
                          f"{'MAE ' if architecture == 'mae' else ''}model builds: give --model")
    if len(names) > 1 and not MODEL_CONFIGS[names[0]].reads_unnamed:
        raise WeightError(f"{source} could be any of {', '.join(names)}: give --model")
    return names[0]


def _model_name(explicit: Optional[str], checkpoint: TrainingCheckpoint, source: str) -> str:
    """--model, else what the checkpoint names (ours, or upstream's args), the published name's model, the shapes."""
    if explicit:
        return explicit
    upstream = checkpoint.meta.get("source_args", {})
    for name, arch in ((checkpoint.meta.get("model"), None), (upstream.get("model"), upstream.get("model_arch"))):
        if name:
            try:
                resolved = resolve_model_name(name, arch)
                get_config(resolved)
                return resolved
            except UnknownModelError:
                continue  # e.g. upstream's default 'vit_large_patch16': fall through to the shapes
    return published_weights().get(str(source)) or model_of_checkpoint(checkpoint.weights, source)


def read_trained_checkpoint(source: str, model_name: Optional[str] = None, nb_classes: Optional[int] = None,
                            input_size: Optional[int] = None, global_pool: Optional[bool] = None,
                            with_head: Optional[bool] = True, cache_dir: Optional[str] = None) -> TrainedSpec:
    """The model and settings a checkpoint holds, checked against the flags given.

    Args:
        source: our .ckpt, an upstream .pth / .safetensors, or a published name (what --resume takes).
        model_name: --model (a registered name); default: the checkpoint's.
        nb_classes: --nb_classes; must equal the head's classes when given.
        input_size: --input_size; for a fine-tuned checkpoint it must equal the size it was trained at.
        global_pool: --global_pool (True) / --cls_token (False); default: what the checkpoint holds.
        with_head: True: a classifier (refused without a head); False: the encoder only (embeddings);
            None: the head when the checkpoint has one.
        cache_dir: the converted-weights cache.

    Returns:
        A TrainedSpec (models_vit_mindspore.load_trained_model builds it).
    """
    if not source:
        raise WeightError("--resume is required: our .ckpt, an upstream checkpoint-best.pth or a published name")
    checkpoint = read_checkpoint(checkpoint_file(source, cache_dir))
    weights = checkpoint.weights
    trained_args = {**checkpoint.meta.get("source_args", {}), **checkpoint.meta.get("args", {})}
    name = _model_name(model_name, checkpoint, source)
    config = get_config(name)
    if not config.is_classifier:  # an MAE pre-training checkpoint: its encoder
        config = encoder_config(config)
        name = config.name
    if "patch_embed.proj.weight" not in weights:
        raise WeightError(f"{source} holds no ViT backbone (no patch_embed.proj.weight)")
    _check_architecture(source, config, weights)
    head_classes = int(weights["head.weight"].shape[0]) if "head.weight" in weights else None
    finetuned = head_classes is not None
    known_size = trained_args.get("input_size") or _grid_input_size(weights, config.patch_size)
    if input_size is not None and known_size and finetuned and int(input_size) != int(known_size):
        raise WeightError(f"--input_size {input_size} does not fit {source}: it was fine-tuned at {known_size} px "
                          "(leave --input_size out)")
    input_size = int(input_size or known_size or config.default_input_size)
    if with_head is None:
        with_head = finetuned
    has_fc_norm, has_norm = "fc_norm.weight" in weights, "norm.weight" in weights
    stored_pool = trained_args.get("global_pool") if "global_pool" in trained_args else (
        True if has_fc_norm else False if has_norm and finetuned else None)
    if config.global_pool is None:  # DINOv2 / DINOv3: the class token, whatever the flag
        pool = False
    elif global_pool is not None:
        pool = bool(global_pool)
        if finetuned and with_head and stored_pool is not None and pool != stored_pool:
            raise WeightError(f"--{'global_pool' if pool else 'cls_token'} does not fit {source}: it was "
                              f"fine-tuned with {'global pooling (fc_norm)' if stored_pool else 'the class token'}")
    else:
        pool = bool(config.global_pool if stored_pool is None else stored_pool)
    class_names = None
    if with_head:
        if head_classes is None:
            raise WeightError(f"{source} has no classifier head (a pre-trained encoder): export its embeddings "
                              "(--embeddings) or give a fine-tuned checkpoint")
        if nb_classes is not None and nb_classes != head_classes:
            raise WeightError(f"--nb_classes {nb_classes} does not fit {source}: its head has {head_classes} classes")
        class_names = checkpoint.class_names
        if not class_names or len(class_names) != head_classes:
            class_names = [f"class_{i}" for i in range(head_classes)]
    may_stay_initial = []
    embedding = describe_embedding(config, pool)
    if pool and not has_fc_norm and not with_head:
        # upstream's latent_feature.ipynb: RETFound_mae(global_pool=True) loads a published encoder non-strictly,
        # so fc_norm keeps its initial weight 1 / bias 0
        may_stay_initial = ["fc_norm.weight", "fc_norm.bias"]
        embedding += ", fc_norm at its initial values (weight 1, bias 0): the checkpoint has none, as " \
                     "latent_feature.ipynb leaves it"
    return TrainedSpec(name, input_size, pool, class_names, weights, str(source), may_stay_initial, embedding)


def _check_architecture(source: str, config: ModelConfig, weights: Dict[str, np.ndarray]) -> None:
    """A checkpoint of another size or family stops here, naming what it fits, before a model is built."""
    proj = weights["patch_embed.proj.weight"]
    depth = len({k.split(".")[1] for k in weights if k.startswith("blocks.")})
    held = (int(proj.shape[0]), depth, int(proj.shape[-1]))
    if held != (config.embed_dim, config.depth, config.patch_size):
        raise WeightError(f"{source} does not fit --model {config.name} (width {config.embed_dim}, {config.depth} "
                          f"blocks, patch {config.patch_size}): it holds {describe_vit(*held)}")
