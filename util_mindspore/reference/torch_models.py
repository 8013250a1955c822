"""The PyTorch reference: upstream RETFound's models on timm 0.9.2, and random non-trivial weights.

Imported only by tests (and benchmarks); torch and timm are dev extras, never runtime requirements.
"""
import contextlib
from functools import partial
from typing import TYPE_CHECKING, Any, Collection, Dict, Iterator, List, Optional, Tuple, TypeVar

import timm
import timm.models.vision_transformer
import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    import numpy as np

_M = TypeVar("_M", bound=nn.Module)  # randomize_ / explicit_attention give back the model they were given


class UpstreamVisionTransformer(timm.models.vision_transformer.VisionTransformer):
    """Upstream RETFound's `models_vit.VisionTransformer`, as it runs on timm 0.9.x.

    `forward_features` returns fc_norm(mean(..., keepdim=True)); timm's `forward_head` then takes
    x[:, 0] and applies fc_norm a second time. That is the behaviour our port reproduces.
    """

    def __init__(self, global_pool: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.global_pool = global_pool
        if self.global_pool:
            self.fc_norm = kwargs["norm_layer"](kwargs["embed_dim"])
            del self.norm

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for blk in self.blocks:
            x = blk(x)
        if self.global_pool:
            return self.fc_norm(x[:, 1:, :].mean(dim=1, keepdim=True))
        return self.norm(x)[:, 0]




# what upstream's timm.create_model builds for each of our DINOv2 names
TIMM_DINOV2 = {"RETFound_dinov2": "vit_large_patch14_dinov2.lvd142m",
               **{f"dinov2_vit{s}14": f"vit_{n}_patch14_dinov2.lvd142m"
                  for s, n in (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant"))}}


def create_reference(name: str, img_size: int = 224, num_classes: int = 5, drop_path_rate: float = 0.0,
                     global_pool: bool = True, depth: Optional[int] = None) -> nn.Module:
    """The upstream model for one of our registry names (depth overrides the size, for fast tests)."""
    if name in TIMM_DINOV2:
        extra = {} if depth is None else {"depth": depth}
        return timm.create_model(TIMM_DINOV2[name], pretrained=False, img_size=img_size,
                                 num_classes=num_classes, drop_path_rate=drop_path_rate, **extra)
    from util_mindspore.registry import get_config
    config = get_config(name)
    size = dict(patch_size=config.patch_size, embed_dim=config.embed_dim, depth=config.depth,
                num_heads=config.num_heads)
    if depth is not None:
        size["depth"] = depth
    return UpstreamVisionTransformer(img_size=img_size, num_classes=num_classes, drop_path_rate=drop_path_rate,
                                     global_pool=global_pool, mlp_ratio=4, qkv_bias=True,
                                     norm_layer=partial(nn.LayerNorm, eps=1e-6), **size)


@torch.no_grad()
def randomize_(model: _M, seed: int = 0) -> _M:
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


def numpy_state_dict(model: nn.Module) -> "Dict[str, np.ndarray]":
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def upstream_param_groups_lrd(model: nn.Module, weight_decay: float = 0.05, no_weight_decay_list: Collection[str] = (),
                              layer_decay: float = 0.75) -> List[Dict[str, Any]]:
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


def upstream_adjust_learning_rate(optimizer: torch.optim.Optimizer, epoch: float, lr: float, min_lr: float,
                                  warmup_epochs: float, epochs: float) -> float:
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
def cuda_autocast_on_cpu(dtype: torch.dtype = torch.float16) -> Iterator[None]:
    """torch.cuda.amp.autocast()'s casts, emulated on the CPU (upstream trains under CUDA autocast).

    CPU autocast puts linear / matmul / conv in `dtype` as CUDA's does, but runs layer_norm and softmax in the
    dtype they receive, where CUDA's autocast casts them to float32; those two are patched to do that here.
    timm's fused attention (F.scaled_dot_product_attention) is turned off on the model by `explicit_attention`:
    its explicit path is the one whose casts autocast defines op by op (softmax in float32).
    """
    layer_norm, softmax = F.layer_norm, torch.Tensor.softmax

    def layer_norm_fp32(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return layer_norm(x.float(), *args, **kwargs)

    def softmax_fp32(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return softmax(self.float(), *args, **kwargs)

    F.layer_norm, torch.Tensor.softmax = layer_norm_fp32, softmax_fp32
    try:
        with torch.autocast("cpu", dtype=dtype):
            yield
    finally:
        F.layer_norm, torch.Tensor.softmax = layer_norm, softmax


def explicit_attention(model: _M) -> _M:
    """Turn off timm's fused attention, so attention runs as q @ k^T, softmax, @ v (see cuda_autocast_on_cpu)."""
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model


class UpstreamMAE(nn.Module):
    """upstream RETFound_MAE's models_mae.MaskedAutoencoderViT (after facebookresearch/mae) on timm 0.9.2: timm's
    Block without the qk_scale argument timm 0.9 no longer takes; fixed sin-cos tables from upstream's formula."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                 mlp_ratio: float = 4.0, norm_pix_loss: bool = False) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block, PatchEmbed
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
                                     for _ in range(depth)])
        self.norm = norm(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True,
                                                   norm_layer=norm) for _ in range(decoder_depth)])
        self.decoder_norm = norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * 3)
        self.norm_pix_loss = norm_pix_loss
        grid = int(n ** 0.5)
        self.pos_embed.data.copy_(torch.from_numpy(upstream_sincos(embed_dim, grid)).float()[None])
        self.decoder_pos_embed.data.copy_(torch.from_numpy(upstream_sincos(decoder_embed_dim, grid)).float()[None])

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        p = self.patch_embed.patch_size[0]
        h = w = imgs.shape[2] // p
        x = imgs.reshape(imgs.shape[0], 3, h, p, w, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(imgs.shape[0], h * w, p * p * 3)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_embed.patch_size[0]
        h = w = int(x.shape[1] ** 0.5)
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], h, w, p, p, 3))
        return x.reshape(x.shape[0], 3, h * p, h * p)

    def random_masking(self, x: torch.Tensor, mask_ratio: float,
                       noise: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, length, d = x.shape
        keep = int(length * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x_masked = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).repeat(1, 1, d))
        mask = torch.ones([n, length])
        mask[:, :keep] = 0
        return x_masked, torch.gather(mask, 1, ids_restore), ids_restore

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75,
                noise: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.gather(torch.cat([x[:, 1:, :], tokens], dim=1), 1,
                          ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:, :]
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.e-6) ** .5
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum(), pred, mask


def upstream_sincos(embed_dim: int, grid: int) -> "np.ndarray":
    """upstream util/pos_embed.get_2d_sincos_pos_embed(embed_dim, grid, cls_token=True), with np.float64 for the
    np.float numpy 1.24 removed."""
    import numpy as np
    gh = np.arange(grid, dtype=np.float32)
    gw = np.arange(grid, dtype=np.float32)
    g = np.stack(np.meshgrid(gw, gh), axis=0).reshape([2, 1, grid, grid])

    def one_d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.)
        out = np.einsum("m,d->md", pos.reshape(-1), 1. / 10000 ** omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(embed_dim // 2, g[0]), one_d(embed_dim // 2, g[1])], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)


def create_mae_reference(name: str, img_size: int = 224, norm_pix_loss: bool = False, **overrides: Any) -> UpstreamMAE:
    """The upstream MAE for one of our registered MAE names (overrides: depth=2, decoder_depth=1, ...)."""
    from util_mindspore.registry import get_config
    config = get_config(name).replace(**overrides)
    extra = config.extra
    return UpstreamMAE(img_size, config.patch_size, config.embed_dim, config.depth, config.num_heads,
                       extra["decoder_embed_dim"], extra["decoder_depth"], extra["decoder_num_heads"],
                       config.mlp_ratio, norm_pix_loss)


def upstream_add_weight_decay(model: nn.Module, weight_decay: float = 0.05) -> List[Dict[str, Any]]:
    """timm 0.3.2's optim_factory.add_weight_decay as upstream main_pretrain.py calls it."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if len(param.shape) == 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
