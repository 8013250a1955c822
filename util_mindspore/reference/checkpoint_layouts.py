"""Checkpoints written in the exact layouts RETFound publishes, and upstream's loading procedure in torch.

Only tests use this: it needs torch. See ../shared/reference/retfound-facts.md for the layouts.
"""
import argparse
from typing import TYPE_CHECKING, Any, Dict, Optional

import torch
import torch.nn.functional as F

from util_mindspore.reference.torch_models import UpstreamMAE, create_reference, randomize_

if TYPE_CHECKING:
    import numpy as np


def _decoder(sd: Dict[str, torch.Tensor], patch: int, dec_dim: int = 32,
             positions: int = 197) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    sd["mask_token"] = torch.randn(1, 1, dec_dim, generator=g)
    sd["decoder_pos_embed"] = torch.randn(1, positions, dec_dim, generator=g)
    sd["decoder_embed.weight"] = torch.randn(dec_dim, sd["cls_token"].shape[-1], generator=g)
    sd["decoder_embed.bias"] = torch.randn(dec_dim, generator=g)
    sd["decoder_blocks.0.norm1.weight"] = torch.randn(dec_dim, generator=g)
    sd["decoder_blocks.0.attn.qkv.weight"] = torch.randn(3 * dec_dim, dec_dim, generator=g)
    sd["decoder_norm.weight"] = torch.randn(dec_dim, generator=g)
    sd["decoder_pred.weight"] = torch.randn(patch * patch * 3, dec_dim, generator=g)
    return sd


def mae_pretrained(path: str, name: str = "vit_tiny_patch16", seed: int = 11, **size: int) -> Dict[str, torch.Tensor]:
    """A RETFound-MAE pretraining checkpoint: encoder with norm.*, 14x14 grid, decoder, optimizer, args."""
    encoder = randomize_(create_reference(name, img_size=224, num_classes=0, global_pool=False, **size), seed)
    sd = {k: v.clone() for k, v in encoder.state_dict().items()}
    sd = _decoder(sd, patch=16)
    first = sd["patch_embed.proj.weight"]
    torch.save({
        "model": sd,
        "optimizer": {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(first)}},
                      "param_groups": [{"lr": 1.5e-4, "weight_decay": 0.05, "params": [0]}]},
        "epoch": 799,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                   "_growth_tracker": 17},
        "args": argparse.Namespace(model="mae_vit_large_patch16", input_size=224, mask_ratio=0.75, norm_pix_loss=True,
                                   batch_size=64, data_path="/data/retina", seed=0),
    }, path)
    return sd


def dinov2_pretrained(path: str, chunked: bool = False, depth: int = 2, seed: int = 12) -> Dict[str, torch.Tensor]:
    """A RETFound-DINOv2 teacher: backbone. prefix, 37x37 grid (518 px), mask token, DINO/iBOT heads."""
    backbone = randomize_(create_reference("RETFound_dinov2", img_size=518, num_classes=0, depth=depth), seed)
    teacher = {}
    per_chunk = max(1, depth // 4) if chunked else None
    for key, value in backbone.state_dict().items():
        if chunked and key.startswith("blocks."):
            index = int(key.split(".")[1])
            key = f"blocks.{index // per_chunk}.{key[len('blocks.'):]}"
        teacher["backbone." + key] = value.clone()
    g = torch.Generator().manual_seed(13)
    teacher["backbone.mask_token"] = torch.randn(1, 1024, generator=g)
    teacher["dino_head.mlp.0.weight"] = torch.randn(64, 1024, generator=g)
    teacher["dino_head.last_layer.weight_g"] = torch.randn(1, 64, generator=g)
    teacher["ibot_head.mlp.0.weight"] = torch.randn(64, 1024, generator=g)
    torch.save({"teacher": teacher}, path)
    return teacher


def finetuned(path: str, name: str = "vit_tiny_patch16", num_classes: int = 3, img_size: int = 224, seed: int = 14,
              **size: int) -> torch.nn.Module:
    """An upstream fine-tuned checkpoint-best.pth: fc_norm + head, optimizer, scaler, args."""
    model = randomize_(create_reference(name, img_size=img_size, num_classes=num_classes, global_pool=True, **size),
                       seed)
    torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 42,
                "scaler": {"scale": 1024.0}, "args": argparse.Namespace(nb_classes=num_classes, model=name)}, path)
    return model


