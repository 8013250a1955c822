"""RETFound Vision Transformers as MindSpore cells.

Parameter names are the PyTorch state_dict keys of upstream RETFound (timm 0.9.2 VisionTransformer),
so a converted checkpoint loads by name with no renaming table. The layers (util_mindspore/layers.py) follow
one ComputePolicy: mixed precision as torch autocast, and kernel forms chosen by device.
"""
import math
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops
from mindspore.nn.utils import no_init_parameters

from util_mindspore.compute_policy import PolicyCell, cast
from util_mindspore.layers import (
    GELU,
    DropPath,
    LayerNorm,
    LayerScale,
    Linear,
    PatchProjection,
    SiLU,
    Softmax,
    merge_heads,
    split_heads,
    trunc_normal,
)
from util_mindspore.weights import load_pretrained_weights, set_architecture_guesser

__all__ = ["VisionTransformer", "RETFound_mae", "RETFound_dinov2", "create_model", "list_models"]


class PatchEmbed(nn.Cell):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, N, D)."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2
        self.proj = PatchProjection(in_chans, embed_dim, patch_size)

    def construct(self, x):
        return self.proj(x)


class Attention(PolicyCell):
    """timm's Attention (explicit softmax, as timm with fused_attn off): the scores' softmax in the accurate
    dtype, both batched matmuls in the matmul dtype."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, qkv_bias_mask=None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias, bias_mask=qkv_bias_mask)
        self.proj = Linear(dim, dim)
        self.matmul_qk = ops.BatchMatMul(transpose_b=True)
        self.matmul_av = ops.BatchMatMul()
        self.softmax = Softmax()

    def _probs_and_values(self, x):
        qkv, dim = self.qkv(x), x.shape[-1]
        if self.cpu_forms:
            q, k, v = ops.split(qkv, dim, axis=-1)
        else:  # slices: a graph exported with a free batch dimension cannot split (its output count is unknown)
            q, k, v = qkv[..., :dim], qkv[..., dim:2 * dim], qkv[..., 2 * dim:]
        dtype, heads, cpu = self.matmul_dtype, self.num_heads, self.cpu_forms
        q = cast(split_heads(q * self.scale, heads, cpu), dtype)
        scores = cast(self.matmul_qk(q, cast(split_heads(k, heads, cpu), dtype)), self.matmul_out_dtype)
        return self.softmax(scores), split_heads(v, heads, cpu)

    def attention_probs(self, x):
        """(B, heads, N, N): each token's attention over the tokens (what attention rollout reads)."""
        return self._probs_and_values(x)[0]

    def construct(self, x):
        probs, v = self._probs_and_values(x)
        dtype = self.matmul_dtype
        out = cast(self.matmul_av(cast(probs, dtype), cast(v, dtype)), self.matmul_out_dtype)
        return self.proj(merge_heads(out, self.cpu_forms))


