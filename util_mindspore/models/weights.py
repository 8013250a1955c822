"""Load converted weights into a model: strict about the backbone, loud about everything else.

Unlike upstream (which loads with strict=False and ignores what did not fit), every key is accounted for: a
missing or mis-shaped backbone parameter is an error, and the load report lists the rest. How a source's position
embedding is resized and how a head it lacks is drawn follow the model's configuration
(util_mindspore/registry.py): upstream's --finetune rules, or those of the model's default weights.
"""
import dataclasses
import logging
import re
from typing import Dict, List, Optional, Union

import mindspore as ms
import numpy as np

from util_mindspore.checkpoints.conversion import download_and_convert_weights, is_cache_entry
from util_mindspore.checkpoints.source_layouts import is_pretraining_only
from util_mindspore.checkpoints.train_checkpoint import read_checkpoint
from util_mindspore.errors import WeightError
from util_mindspore.models.layers import Linear, trunc_normal_linear_
from util_mindspore.models.pos_embed import interpolate_pos_embed
from util_mindspore.registry import FINETUNE, WeightsSource, describe_vit

logger = logging.getLogger("retfound.weights")

# Backbone parameters: a model parameter of these families must come from the checkpoint.
_BACKBONE = re.compile(r"^(cls_token|pos_embed|storage_tokens|patch_embed\.|blocks\.)")
POSITION_TABLES = ("pos_embed", "decoder_pos_embed")  # resized to the model's grid when the source's differs


def _looks_like(arrays: Dict[str, np.ndarray]) -> str:
    """'; the checkpoint is <size> (like <arch>)': what a checkpoint of another architecture holds."""
    proj = arrays.get("patch_embed.proj.weight")
    if proj is None or len(proj.shape) != 4:
        return ""
    depth = len({k.split(".")[1] for k in arrays if k.startswith("blocks.")})
    return f"; the checkpoint is {describe_vit(int(proj.shape[0]), depth, int(proj.shape[-1]))}"


@dataclasses.dataclass
class LoadReport:
    """What a load did, key by key: the report printed after every load, and what callers check."""

    source: str
    loaded: list
    missing: list
    unexpected: list
    interpolated: list
    reinitialized: list
    unused_pretraining: list = dataclasses.field(default_factory=list)  # MAE decoder, DINO heads, mask tokens
    verified_constants: list = dataclasses.field(default_factory=list)  # DINOv3's bias_mask buffers

    def __str__(self) -> str:
        def few(keys: list) -> str:
            return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "") if keys else "none"
        unused = f"; pre-training parts not used: {len(self.unused_pretraining)} tensors" \
            if self.unused_pretraining else ""
        return (f"loaded {len(self.loaded)} tensors from {self.source}; missing: {few(self.missing)}; "
                f"unexpected: {few(self.unexpected)}; interpolated: {few(self.interpolated)}; "
                f"re-initialised: {few(self.reinitialized)}{unused}")


def _required(model: ms.nn.Cell, name: str) -> bool:
    """Whether the model's parameter `name` must come from the checkpoint: the backbone; for an MAE every
    parameter (encoder and decoder: continued pre-training needs both)."""
    return bool(_BACKBONE.match(name)) or model.config.architecture == "mae"


def _masked_bias_constants(model: ms.nn.Cell) -> Dict[str, np.ndarray]:
    """Buffers of Meta's checkpoints our cells hold as constants (LinearKMaskedBias's `bias_mask`)."""
    return {f"{name}.bias_mask": cell.bias_mask.asnumpy() for name, cell in model.cells_and_names()
            if isinstance(cell, Linear) and cell.bias_mask is not None}


def _check_constants(model: ms.nn.Cell, arrays: Dict[str, np.ndarray], source: str) -> List[str]:
    """The checkpoint's copies of our constant buffers must hold the same values; returns their names."""
    constants = _masked_bias_constants(model)
    found = sorted(k for k in arrays if k in constants)
    for key in found:
        value = np.asarray(arrays[key], np.float32)
        if value.shape != constants[key].shape or not np.array_equal(value, constants[key]):
            raise WeightError(f"{source} does not fit this model: {key} is not DINOv3's key-bias mask")
    return found