def upstream_load(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """Upstream main_finetune.py's --finetune procedure (torch side), without its head re-initialisation."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    # Dinov2 / Dinov3: a raw state dict (Meta's *_pretrain.pth)
    sd = checkpoint["teacher"] if "teacher" in checkpoint else checkpoint.get("model", checkpoint)
    sd = {k.replace("backbone.", ""): v for k, v in sd.items()}
    sd = {k.replace("mlp.w12.", "mlp.fc1.").replace("mlp.w3.", "mlp.fc2."): v for k, v in sd.items()}
    state = model.state_dict()
    for k in ("head.weight", "head.bias"):
        if k in sd and sd[k].shape != state[k].shape:
            del sd[k]
    pos = sd["pos_embed"]
    grid_new = model.patch_embed.grid_size[0]
    grid_old = int((pos.shape[1] - 1) ** 0.5)
    if grid_old != grid_new:
        tokens = pos[:, 1:].reshape(1, grid_old, grid_old, -1).permute(0, 3, 1, 2)
        tokens = F.interpolate(tokens, size=(grid_new, grid_new), mode="bicubic", align_corners=False)
        sd["pos_embed"] = torch.cat((pos[:, :1], tokens.permute(0, 2, 3, 1).flatten(1, 2)), dim=1)
    model.load_state_dict(sd, strict=False)
    return model.eval()


def timm_dinov2_lvd142m(path: str, depth: int = 2, seed: int = 15, name: str = "RETFound_dinov2") -> torch.nn.Module:
    """timm's HuggingFace `timm/vit_<size>_patch14_dinov2.lvd142m` model.safetensors: timm key names, no head,
    37x37 grid (518 px)."""
    from safetensors.torch import save_file
    model = randomize_(create_reference(name, img_size=518, num_classes=0, depth=depth), seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return model


def meta_dinov2(path: str, name: str, depth: Optional[int] = None, seed: int = 16) -> torch.nn.Module:
    """Meta's `dinov2_<arch>_pretrain.pth`: a raw state dict, 37x37 grid, mask_token, SwiGLU as w12/w3 (ViT-g)."""
    model = randomize_(create_reference(name, img_size=518, num_classes=0, depth=depth), seed)
    sd = {k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.") if name.endswith("g14") else k: v.clone()
          for k, v in model.state_dict().items()}
    sd["mask_token"] = torch.zeros(1, model.embed_dim)
    torch.save(sd, path)
    return model


def meta_dinov3(path: str, name: str, depth: Optional[int] = None, seed: int = 17) -> Dict[str, torch.Tensor]:
    """Meta's `dinov3_<arch>_pretrain.pth` (facebookresearch/dinov3): a raw state dict with the model's own keys,
    the `bias_mask` buffers (key part 0) and the RoPE `periods`; random values, a non-zero key bias (masked)."""
    sd = meta_dinov3_state(name, depth, seed)
    torch.save(sd, path)
    return sd


def meta_dinov3_state(name: str, depth: Optional[int] = None, seed: int = 17) -> Dict[str, torch.Tensor]:
    """The state dict of meta_dinov3, not written."""
    from mindspore.nn.utils import no_init_parameters

    from util_mindspore.models.factory import create_model
    with no_init_parameters():
        model = create_model(name, img_size=224, num_classes=0, **({} if depth is None else {"depth": depth}))
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, param in model.parameters_and_names():
        shape = tuple(param.shape)
        if key.endswith("gamma"):
            value = torch.rand(shape, generator=g) * 0.45 + 0.05
        elif "norm" in key and key.endswith("weight"):
            value = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif key == "rope_embed.periods":
            half = model.embed_dim // model.blocks[0].attn.num_heads // 2
            value = 100.0 ** (2 * torch.arange(half // 2, dtype=torch.float32) / half)
        elif key == "mask_token":
            value = torch.zeros(shape)
        else:
            value = 0.05 * torch.randn(shape, generator=g)
        sd[key] = value
        if key.endswith("attn.qkv.bias"):
            mask = torch.ones(shape)
            mask[shape[0] // 3:2 * shape[0] // 3] = 0
            sd[key.replace(".bias", ".bias_mask")] = mask
    return sd


def upstream_args(**values: Any) -> argparse.Namespace:
    """The argparse.Namespace upstream's checkpoints carry (its main_finetune.py's, with the values given)."""
    defaults = dict(model="RETFound_mae", model_arch="dinov3_vits16", input_size=256, nb_classes=8, global_pool=True,
                    drop_path=0.2, batch_size=128, epochs=50, seed=0, task="", adaptation="finetune")
    return argparse.Namespace(**{**defaults, **values})


def upstream_best(path: str, name: str, num_classes: int = 3, img_size: int = 224, seed: int = 14,
                  global_pool: bool = True, depth: Optional[int] = None, **args: Any) -> torch.nn.Module:
    """upstream's current checkpoint-best.pth (util/misc.save_model, mode 'best'): {'model', 'epoch', 'args'}, the
    model upstream's main_finetune.py builds for `name` (RETFound_mae, RETFound_dinov2, a Dinov2 size); the head
    scaled so that probabilities are not all 1/C. Returns the torch model."""
    model = randomize_(create_reference(name, img_size=img_size, num_classes=num_classes, global_pool=global_pool,
                                        depth=depth), seed)
    with torch.no_grad():
        model.head.weight.mul_(5.0 / model.head.weight.shape[1] ** 0.5 / 0.05 / 3)
    torch.save({"model": model.state_dict(), "epoch": 9,
                "args": upstream_args(nb_classes=num_classes, input_size=img_size, global_pool=global_pool, **args)},
               path)
    return model.eval()


def upstream_best_dinov3(path: str, name: str, num_classes: int = 3, img_size: int = 64, depth: Optional[int] = None,
                         seed: int = 17) -> "Dict[str, np.ndarray]":
    """upstream's checkpoint-best.pth of --model Dinov3 --model_arch <name>: Meta's keys (bias_mask, mask_token,
    periods) and the head upstream adds. Returns the state dict (numpy) for the reference."""
    sd = meta_dinov3_state(name, depth, seed)
    g = torch.Generator().manual_seed(seed + 1)
    dim = sd["cls_token"].shape[-1]
    sd["head.weight"] = torch.randn(num_classes, dim, generator=g) * 2.0 / dim ** 0.5
    sd["head.bias"] = torch.randn(num_classes, generator=g) * 0.1
    torch.save({"model": sd, "epoch": 4, "args": upstream_args(model="Dinov3", model_arch=name, input_size=img_size,
                                                               nb_classes=num_classes)}, path)
    return {k: v.numpy() for k, v in sd.items()}


def mae_published(path: str, name: str = "mae_vit_tiny_patch16_depth2", seed: int = 18, norm_pix_loss: bool = True,
                  img_size: int = 224, **overrides: Any) -> UpstreamMAE:
    """A published RETFound MAE checkpoint of an MAE (upstream's models_mae.py state dict: encoder and decoder, the
    fixed sin-cos tables), with optimizer, epoch, scaler and args as upstream's main_pretrain.py saves them. Returns
    the reference model."""
    from util_mindspore.reference.torch_models import create_mae_reference
    model = randomize_(create_mae_reference(name, img_size=img_size, norm_pix_loss=norm_pix_loss, **overrides), seed)
    torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 799,
                "scaler": {"scale": 65536.0},
                "args": argparse.Namespace(model=name, input_size=img_size, mask_ratio=0.75,
                                           norm_pix_loss=norm_pix_loss, batch_size=64, blr=1.5e-4)}, path)
    return model.eval()
