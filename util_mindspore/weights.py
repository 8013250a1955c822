"""Load converted weights into a model: strict about the backbone, loud about everything else.

Unlike upstream (which loads with strict=False and ignores what did not fit), every key is accounted for: a
missing or mis-shaped backbone parameter is an error, and the load report lists the rest. pos_embed is resized
to the model's grid with torch's bicubic kernel; a head that does not fit is re-initialised as upstream does.
"""
import dataclasses
import logging
import re
from typing import Optional

import mindspore as ms
import numpy as np

from util_mindspore.conversion import download_and_convert_weights, is_cache_entry
from util_mindspore.errors import WeightError
from util_mindspore.layers import trunc_normal_linear_
from util_mindspore.pos_embed import interpolate_pos_embed
from util_mindspore.train_checkpoint import read_checkpoint

logger = logging.getLogger("retfound.weights")

TIMM_HUB_ORG = "timm"

# Backbone parameters: a model parameter of these families must come from the checkpoint.
_BACKBONE = re.compile(r"^(cls_token|pos_embed|storage_tokens|patch_embed\.|blocks\.)")


_architectures_like = None  # (embed_dim, depth, patch_size) -> registered names; set by models_vit_mindspore


def set_architecture_guesser(fn):
    global _architectures_like
    _architectures_like = fn


def _looks_like(arrays):
    """'; the checkpoint is <size> (like <arch>)': what a checkpoint of another architecture holds."""
    proj = arrays.get("patch_embed.proj.weight")
    if proj is None or len(proj.shape) != 4:
        return ""
    depth = len({k.split(".")[1] for k in arrays if k.startswith("blocks.")})
    embed_dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    names = _architectures_like(embed_dim, depth, patch) if _architectures_like else []
    like = f" (like --model {' / '.join(names)})" if names else ""
    return f"; the checkpoint is a ViT of width {embed_dim}, {depth} blocks, patch {patch}{like}"


@dataclasses.dataclass
class LoadReport:
    source: str
    loaded: list
    missing: list
    unexpected: list
    interpolated: list
    reinitialized: list

    def __str__(self):
        def few(keys):
            return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "") if keys else "none"
        return (f"loaded {len(self.loaded)} tensors from {self.source}; missing: {few(self.missing)}; "
                f"unexpected: {few(self.unexpected)}; interpolated: {few(self.interpolated)}; "
                f"re-initialised: {few(self.reinitialized)}")


def load_arrays_into_model(model, arrays, source="state dict", keep_head=True, antialias_pos_embed=False,
                           head_init_std=2e-5):
    """Load name -> array into `model` by name; strict about the backbone, loud about everything else.
    `antialias_pos_embed`: resize pos_embed as timm does (see util_mindspore/pos_embed.py); a head the source
    does not fill is drawn trunc_normal(head_init_std)."""
    params = dict(model.parameters_and_names())
    arrays = dict(arrays)
    interpolated, reinitialized, mismatched = [], [], []
    if "pos_embed" in arrays and "pos_embed" in params and \
            tuple(arrays["pos_embed"].shape) != tuple(params["pos_embed"].shape):
        grid = model.patch_embed.grid_size
        old = arrays["pos_embed"].shape
        arrays["pos_embed"] = interpolate_pos_embed(arrays["pos_embed"], grid, antialias=antialias_pos_embed)
        interpolated.append(f"pos_embed {tuple(old)}->{tuple(arrays['pos_embed'].shape)}")
    head_keys = [k for k in params if k.startswith("head.")]
    head_fits = keep_head and head_keys and all(
        k in arrays and tuple(arrays[k].shape) == tuple(params[k].shape) for k in head_keys)
    for name, param in params.items():
        if name in arrays and tuple(arrays[name].shape) != tuple(param.shape) and not name.startswith("head."):
            mismatched.append(f"{name} {tuple(arrays[name].shape)} vs model {tuple(param.shape)}")
    missing = [n for n in params if n not in arrays]
    missing_backbone = [n for n in missing if _BACKBONE.match(n)]
    if mismatched or missing_backbone:
        problem = (f"mis-shaped: {'; '.join(mismatched[:3])}" if mismatched else
                   f"missing backbone keys: {', '.join(missing_backbone[:4])}")
        total = len(mismatched) + len(missing_backbone)
        raise WeightError(f"{source} does not fit this model ({total} keys): {problem}{_looks_like(arrays)}")
    loaded = []
    for name, param in params.items():
        if name.startswith("head.") and not head_fits:
            continue
        if name in arrays:
            param.set_data(ms.Tensor(np.ascontiguousarray(arrays[name]), dtype=param.dtype))
            loaded.append(name)
    if head_keys and not head_fits:  # a model with head.* parameters has a Linear head
        trunc_normal_linear_(model.head, std=head_init_std)
        reinitialized.extend(head_keys)
    unexpected = sorted(k for k in arrays if k not in params or (k.startswith("head.") and not head_fits))
    missing = [n for n in missing if n not in reinitialized]
    report = LoadReport(source, loaded, missing, unexpected, interpolated, reinitialized)
    logger.info("%s", report)
    return report


def load_pretrained_weights(model: ms.nn.Cell, name_or_path: str, cache_dir: Optional[str] = None,
                            token: Optional[str] = None, revision: Optional[str] = None,
                            force: bool = False) -> LoadReport:
    """Convert if needed, then load into `model`; returns the LoadReport (also logged).

    pos_embed is interpolated to the model's grid as upstream does; a `head` whose shape differs (or that
    the source lacks) is re-initialised trunc_normal(std=2e-5) as upstream does. A head that fits (an
    upstream fine-tuned checkpoint-best.pth) is kept, where upstream would re-initialise it: we keep what
    the user's checkpoint holds. Weights of HuggingFace's `timm/` organisation (DINOv2's LVD-142M) reach upstream
    through timm.create_model(pretrained=True), which resizes pos_embed with antialiasing and leaves the new head
    at timm's initialisation, trunc_normal(0.02) (upstream re-draws it only for --finetune): so do we, for them.
    """
    ckpt_path = download_and_convert_weights(name_or_path, cache_dir, token=token, revision=revision, force=force)
    try:
        checkpoint = read_checkpoint(ckpt_path)
    except WeightError as exc:
        if not is_cache_entry(ckpt_path, name_or_path):
            raise
        logger.warning("%s; converting %s again", exc, name_or_path)  # a damaged cache entry is re-made
        checkpoint = read_checkpoint(download_and_convert_weights(name_or_path, cache_dir, token=token,
                                                                  revision=revision, force=True))
    from_timm = str(name_or_path).startswith(TIMM_HUB_ORG + "/")
    return load_arrays_into_model(model, checkpoint.weights, source=str(name_or_path),
                                  antialias_pos_embed=from_timm, head_init_std=0.02 if from_timm else 2e-5)
