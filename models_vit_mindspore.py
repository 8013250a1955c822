"""RETFound's models under upstream models_vit.py's names, for MindSpore: `VisionTransformer`, `RETFound_mae`,
`RETFound_dinov2`, `Dinov2` and `Dinov3`, and `create_model` for every registered name.

The cells live in util_mindspore/models/ (vit.py, dinov3.py, mae.py); what each name is, its size, default input
size and weights, is one row of util_mindspore/registry.py. Parameter names are upstream's PyTorch keys, so a
converted checkpoint loads by name.

    import models_vit_mindspore as M
    model = M.create_model("RETFound_mae", pretrained="RETFound_mae_meh", num_classes=5)
    model = M.RETFound_mae(img_size=224, num_classes=5, drop_path_rate=0.2, global_pool=True)  # upstream's call

Deliberate difference: upstream's `RETFound_dinov2` and `Dinov2` download timm's LVD-142M weights as they build;
here every function builds the architecture only, and weights come from `create_model(..., pretrained=...)` (what
main_finetune_mindspore.py does, with the row's default weights when there is no --finetune).
"""
import argparse
from typing import Optional

from util_mindspore.models.dinov3 import DinoVisionTransformer
from util_mindspore.models.factory import TrainedModel, create_model, load_trained_model, num_params
from util_mindspore.models.vit import VisionTransformer
from util_mindspore.registry import list_models, resolve_model_name

__all__ = ["VisionTransformer", "DinoVisionTransformer", "RETFound_mae", "RETFound_dinov2", "Dinov2", "Dinov3",
           "create_model", "load_trained_model", "TrainedModel", "list_models", "resolve_model_name", "num_params"]


def RETFound_mae(**kwargs: object) -> VisionTransformer:
    """upstream models_vit.RETFound_mae(img_size, num_classes, drop_path_rate, global_pool): ViT-L/16."""
    return create_model("RETFound_mae", **kwargs)


def RETFound_dinov2(args: Optional[argparse.Namespace] = None, **kwargs: object) -> VisionTransformer:
    """upstream models_vit.RETFound_dinov2(args, num_classes, drop_path_rate): timm's vit_large_patch14_dinov2 at
    224 px (LayerScale, class token)."""
    return create_model("RETFound_dinov2", **kwargs)


def Dinov2(args: argparse.Namespace, **kwargs: object) -> VisionTransformer:
    """upstream models_vit.Dinov2(args, num_classes, drop_path_rate): the DINOv2 size `args.model_arch` names
    (dinov2_vits14, _vitb14, _vitl14, _vitg14) at 224 px."""
    return create_model(resolve_model_name("Dinov2", args.model_arch), **kwargs)


def Dinov3(args: argparse.Namespace, **kwargs: object) -> DinoVisionTransformer:
    """upstream models_vit.Dinov3(args): Meta's DINOv3 size `args.model_arch` with a head of `args.nb_classes`
    (trunc_normal 2e-5). As upstream, whose torch.hub model takes none of them, `drop_path_rate` and
    `global_pool` are not used."""
    kwargs.pop("drop_path_rate", None)
    kwargs.pop("global_pool", None)
    kwargs.setdefault("num_classes", args.nb_classes)
    return create_model(resolve_model_name("Dinov3", args.model_arch), **kwargs)
