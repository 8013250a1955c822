"""The PyTorch reference: upstream RETFound's models on timm 0.9.2, and random non-trivial weights.

Imported only by tests (and benchmarks); torch and timm are dev extras, never runtime requirements.
"""
import contextlib
from functools import partial

import timm
import timm.models.vision_transformer
import torch
import torch.nn as nn
import torch.nn.functional as F


class UpstreamVisionTransformer(timm.models.vision_transformer.VisionTransformer):
    """Upstream RETFound's `models_vit.VisionTransformer`, as it runs on timm 0.9.x.

    `forward_features` returns fc_norm(mean(..., keepdim=True)); timm's `forward_head` then takes
    x[:, 0] and applies fc_norm a second time. That is the behaviour our port reproduces.
    """

    def __init__(self, global_pool=False, **kwargs):
        super().__init__(**kwargs)
        self.global_pool = global_pool
        if self.global_pool:
            self.fc_norm = kwargs["norm_layer"](kwargs["embed_dim"])
            del self.norm

    def forward_features(self, x):
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for blk in self.blocks:
            x = blk(x)
        if self.global_pool:
            return self.fc_norm(x[:, 1:, :].mean(dim=1, keepdim=True))
        return self.norm(x)[:, 0]


_MAE_SIZES = {
    "RETFound_mae": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "vit_tiny_patch16": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
}


# what upstream's timm.create_model builds for each of our DINOv2 names
TIMM_DINOV2 = {"RETFound_dinov2": "vit_large_patch14_dinov2.lvd142m",
               **{f"dinov2_vit{s}14": f"vit_{n}_patch14_dinov2.lvd142m"
                  for s, n in (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant"))}}


def create_reference(name, img_size=224, num_classes=5, drop_path_rate=0.0, global_pool=True, depth=None):
    """The upstream model for one of our registry names (depth overrides the size, for fast tests)."""
    if name in TIMM_DINOV2:
        extra = {} if depth is None else {"depth": depth}
        return timm.create_model(TIMM_DINOV2[name], pretrained=False, img_size=img_size,
                                 num_classes=num_classes, drop_path_rate=drop_path_rate, **extra)
    size = dict(_MAE_SIZES[name])
    if depth is not None:
        size["depth"] = depth
    return UpstreamVisionTransformer(img_size=img_size, num_classes=num_classes, drop_path_rate=drop_path_rate,
                                     global_pool=global_pool, mlp_ratio=4, qkv_bias=True,
                                     norm_layer=partial(nn.LayerNorm, eps=1e-6), **size)


@torch.no_grad()
def randomize_(model, seed=0):
    """Random weights that exercise every parameter: norm weights away from 1, gammas 0.05-0.5."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            p.copy_(torch.rand(p.shape, generator=g) * 0.45 + 0.05)
        elif "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        elif name.endswith("bias"):
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def numpy_state_dict(model):
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def upstream_param_groups_lrd(model, weight_decay=0.05, no_weight_decay_list=(), layer_decay=0.75):
    """Upstream util/lr_decay.py's param_groups_lrd (BEiT), for torch.optim.AdamW."""
    groups = {}
    num_layers = len(model.blocks) + 1
    scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim == 1 or name in no_weight_decay_list
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
            layer_id = 0
        elif name.startswith("blocks"):
            layer_id = int(name.split(".")[1]) + 1
        else:
            layer_id = num_layers
        key = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
        group = groups.setdefault(key, {"lr_scale": scales[layer_id], "weight_decay": 0.0 if no_decay else weight_decay,
                                        "params": [], "names": []})
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())


def upstream_adjust_learning_rate(optimizer, epoch, lr, min_lr, warmup_epochs, epochs):
    """Upstream util/lr_sched.py's adjust_learning_rate."""
    import math
    if epoch < warmup_epochs:
        value = lr * epoch / warmup_epochs
    else:
        progress = (epoch - warmup_epochs) / (epochs - warmup_epochs)
        value = min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    for group in optimizer.param_groups:
        group["lr"] = value * group.get("lr_scale", 1.0)
    return value


@contextlib.contextmanager
def cuda_autocast_on_cpu(dtype=torch.float16):
    """torch.cuda.amp.autocast()'s casts, emulated on the CPU (upstream trains under CUDA autocast).

    CPU autocast puts linear / matmul / conv in `dtype` as CUDA's does, but runs layer_norm and softmax in the
    dtype they receive, where CUDA's autocast casts them to float32; those two are patched to do that here.
    timm's fused attention (F.scaled_dot_product_attention) is turned off on the model by `explicit_attention`:
    its explicit path is the one whose casts autocast defines op by op (softmax in float32).
    """
    layer_norm, softmax = F.layer_norm, torch.Tensor.softmax

    def layer_norm_fp32(x, *args, **kwargs):
        return layer_norm(x.float(), *args, **kwargs)

    def softmax_fp32(self, *args, **kwargs):
        return softmax(self.float(), *args, **kwargs)

    F.layer_norm, torch.Tensor.softmax = layer_norm_fp32, softmax_fp32
    try:
        with torch.autocast("cpu", dtype=dtype):
            yield
    finally:
        F.layer_norm, torch.Tensor.softmax = layer_norm, softmax


def explicit_attention(model):
    """Turn off timm's fused attention, so attention runs as q @ k^T, softmax, @ v (see cuda_autocast_on_cpu)."""
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model