class Mlp(nn.Cell):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.act = GELU()
        self.fc2 = Linear(hidden_features, in_features)

    def construct(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUMlp(nn.Cell):
    """DINOv2 ViT-g's feed-forward (timm's SwiGLUPacked; Meta's `w12`/`w3`, renamed fc1/fc2 as upstream does):
    fc1 to a packed width, silu(first half) * second half, fc2 from half that width."""

    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.act = SiLU()
        self.fc2 = Linear(hidden_features // 2, in_features)
        self.half = hidden_features // 2

    def construct(self, x):
        x = self.fc1(x)
        return self.fc2(self.act(x[..., :self.half]) * x[..., self.half:])


MLP_LAYERS = {"mlp": Mlp, "swiglu": SwiGLUMlp}


class Block(PolicyCell):
    """Pre-norm transformer block; each branch is added to the residual stream in the residual dtype."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop_path=0.0, init_values=None, eps=1e-6,
                 mlp_layer="mlp"):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, eps)
        self.mlp = MLP_LAYERS[mlp_layer](dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def construct(self, x):
        x = cast(x, self.residual_dtype)
        x = x + cast(self.drop_path1(self.ls1(self.attn(self.norm1(x)))), x.dtype)
        x = x + cast(self.drop_path2(self.ls2(self.mlp(self.norm2(x)))), x.dtype)
        return x


class EncoderInterface:
    """What predict, heat maps, export and training use of every family (timm's forward_features/forward_head
    split): a family defines embed_tokens, forward_tokens, pool_features, pool_embedding and block_args."""

    num_prefix_tokens = 1  # tokens before the patches (class token; DINOv3 adds its storage tokens)

    @property
    def depth(self):
        return len(self.blocks)

    def block_args(self):
        """What each block takes beside the tokens (DINOv3: its rotary tables)."""
        return ()

    def forward_features(self, x):
        """The vector `head` receives (forward_embedding gives the one users extract)."""
        return self.pool_features(self.forward_tokens(x))

    def forward_embedding(self, x):
        return self.pool_embedding(self.forward_tokens(x))

    def forward_head(self, x, pre_logits=False):
        return x if pre_logits else self.head(x)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


class VisionTransformer(EncoderInterface, PolicyCell):
    """ViT with a class token; `global_pool=True` is upstream RETFound's MAE fine-tuning head.

    global_pool=True: features = fc_norm(fc_norm(mean of patch tokens)); no final `norm`.
    DELIBERATE DOUBLE fc_norm: upstream's `forward_features` applies fc_norm, and timm 0.9.x's
    `forward_head` applies the same fc_norm again before `head`. Every fine-tuned upstream checkpoint
    was trained through both, so we apply it twice to give the same logits.
    global_pool=False: features = norm(x)[:, 0] (class token).
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.0, global_pool=False,
                 init_values=None, eps=1e-6, mlp_layer="mlp"):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = bool(global_pool)
        self.patch_mean_embedding = False  # DINOv2's embedding (forward_embedding); set by its registry entry
        self.eps = eps
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        # timm's normal_(std=1e-6); drawn by TruncNormal (its +-2 bounds never bind here), which takes its seed when
        # built: MindSpore's Normal takes one from np.random when filled, so create_model(pretrained=...),
        # which never fills cls_token, would then draw a different head from the same seed
        self.cls_token = Parameter(trunc_normal((1, 1, embed_dim), std=1e-6), name="cls_token")
        self.pos_embed = Parameter(trunc_normal((1, num_patches + 1, embed_dim)), name="pos_embed")
        rates = np.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth decay rule
        self.blocks = nn.CellList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rates[i], init_values, eps, mlp_layer)
            for i in range(depth)])
        if self.global_pool:
            self.fc_norm = LayerNorm(embed_dim, eps)
        else:
            self.norm = LayerNorm(embed_dim, eps)
        self.head = Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    def embed_tokens(self, x):
        """Images -> the class token and patch tokens with position embeddings, before the blocks: (B, 1 + N, D)."""
        x = cast(self.patch_embed(x), self.residual_dtype)
        if self.onnx_forms:  # the ONNX exporter writes the batch size into a broadcast: add to a batch-sized zero
            cls = x[:, :1, :] * 0 + cast(self.cls_token, x.dtype)
        else:
            cls = ops.broadcast_to(cast(self.cls_token, x.dtype), (x.shape[0], 1, self.embed_dim))
        return ops.concat((cls, x), axis=1) + cast(self.pos_embed, x.dtype)

    def forward_tokens(self, x):
        """All tokens after the last block, before any norm: (B, 1 + N, D)."""
        x = self.embed_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return x

    def pool_features(self, tokens):
        """forward_tokens' output -> the (B, embed_dim) vector `head` receives."""
        if self.global_pool:
            x = tokens[:, 1:, :].mean(axis=1)
            return self.fc_norm(self.fc_norm(x))  # twice, as upstream on timm 0.9.x (see class docstring)
        return self.norm(tokens)[:, 0]

    def pool_embedding(self, tokens):
        """forward_tokens' output -> the embedding upstream's latent_feature.ipynb extracts, (B, embed_dim):
        upstream's `forward_features` (global pool: fc_norm(mean of patch tokens), applied once; class token:
        norm(x)[:, 0]); for DINOv2 the notebook's mean of the normed patch tokens, then a LayerNorm without
        weights (its fresh nn.LayerNorm)."""
        if self.patch_mean_embedding:
            x = cast(self.norm(tokens)[:, 1:, :].mean(axis=1), ms.float32)
            centred = x - x.mean(axis=-1, keep_dims=True)
            return centred / ops.sqrt((centred * centred).mean(axis=-1, keep_dims=True) + self.eps)
        if self.global_pool:
            return self.fc_norm(tokens[:, 1:, :].mean(axis=1))
        return self.norm(tokens)[:, 0]

# --- registry -------------------------------------------------------------------------------------------

_MODELS = {}


def register_model(fn):
    """Make a model function available to create_model under its own name (upstream's names)."""
    _MODELS[fn.__name__] = fn
    return fn


# Each registered architecture once: what builds it and what recognises its checkpoints (weights.py's errors).
SIZES = {
    "RETFound_mae": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "RETFound_dinov2": dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16),
    "dinov2_vits14": dict(patch_size=14, embed_dim=384, depth=12, num_heads=6),
    "dinov2_vitb14": dict(patch_size=14, embed_dim=768, depth=12, num_heads=12),
    "dinov2_vitl14": dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16),
    "dinov2_vitg14": dict(patch_size=14, embed_dim=1536, depth=40, num_heads=24, mlp_ratio=2.66667 * 2,
                          mlp_layer="swiglu"),
    "vit_tiny_patch16": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
}


