"""The published checkpoint layouts, as pure dict -> dict adapters (timm's checkpoint_filter_fn style).

One small function per source family; reading files, downloading and loading live elsewhere.
"""
import re
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from util_mindspore.checkpoints import torch_pickle
from util_mindspore.errors import WeightError

# DINO's training heads and loss buffers: never used here, dropped at conversion (the teacher's dino_head alone
# is tens of MB).
_DROPPED = re.compile(r"^(dino_head\.|ibot_head\.|dino_loss|ibot_patch_loss)")
# Parts of a pre-training checkpoint a classifier does not use: the MAE decoder and the masking tokens (kept by the
# conversion, for continued MAE pre-training and for DINOv3, whose cells hold Meta's mask_token).
_PRETRAINING_ONLY = re.compile(r"^(decoder_|mask_token$|local_cls_norm\.)")


def is_pretraining_only(key: str) -> bool:
    """Whether a checkpoint key belongs to pre-training only (the load report lists these apart)."""
    return bool(_PRETRAINING_ONLY.match(key) or _DROPPED.match(key))


def _is_tensor(value: object) -> bool:
    return isinstance(value, (np.ndarray, torch_pickle.LazyTensor)) or type(value).__name__ in ("Tensor", "Parameter")


def _select_state_dict(obj: object) -> Tuple[str, Dict[str, Any]]:
    """Pick the weights inside a checkpoint: model (MAE, fine-tuned), teacher (DINOv2), state_dict, module, root."""
    if isinstance(obj, dict):
        for key in ("model", "teacher", "state_dict", "module", "model_ema"):
            if key in obj and isinstance(obj[key], dict):
                return key, obj[key]
        return "root", obj
    raise WeightError(f"checkpoint holds a {type(obj).__name__}, not a dict of weights")


def _strip_prefixes(sd: Mapping[str, Any]) -> Dict[str, Any]:
    out = {}
    for key, value in sd.items():
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _rename_swiglu(sd: Dict[str, Any]) -> Dict[str, Any]:
    """Meta's DINOv2 SwiGLU names (`w12`, `w3`) renamed fc1/fc2 as upstream renames them. Upstream renames `w3`
    in every checkpoint; DINOv3's SwiGLU (`w1`, `w2`, `w3`) keeps its names here (deliberate: upstream's rename
    leaves those models with a random `w3`)."""
    if not any(".mlp.w12." in k for k in sd):
        return sd
    return {k.replace("mlp.w12.", "mlp.fc1.").replace("mlp.w3.", "mlp.fc2."): v for k, v in sd.items()}


def _convert_mae(sd: Mapping[str, Any]) -> Dict[str, Any]:
    """MAE pretraining (encoder + decoder), fine-tuned, Meta DINOv2/DINOv3 and timm checkpoints: every tensor but
    DINO's heads."""
    return _rename_swiglu({k: v for k, v in sd.items() if not _DROPPED.match(k)})


def _convert_dinov2(sd: Mapping[str, Any]) -> Dict[str, Any]:
    """DINOv2 teacher: drop heads, un-chunk `blocks.<chunk>.<i>.`, rename SwiGLU w12/w3 as upstream does."""
    out = {}
    for key, value in sd.items():
        if _DROPPED.match(key):
            continue
        out[re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)] = value
    return _rename_swiglu(out)


def source_args(obj: object) -> Dict[str, object]:
    """The training arguments a checkpoint carries (upstream saves its argparse.Namespace as 'args'), as a dict of
    JSON values: what a reader needs to rebuild the model (model, model_arch, input_size, nb_classes, ...)."""
    args = obj.get("args") if isinstance(obj, dict) else None
    values = vars(args) if hasattr(args, "__dict__") else args if isinstance(args, dict) else {}
    return {str(k): v for k, v in values.items() if isinstance(v, (str, int, float, bool, type(None)))}


def checkpoint_filter_fn(obj: object) -> Tuple[Dict[str, Any], str]:
    """Published checkpoint object -> (flat dict name -> tensor, layout name). The one place for layout rules."""
    container, sd = _select_state_dict(obj)
    sd = {k: v for k, v in sd.items() if _is_tensor(v)}
    if not sd:
        raise WeightError(f"checkpoint '{container}' holds no tensors")
    dinov2 = container == "teacher" or any(k.startswith("backbone.") for k in sd) or \
        any(k.startswith(("dino_head.", "ibot_head.")) for k in sd)
    sd = _strip_prefixes(sd)
    if dinov2:
        return _convert_dinov2(sd), "dinov2"
    return _convert_mae(sd), ("finetuned" if "head.weight" in sd else "mae")