def load_arrays_into_model(model: ms.nn.Cell, arrays: Dict[str, np.ndarray], source: str = "state dict",
                           keep_head: bool = True, rules: WeightsSource = FINETUNE) -> LoadReport:
    """Load name -> array into `model` by name; strict about the backbone, loud about everything else.

    Args:
        model: a model of models_vit_mindspore.create_model (it carries its configuration).
        arrays: parameter name -> array, PyTorch names (a converted checkpoint's weights).
        source: how the report and errors name the source.
        keep_head: keep a head of the model's shape from the source (False: always draw a new one).
        rules: how a position embedding of another grid is resized and how a new head is drawn.

    Returns:
        The LoadReport (also logged).
    """
    params = dict(model.parameters_and_names())
    arrays = dict(arrays)
    interpolated, reinitialized, mismatched = [], [], []
    for key in POSITION_TABLES:
        if key in arrays and key in params and tuple(arrays[key].shape) != tuple(params[key].shape):
            old = tuple(arrays[key].shape)
            try:
                arrays[key] = interpolate_pos_embed(arrays[key], model.patch_embed.grid_size,
                                                    antialias=rules.pos_embed_resize == "bicubic_antialias")
            except ValueError as exc:
                raise WeightError(f"{source} does not fit this model: {key} {old}: {exc}{_looks_like(arrays)}") \
                    from exc
            interpolated.append(f"{key} {old}->{tuple(arrays[key].shape)}")
    constants = _check_constants(model, arrays, source)
    head_keys = [k for k in params if k.startswith("head.")]
    head_fits = keep_head and head_keys and all(
        k in arrays and tuple(arrays[k].shape) == tuple(params[k].shape) for k in head_keys)
    for name, param in params.items():
        if name in arrays and tuple(arrays[name].shape) != tuple(param.shape) and not name.startswith("head."):
            mismatched.append(f"{name} {tuple(arrays[name].shape)} vs model {tuple(param.shape)}")
    missing = [n for n in params if n not in arrays]
    missing_required = [n for n in missing if _required(model, n)]
    if mismatched or missing_required:
        problem = (f"mis-shaped: {'; '.join(mismatched[:3])}" if mismatched else
                   f"missing backbone keys: {', '.join(missing_required[:4])}")
        total = len(mismatched) + len(missing_required)
        raise WeightError(f"{source} does not fit this model ({total} keys): {problem}{_looks_like(arrays)}")
    loaded = []
    for name, param in params.items():
        if name.startswith("head.") and not head_fits:
            continue
        if name in arrays:
            param.set_data(ms.Tensor(np.ascontiguousarray(arrays[name]), dtype=param.dtype))
            loaded.append(name)
    if head_keys and not head_fits:  # a model with head.* parameters has a Linear head
        trunc_normal_linear_(model.head, std=rules.head_init_std)
        reinitialized.extend(head_keys)
    extra = [k for k in arrays if k not in constants and
             (k not in params or (k.startswith("head.") and not head_fits))]
    unused = sorted(k for k in extra if is_pretraining_only(k))
    unexpected = sorted(k for k in extra if not is_pretraining_only(k))
    missing = [n for n in missing if n not in reinitialized]
    report = LoadReport(source, loaded, missing, unexpected, interpolated, reinitialized, unused, constants)
    logger.info("%s", report)
    return report


def load_pretrained_weights(model: ms.nn.Cell, source: Union[str, WeightsSource], cache_dir: Optional[str] = None,
                            token: Optional[str] = None, revision: Optional[str] = None,
                            force: bool = False) -> LoadReport:
    """Convert if needed, then load a checkpoint into `model` as upstream loads it.

    Args:
        model: a model of models_vit_mindspore.create_model.
        source: what --finetune takes (a published name, `org/repo[/file]`, a .pth / .safetensors / .ckpt file),
            loaded by upstream's --finetune rules (pos_embed resized without antialias, a new head drawn
            trunc_normal(2e-5)); or a WeightsSource (a configuration's default weights), loaded by its own rules.
        cache_dir: the converted-weights cache (default $RETFOUND_MS_CACHE or ~/.cache/retfound_mindspore).
        token: HuggingFace token (default: HF_TOKEN or the stored login).
        revision: hub revision (branch, tag or commit).
        force: convert again even when the cache holds a valid conversion.

    Returns:
        The LoadReport (also logged). A head that fits (an upstream fine-tuned checkpoint-best.pth) is kept, where
        upstream would re-draw it: we keep what the user's checkpoint holds.
    """
    rules = source if isinstance(source, WeightsSource) else model.config.finetune
    name = rules.name if isinstance(source, WeightsSource) else str(source)
    ckpt_path = download_and_convert_weights(name, cache_dir, token=token, revision=revision, force=force)
    try:
        checkpoint = read_checkpoint(ckpt_path)
    except WeightError as exc:
        if not is_cache_entry(ckpt_path, name):
            raise
        logger.warning("%s; converting %s again", exc, name)  # a damaged cache entry is re-made
        checkpoint = read_checkpoint(download_and_convert_weights(name, cache_dir, token=token, revision=revision,
                                                                  force=True))
    return load_arrays_into_model(model, checkpoint.weights, source=name, rules=rules)