def _vit(name, img_size, num_classes, drop_path_rate, global_pool, overrides, **extra):
    """Build a registered size; keyword overrides (e.g. depth=2 for tests) replace the size's values."""
    arch = dict(SIZES[name], **extra)
    arch.update(overrides)
    return VisionTransformer(img_size=img_size, num_classes=num_classes, drop_path_rate=drop_path_rate,
                             global_pool=global_pool, **arch)


def _dinov2(name, img_size, num_classes, drop_path_rate, overrides):
    """A DINOv2 ViT (timm's `vit_*_patch14_dinov2`): LayerScale, class token, final norm; logits from the class
    token, global_pool ignored as upstream ignores it. Its embedding (forward_embedding) is latent_feature.ipynb's
    DINOv2 one."""
    model = _vit(name, img_size, num_classes, drop_path_rate, False, overrides, qkv_bias=True, init_values=1e-5)
    model.patch_mean_embedding = True
    return model


@register_model
def RETFound_mae(img_size=224, num_classes=1000, drop_path_rate=0.0, global_pool=True, **kwargs):
    """RETFound-MAE encoder: ViT-L/16 (upstream `models_vit.RETFound_mae`)."""
    return _vit("RETFound_mae", img_size, num_classes, drop_path_rate, global_pool, kwargs, mlp_ratio=4,
                qkv_bias=True)


@register_model
def RETFound_dinov2(img_size=224, num_classes=1000, drop_path_rate=0.0, global_pool=None, **kwargs):
    """RETFound-DINOv2 encoder: timm `vit_large_patch14_dinov2.lvd142m` (LayerScale, class token, final norm)."""
    return _dinov2("RETFound_dinov2", img_size, num_classes, drop_path_rate, kwargs)


# upstream's `--model Dinov2 --model_arch <arch>`: timm's LVD-142M DINOv2 of that size.
@register_model
def dinov2_vits14(img_size=224, num_classes=1000, drop_path_rate=0.0, global_pool=None, **kwargs):
    """DINOv2 ViT-S/14 (22M parameters)."""
    return _dinov2("dinov2_vits14", img_size, num_classes, drop_path_rate, kwargs)


@register_model
def dinov2_vitb14(img_size=224, num_classes=1000, drop_path_rate=0.0, global_pool=None, **kwargs):
    """DINOv2 ViT-B/14 (86M parameters)."""
    return _dinov2("dinov2_vitb14", img_size, num_classes, drop_path_rate, kwargs)


@register_model
def dinov2_vitl14(img_size=224, num_classes=1000, drop_path_rate=0.0, global_pool=None, **kwargs):
    """DINOv2 ViT-L/14 (303M parameters): RETFound_dinov2's architecture, with Meta's weights."""
    return _dinov2("dinov2_vitl14", img_size, num_classes, drop_path_rate, kwargs)


@register_model
def dinov2_vitg14(img_size=224, num_classes=1000, drop_path_rate=0.0, global_pool=None, **kwargs):
    """DINOv2 ViT-g/14 (1.1B parameters): SwiGLU feed-forward of packed width 8192."""
    return _dinov2("dinov2_vitg14", img_size, num_classes, drop_path_rate, kwargs)


@register_model
def vit_tiny_patch16(img_size=224, num_classes=1000, drop_path_rate=0.0, global_pool=True, **kwargs):
    """Small MAE-style ViTs (timm sizes) for CPU experiments and tests."""
    return _vit("vit_tiny_patch16", img_size, num_classes, drop_path_rate, global_pool, kwargs)


@register_model
def vit_small_patch16(img_size=224, num_classes=1000, drop_path_rate=0.0, global_pool=True, **kwargs):
    return _vit("vit_small_patch16", img_size, num_classes, drop_path_rate, global_pool, kwargs)


@register_model
def vit_base_patch16(img_size=224, num_classes=1000, drop_path_rate=0.0, global_pool=True, **kwargs):
    return _vit("vit_base_patch16", img_size, num_classes, drop_path_rate, global_pool, kwargs)


