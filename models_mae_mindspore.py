"""The masked autoencoder RETFound was pre-trained with, under upstream models_mae.py's names (RETFound_MAE before
February 2025, after facebookresearch/mae), for MindSpore: `MaskedAutoencoderViT` and the `mae_vit_*` builders.

    import models_mae_mindspore as models_mae
    model = models_mae.__dict__["mae_vit_large_patch16"](norm_pix_loss=True)     # as upstream's main_pretrain.py

The cell lives in util_mindspore/models/mae.py; each size is a row of util_mindspore/registry.py (a 512-d, 8-block
decoder). `model(imgs, mask_ratio, noise)` returns (loss, pred, mask) as upstream's forward does.
"""
from util_mindspore.models.factory import create_model
from util_mindspore.models.mae import MaskedAutoencoderViT

__all__ = ["MaskedAutoencoderViT", "mae_vit_base_patch16_dec512d8b", "mae_vit_large_patch16_dec512d8b",
           "mae_vit_huge_patch14_dec512d8b", "mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14"]


def mae_vit_base_patch16_dec512d8b(**kwargs: object) -> MaskedAutoencoderViT:
    """MAE ViT-B/16 (upstream's keyword arguments: img_size, norm_pix_loss)."""
    return create_model("mae_vit_base_patch16", **kwargs)


def mae_vit_large_patch16_dec512d8b(**kwargs: object) -> MaskedAutoencoderViT:
    """MAE ViT-L/16, RETFound's pre-training model."""
    return create_model("mae_vit_large_patch16", **kwargs)


def mae_vit_huge_patch14_dec512d8b(**kwargs: object) -> MaskedAutoencoderViT:
    """MAE ViT-H/14."""
    return create_model("mae_vit_huge_patch14", **kwargs)


# upstream's recommended names: decoder 512-d, 8 blocks
mae_vit_base_patch16 = mae_vit_base_patch16_dec512d8b
mae_vit_large_patch16 = mae_vit_large_patch16_dec512d8b
mae_vit_huge_patch14 = mae_vit_huge_patch14_dec512d8b
