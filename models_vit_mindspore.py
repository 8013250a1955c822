"""RETFound Vision Transformers as MindSpore cells.

Parameter names are the PyTorch state_dict keys of upstream RETFound (timm 0.9.2 VisionTransformer),
so a converted checkpoint loads by name with no renaming table. Only `nn`/`ops` layers are used:
most `mint.nn` layers have no CPU kernel in MindSpore 2.10.
"""
import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Zero, initializer

from util_mindspore.initializers import TruncNormal

__all__ = ["VisionTransformer", "RETFound_mae", "RETFound_dinov2", "create_model", "list_models", "model_config"]


def trunc_normal(shape, std=0.02, a=-2.0, b=2.0):
    """timm's trunc_normal_ for a float32 Parameter, drawn into the Parameter's own array when it is made."""
    return initializer(TruncNormal(std, a, b), shape, ms.float32)


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis whose parameters are `weight`/`bias` like torch's (nn.LayerNorm says gamma/beta)."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = Parameter(initializer("ones", (dim,), ms.float32), name="weight")
        self.bias = Parameter(initializer("zeros", (dim,), ms.float32), name="bias")
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        return self.layer_norm(x, self.weight.astype(x.dtype), self.bias.astype(x.dtype))[0]


class GELU(nn.Cell):
    """Exact (erf) GELU as torch's default, x/2 (1 + erf(x/sqrt 2)); nn.GELU() is the tanh approximation.

    Written out with ops.erf: MindSpore 2.10's CPU GeLU kernel keeps about 4x its output in memory per call
    site (1.2 GB for a batch-4 ViT-L forward), the erf form does not and is as fast.
    """

    def construct(self, x):
        return x * 0.5 * (1.0 + ops.erf(x * 0.7071067811865476))