# upstream's `--model Dinov3 --model_arch <arch>` (facebookresearch/dinov3 hub models, models_dinov3_mindspore.py)
DINOV3_SIZES = {
    "dinov3_vits16": dict(embed_dim=384, depth=12, num_heads=6, ffn_ratio=4.0, ffn_layer="mlp"),
    "dinov3_vits16plus": dict(embed_dim=384, depth=12, num_heads=6, ffn_ratio=6.0, ffn_layer="swiglu"),
    "dinov3_vitb16": dict(embed_dim=768, depth=12, num_heads=12, ffn_ratio=4.0, ffn_layer="mlp"),
    "dinov3_vitl16": dict(embed_dim=1024, depth=24, num_heads=16, ffn_ratio=4.0, ffn_layer="mlp"),
    "dinov3_vitl16plus": dict(embed_dim=1024, depth=24, num_heads=16, ffn_ratio=6.0, ffn_layer="swiglu"),
    "dinov3_vith16plus": dict(embed_dim=1280, depth=32, num_heads=20, ffn_ratio=6.0, ffn_layer="swiglu"),
    "dinov3_vit7b16": dict(embed_dim=4096, depth=40, num_heads=32, ffn_ratio=3.0, ffn_layer="swiglu", swiglu_align=64,
                           qkv_bias=False, untie_global_and_local_cls_norm=True),
}


def _dinov3_factory(name):
    def build(img_size=224, num_classes=1000, drop_path_rate=0.0, global_pool=None, **overrides):
        """A DINOv3 ViT (global_pool and drop_path_rate ignored, as upstream's hub model ignores them)."""
        from models_dinov3_mindspore import DinoVisionTransformer  # imports this module's building blocks
        return DinoVisionTransformer(img_size=img_size, num_classes=num_classes, patch_size=16,
                                     **dict(DINOV3_SIZES[name], **overrides))
    build.__name__ = name
    return build


for _name in DINOV3_SIZES:
    register_model(_dinov3_factory(_name))


def architectures_like(embed_dim, depth, patch_size):
    """Registered names whose size matches a checkpoint's (for error messages)."""
    sizes = {**SIZES, **{name: dict(size, patch_size=16) for name, size in DINOV3_SIZES.items()}}
    return [name for name, size in sizes.items()
            if (size["embed_dim"], size["depth"], size["patch_size"]) == (embed_dim, depth, patch_size)]


set_architecture_guesser(architectures_like)


def list_models():
    return sorted(_MODELS)


# Weights a model starts from when --finetune is not given, as upstream's timm.create_model(pretrained=True) does:
# Meta's LVD-142M DINOv2, as timm publishes it on HuggingFace.
DEFAULT_PRETRAINED = {
    "RETFound_dinov2": "timm/vit_large_patch14_dinov2.lvd142m/model.safetensors",
    **{f"dinov2_vit{size}14": f"timm/vit_{name}_patch14_dinov2.lvd142m/model.safetensors"
       for size, name in (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant"))},
}

# upstream's --model families whose size --model_arch picks
FAMILIES = {"Dinov2": ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14"),
            "Dinov3": tuple(DINOV3_SIZES)}


def default_pretrained(name: str) -> Optional[str]:
    return DEFAULT_PRETRAINED.get(name)


def resolve_model_name(model: str, model_arch: Optional[str] = None) -> str:
    """upstream's `--model Dinov2 --model_arch dinov2_vitb14` -> the registered `dinov2_vitb14`; other names as
    they are (RETFound models ignore --model_arch, as upstream)."""
    if model not in FAMILIES:
        return model
    if model_arch not in FAMILIES[model]:
        raise ValueError(f"--model {model} --model_arch {model_arch}: choose --model_arch from "
                         f"{', '.join(FAMILIES[model])}")
    return model_arch


def default_input_size(name: str) -> int:
    """upstream's --input_size default (256), except where upstream's model is built at 224 (its 256 stops there)."""
    return 224 if name == "RETFound_dinov2" or name.startswith("dinov2_") else 256


def create_model(name: str, pretrained: Optional[str] = None, weights_cache_dir: Optional[str] = None,
                 **kwargs) -> VisionTransformer:
    """A registered model. With `pretrained` (what --finetune takes: a published name, `org/repo[/file]`, a
    file), its weights are loaded as upstream loads them, and the parameters they replace are never drawn at
    random (building under no_init_parameters): only what the checkpoint lacks (a new head, fc_norm) is."""
    if name not in _MODELS:
        raise KeyError(f"unknown model '{name}'; choose one of: {', '.join(list_models())}")
    if not pretrained:
        return _MODELS[name](**kwargs)
    with no_init_parameters():  # initializers are built (and seeded) as usual, filled only on demand
        model = _MODELS[name](**kwargs)
    load_pretrained_weights(model, pretrained, cache_dir=weights_cache_dir)
    model.init_parameters_data()
    return model


def num_params(model):
    return sum(math.prod(p.shape) for p in model.trainable_params())
