"""Layer-wise learning-rate decay (BEiT / upstream util/lr_decay.py), per parameter instead of per group.

The compiled optimizer takes one lr scale and one weight decay per parameter; `param_groups_lrd` also
returns upstream's groups (names only) for logging and tests.
"""
from typing import TYPE_CHECKING, Any, Collection, Dict, List, Tuple

if TYPE_CHECKING:
    from mindspore import nn


def get_layer_id_for_vit(name: str, num_layers: int) -> int:
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups_lrd(model: "nn.Cell", weight_decay: float = 0.05, no_weight_decay_list: Collection[str] = (),
                     layer_decay: float = 0.75) -> Tuple[List[float], List[float], Dict[str, Dict[str, Any]]]:
    """(lr_scales, weight_decays, groups) for model.trainable_params(), in that order.

    Upstream: num_layers = depth + 1; scale = layer_decay ** (num_layers - layer_id); no weight decay for
    1-D parameters and for no_weight_decay_list (cls_token, pos_embed).
    """
    num_layers = len(model.blocks) + 1
    lr_scales, weight_decays, groups = [], [], {}
    for param in model.trainable_params():
        name = param.name
        no_decay = len(param.shape) == 1 or name in no_weight_decay_list
        layer_id = get_layer_id_for_vit(name, num_layers)
        scale = layer_decay ** (num_layers - layer_id)
        decay = 0.0 if no_decay else weight_decay
        lr_scales.append(scale)
        weight_decays.append(decay)
        group = groups.setdefault(f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}",
                                  {"lr_scale": scale, "weight_decay": decay, "params": []})
        group["params"].append(name)
    return lr_scales, weight_decays, groups


def param_groups_weight_decay(model: "nn.Cell", weight_decay: float = 0.05,
                              no_weight_decay_list: Collection[str] = ()) -> Tuple[List[float], List[float]]:
    """(lr_scales, weight_decays) for model.trainable_params(): timm's add_weight_decay, which upstream's MAE
    pre-training uses: no decay for 1-D parameters (norms, biases) and names ending in `.bias`, every lr scale 1."""
    decays = [0.0 if len(p.shape) == 1 or p.name.endswith(".bias") or p.name in no_weight_decay_list else weight_decay
              for p in model.trainable_params()]
    return [1.0] * len(decays), decays