class DropPath(nn.Cell):
    """Stochastic depth per sample, timm's drop_path (scale_by_keep=True): x * (bernoulli(keep) / keep).

    The (B, 1, 1) factor is applied by a batched matmul with an inner dimension of 1 (one exact product per
    element), not by `x / keep * mask`: MindSpore 2.10's CPU kernels for broadcast elementwise ops, a whole
    tensor divided by a scalar among them, keep index tables of 16 bytes per element for every call site,
    forward and backward. That came to 1.1 GB over the 48 drop paths of a ViT-L train step at batch 2.
    """

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.keep_prob = 1.0 - self.drop_prob
        self.matmul = ops.BatchMatMul()

    def construct(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        b = x.shape[0]
        mask = ops.floor(self.keep_prob + ops.rand((b, 1, 1), dtype=x.dtype))
        if self.keep_prob > 0.0:
            mask = mask / self.keep_prob
        return self.matmul(ops.stop_gradient(mask), x.reshape(b, 1, -1)).reshape(x.shape)


class PatchProjection(nn.Cell):
    """torch's Conv2d(kernel=stride=patch) as a matmul over flattened patches; parameters keep the conv's shape.

    The same sums in another order (logits agree to 3e-6 on ViT-L). MindSpore 2.10's CPU Conv2d takes
    1.3 s for this layer at batch 4, a third of a ViT-L forward; the matmul takes 9 ms.
    """

    def __init__(self, in_chans, embed_dim, patch_size):
        super().__init__()
        self.patch_size = patch_size
        self.weight = Parameter(trunc_normal((embed_dim, in_chans, patch_size, patch_size)), name="weight")
        self.bias = Parameter(initializer("zeros", (embed_dim,), ms.float32), name="bias")
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        b, c, h, w = x.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        # (B, C, gh, p, gw, p) -> (B*gh*gw, C*p*p): each row one patch, flattened as the conv weight is
        x = x.reshape(b, c, gh, p, gw, p).transpose(0, 2, 4, 1, 3, 5).reshape(b * gh * gw, c * p * p)
        weight = self.weight.astype(x.dtype).reshape(self.weight.shape[0], -1)
        x = self.matmul(x, weight) + self.bias.astype(x.dtype)
        return x.reshape(b, gh * gw, -1)


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


def _dense(in_features, out_features, bias=True):
    return nn.Dense(in_features, out_features, has_bias=bias,
                    weight_init=trunc_normal((out_features, in_features)), bias_init="zeros")


class Softmax(nn.Cell):
    """Softmax over the last axis, with its backward p * g - p * sum(p * g) written as two batched matmuls.

    MindSpore 2.10's own softmax backward (a ReduceSum and a broadcast Sub) keeps per-call-site index tables on
    CPU: 15-20 MB per ViT-L block in a batch-2 train step. The matmuls keep none; the row sums are added in
    another order than torch's, so gradients agree to float32 rounding.
    """

    def __init__(self):
        super().__init__()
        self.matmul = ops.BatchMatMul()

    def construct(self, x):
        return ops.softmax(x, axis=-1)

    def bprop(self, x, out, dout):
        n = out.shape[-1]
        row_dot = self.matmul(out.reshape(-1, 1, n), dout.reshape(-1, n, 1))  # (rows, 1, 1): sum_j p_j g_j
        return (out * dout - self.matmul(out.reshape(-1, n, 1), row_dot).reshape(out.shape),)


class Attention(nn.Cell):
    """timm's Attention. Heads are split off and merged back with split/stack and unstack/concat.

    timm reshapes qkv to (B, N, 3, H, d) and permutes it. MindSpore 2.10's CPU Transpose kernel keeps an index
    table of 8 bytes per element for each call site, whatever the rank: 25 MB per ViT-L block in batch-4
    inference, 21 MB per block in a batch-2 train step. Splitting along the channels and stacking the heads
    gives the same (B, H, N, d) tensors with copies only, and is faster (1.0 against 1.7 ms for a
    (4, 197, 1024) tensor there and back).
    """

    def __init__(self, dim, num_heads=8, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = _dense(dim, dim * 3, bias=qkv_bias)
        self.proj = _dense(dim, dim)
        self.matmul_qk = ops.BatchMatMul(transpose_b=True)
        self.matmul_av = ops.BatchMatMul()
        self.softmax = Softmax()

    def _split_heads(self, x):
        """(B, N, H * d) -> (B, H, N, d)."""
        return ops.stack(ops.split(x, self.head_dim, axis=-1), axis=1)

    def _merge_heads(self, x):
        """(B, H, N, d) -> (B, N, H * d)."""
        return ops.concat(ops.unstack(x, axis=1), axis=-1)

    def construct(self, x):
        q, k, v = ops.split(self.qkv(x), x.shape[-1], axis=-1)
        attn = self.softmax(self.matmul_qk(self._split_heads(q * self.scale), self._split_heads(k)))
        return self.proj(self._merge_heads(self.matmul_av(attn, self._split_heads(v))))


class Mlp(nn.Cell):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = _dense(in_features, hidden_features)
        self.act = GELU()
        self.fc2 = _dense(hidden_features, in_features)

    def construct(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Cell):
    """x * gamma over the channels (DINOv2). gamma is first spread to x's shape by a matmul with a ones column.

    A broadcast multiply would keep index tables on CPU for its forward and gradients (see DropPath): 27 MB per
    ViT-L block in a batch-2 train step. The spread values are gamma's exactly, so outputs equal torch's.
    """

    def __init__(self, dim, init_values=1e-5):
        super().__init__()
        self.gamma = Parameter(initializer(float(init_values), (dim,), ms.float32), name="gamma")
        self.matmul = ops.MatMul()

    def construct(self, x):
        dim = x.shape[-1]
        gamma = self.matmul(ops.ones((x.size // dim, 1), x.dtype), self.gamma.astype(x.dtype).reshape(1, dim))
        return x * gamma.reshape(x.shape)


class Block(nn.Cell):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop_path=0.0, init_values=None, eps=1e-6):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def construct(self, x):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class VisionTransformer(nn.Cell):
    """ViT with a class token; `global_pool=True` is upstream RETFound's MAE fine-tuning head.

    global_pool=True: features = fc_norm(fc_norm(mean of patch tokens)); no final `norm`.
    DELIBERATE DOUBLE fc_norm: upstream's `forward_features` applies fc_norm, and timm 0.9.x's
    `forward_head` applies the same fc_norm again before `head`. Every fine-tuned upstream checkpoint
    was trained through both, so we apply it twice to give the same logits.
    global_pool=False: features = norm(x)[:, 0] (class token).
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.0, global_pool=False,
                 init_values=None, eps=1e-6):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = bool(global_pool)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        # timm's normal_(std=1e-6); drawn by TruncNormal (its +-2 bounds never bind here), which takes its seed when
        # built: MindSpore's Normal takes one from np.random when filled, so create_model(pretrained=...),
        # which never fills cls_token, would then draw a different head from the same seed
        self.cls_token = Parameter(trunc_normal((1, 1, embed_dim), std=1e-6), name="cls_token")
        self.pos_embed = Parameter(trunc_normal((1, num_patches + 1, embed_dim)), name="pos_embed")
        rates = np.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth decay rule
        self.blocks = nn.CellList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rates[i], init_values, eps) for i in range(depth)])
        if self.global_pool:
            self.fc_norm = LayerNorm(embed_dim, eps)
        else:
            self.norm = LayerNorm(embed_dim, eps)
        self.head = _dense(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    @property
    def depth(self):
        return len(self.blocks)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    def forward_tokens(self, x):
        """All tokens after the last block, before any norm: (B, 1 + N, D)."""
        x = self.patch_embed(x)
        cls = ops.broadcast_to(self.cls_token.astype(x.dtype), (x.shape[0], 1, self.embed_dim))
        x = ops.concat((cls, x), axis=1) + self.pos_embed.astype(x.dtype)
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward_features(self, x):
        """The (B, embed_dim) vector `head` receives: the embedding users extract."""
        x = self.forward_tokens(x)
        if self.global_pool:
            x = x[:, 1:, :].mean(axis=1)
            return self.fc_norm(self.fc_norm(x))  # twice, as upstream on timm 0.9.x (see class docstring)
        return self.norm(x)[:, 0]

    def forward_head(self, x, pre_logits=False):
        return x if pre_logits else self.head(x)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


# --- registry -------------------------------------------------------------------------------------------

_MODELS = {}
_CONFIGS = {}


def register_model(fn=None, **cfg):
    """Register a model function; cfg holds its defaults (input size, patch) for scripts and tests."""
    def wrap(f):
        _MODELS[f.__name__] = f
        _CONFIGS[f.__name__] = dict(cfg)
        return f
    return wrap(fn) if fn is not None else wrap


def _vit(img_size, num_classes, drop_path_rate, global_pool, overrides, **arch):
    """Build a registered size; keyword overrides (e.g. depth=2 for tests) replace the size's values."""
    arch.update(overrides)
    return VisionTransformer(img_size=img_size, num_classes=num_classes, drop_path_rate=drop_path_rate,
                             global_pool=global_pool, **arch)


@register_model(patch_size=16, family="mae")
def RETFound_mae(img_size=224, num_classes=1000, drop_path_rate=0.0, global_pool=True, **kwargs):
    """RETFound-MAE encoder: ViT-L/16 (upstream `models_vit.RETFound_mae`)."""
    return _vit(img_size, num_classes, drop_path_rate, global_pool, kwargs, patch_size=16, embed_dim=1024, depth=24,
                num_heads=16, mlp_ratio=4, qkv_bias=True)


@register_model(patch_size=14, family="dinov2")
def RETFound_dinov2(img_size=224, num_classes=1000, drop_path_rate=0.0, global_pool=None, **kwargs):
    """RETFound-DINOv2 encoder: timm `vit_large_patch14_dinov2.lvd142m` (LayerScale, class token, final norm).

    `global_pool` is accepted and ignored, as upstream does for this model.
    """
    return _vit(img_size, num_classes, drop_path_rate, False, kwargs, patch_size=14, embed_dim=1024, depth=24,
                num_heads=16, mlp_ratio=4, qkv_bias=True, init_values=1e-5)


@register_model(patch_size=16, family="mae")
def vit_tiny_patch16(img_size=224, num_classes=1000, drop_path_rate=0.0, global_pool=True, **kwargs):
    """Small MAE-style ViTs (timm sizes) for CPU experiments and tests."""
    return _vit(img_size, num_classes, drop_path_rate, global_pool, kwargs, patch_size=16, embed_dim=192, depth=12,
                num_heads=3)


@register_model(patch_size=16, family="mae")
def vit_small_patch16(img_size=224, num_classes=1000, drop_path_rate=0.0, global_pool=True, **kwargs):
    return _vit(img_size, num_classes, drop_path_rate, global_pool, kwargs, patch_size=16, embed_dim=384, depth=12,
                num_heads=6)


@register_model(patch_size=16, family="mae")
def vit_base_patch16(img_size=224, num_classes=1000, drop_path_rate=0.0, global_pool=True, **kwargs):
    return _vit(img_size, num_classes, drop_path_rate, global_pool, kwargs, patch_size=16, embed_dim=768, depth=12,
                num_heads=12)


def list_models():
    return sorted(_MODELS)


def model_config(name):
    """Registered defaults of a model: patch size and family ('mae' or 'dinov2')."""
    if name not in _MODELS:
        raise KeyError(f"unknown model '{name}'; choose one of: {', '.join(list_models())}")
    return dict(_CONFIGS[name])


def create_model(name, pretrained=None, weights_cache_dir=None, **kwargs):
    """A registered model. With `pretrained` (what --finetune takes: a published name, `org/repo[/file]`, a
    file), its weights are loaded as upstream loads them, and the parameters they replace are never drawn at
    random: only what the checkpoint lacks (a new head, fc_norm) is. ViT-L from a converted .ckpt: 1.3-2.3 s,
    against 5.3-11 s to build it at random and load it (two 1.2 GB fills of new memory)."""
    model_config(name)  # raises the clear error for an unknown name
    if not pretrained:
        return _MODELS[name](**kwargs)
    from mindspore.nn.utils import no_init_parameters
    from util_mindspore.weight_converter import load_pretrained_weights
    with no_init_parameters():  # initializers are built (and seeded) as usual, filled only on demand
        model = _MODELS[name](**kwargs)
    load_pretrained_weights(model, pretrained, cache_dir=weights_cache_dir)
    model.init_parameters_data()
    return model


def trunc_normal_head_(model, std=2e-5):
    """Re-initialise the classifier as upstream does after loading pretrained weights."""
    if isinstance(model.head, nn.Dense):
        model.head.weight.set_data(trunc_normal(model.head.weight.shape, std))
        model.head.bias.set_data(initializer(Zero(), model.head.bias.shape, ms.float32))


def num_params(model):
    return sum(math.prod(p.shape) for p in model.trainable_params())
