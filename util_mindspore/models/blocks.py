"""The transformer parts every model family is built from: patch embedding, attention (with or without rotary
position embeddings), the feed-forward layers, one block that takes its parts by name (as dinov3's
`ffn_layer_dict`), and the contract every encoder keeps (timm's forward_features / forward_head split).

Parameter names are the PyTorch keys (timm's and Meta's), so checkpoints load by name. Every cell follows the
ComputePolicy set on it (util_mindspore/models/compute_policy.py).
"""
import math
from typing import Dict, Optional, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops

from util_mindspore.models.compute_policy import PolicyCell, cast
from util_mindspore.models.layers import (
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
)


class PatchEmbed(nn.Cell):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, N, D)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2
        self.proj = PatchProjection(in_chans, embed_dim, patch_size)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.proj(x)


class RopePositionEmbedding(PolicyCell):
    """sin and cos tables (HW, head_dim) of Meta's DINOv3 RoPE ('separate' coordinates in [-1, 1], periods
    base ** (2i / (head_dim / 2))). `periods` is a frozen parameter so a checkpoint's own values load by name. In
    training the coordinates are rescaled by a random factor in [1 / rescale, rescale], as Meta's model does."""

    def __init__(self, embed_dim: int, num_heads: int, grid: int, base: float = 100.0,
                 rescale_coords: Optional[float] = None) -> None:
        super().__init__()
        head_dim = embed_dim // num_heads
        exponents = 2 * np.arange(head_dim // 4, dtype=np.float32) / np.float32(head_dim // 2)
        self.periods = Parameter(ms.Tensor(np.float32(base) ** exponents, ms.float32), name="periods",
                                 requires_grad=False)
        axis = (np.arange(grid, dtype=np.float32) + np.float32(0.5)) / np.float32(grid)
        rows, cols = np.meshgrid(axis, axis, indexing="ij")
        self.coords = ms.Tensor(2.0 * np.stack([rows, cols], axis=-1).reshape(-1, 2) - 1.0, ms.float32)  # (HW, 2)
        self.log_rescale = math.log(rescale_coords) if rescale_coords else None

    def construct(self) -> Tuple[ms.Tensor, ms.Tensor]:
        coords = self.coords
        if self.training and self.log_rescale is not None:
            coords = coords * ops.exp(ops.uniform((1,), ms.Tensor(-self.log_rescale, ms.float32),
                                                  ms.Tensor(self.log_rescale, ms.float32)))
        angles = (2 * math.pi) * coords.reshape(-1, 2, 1) / self.periods.reshape(1, 1, -1)  # (HW, 2, head_dim / 4)
        angles = angles.reshape(angles.shape[0], -1)
        angles = ops.concat((angles, angles), axis=-1)  # (HW, head_dim)
        return ops.sin(angles), ops.cos(angles)


def _rotate(x: ms.Tensor, sin: ms.Tensor, cos: ms.Tensor) -> ms.Tensor:
    """x * cos + rotate_half(x) * sin on the last axis, rotate_half(x) = (-second half, first half)."""
    half = x.shape[-1] // 2
    return x * cos + ops.concat((-x[..., half:], x[..., :half]), axis=-1) * sin


def key_bias_mask(dim: int) -> np.ndarray:
    """DINOv3's LinearKMaskedBias mask over the packed qkv bias: 1 for queries and values, 0 for the keys."""
    mask = np.ones(3 * dim, np.float32)
    mask[dim:2 * dim] = 0.0
    return mask


class Attention(PolicyCell):
    """timm's Attention (explicit softmax, as timm with fused_attn off): the scores' softmax in the accurate dtype,
    both batched matmuls in the matmul dtype. With `rope`, Meta's DINOv3 SelfAttention: rotary embeddings on the
    patch tokens' queries and keys (the `num_prefix_tokens` before them are not rotated), in float32 as Meta's rope
    dtype, and optionally the key bias masked to zero."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, rope: bool = False,
                 num_prefix_tokens: int = 1, mask_k_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.rope = bool(rope)
        self.num_prefix_tokens = num_prefix_tokens
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias, bias_mask=key_bias_mask(dim) if mask_k_bias else None)
        self.proj = Linear(dim, dim)
        self.matmul_qk = ops.BatchMatMul(transpose_b=True)
        self.matmul_av = ops.BatchMatMul()
        self.softmax = Softmax()

    def _rope(self, x: ms.Tensor, sin: ms.Tensor, cos: ms.Tensor) -> ms.Tensor:
        prefix = self.num_prefix_tokens
        rotated = _rotate(cast(x[:, :, prefix:, :], ms.float32), sin, cos)
        return ops.concat((x[:, :, :prefix, :], cast(rotated, x.dtype)), axis=2)

    def _probs_and_values(self, x: ms.Tensor, sin: Optional[ms.Tensor],
                          cos: Optional[ms.Tensor]) -> Tuple[ms.Tensor, ms.Tensor]:
        qkv, dim = self.qkv(x), x.shape[-1]
        if self.cpu_forms:
            q, k, v = ops.split(qkv, dim, axis=-1)
        else:  # slices: a graph exported with a free batch dimension cannot split (its output count is unknown)
            q, k, v = qkv[..., :dim], qkv[..., dim:2 * dim], qkv[..., 2 * dim:]
        dtype, heads, cpu = self.matmul_dtype, self.num_heads, self.cpu_forms
        q, k = split_heads(q, heads, cpu), split_heads(k, heads, cpu)
        if self.rope:
            q, k = self._rope(q, sin, cos), self._rope(k, sin, cos)
        q = cast(q * self.scale, dtype)
        scores = cast(self.matmul_qk(q, cast(k, dtype)), self.matmul_out_dtype)
        return self.softmax(scores), split_heads(v, heads, cpu)

    def attention_probs(self, x: ms.Tensor, sin: Optional[ms.Tensor] = None,
                        cos: Optional[ms.Tensor] = None) -> ms.Tensor:
        """(B, heads, N, N): each token's attention over the tokens (what attention rollout reads)."""
        return self._probs_and_values(x, sin, cos)[0]

    def construct(self, x: ms.Tensor, sin: Optional[ms.Tensor] = None, cos: Optional[ms.Tensor] = None) -> ms.Tensor:
        probs, v = self._probs_and_values(x, sin, cos)
        dtype = self.matmul_dtype
        out = cast(self.matmul_av(cast(probs, dtype), cast(v, dtype)), self.matmul_out_dtype)
        return self.proj(merge_heads(out, self.cpu_forms))


class Mlp(nn.Cell):
    """fc1 -> exact GELU -> fc2 (timm's Mlp)."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.act = GELU()
        self.fc2 = Linear(hidden_features, in_features)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUPacked(nn.Cell):
    """DINOv2 ViT-g's feed-forward (timm's SwiGLUPacked; Meta's `w12`/`w3`, renamed fc1/fc2 as upstream does):
    fc1 to a packed width, silu(first half) * second half, fc2 from half that width."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.act = SiLU()
        self.fc2 = Linear(hidden_features // 2, in_features)
        self.half = hidden_features // 2

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = self.fc1(x)
        return self.fc2(self.act(x[..., :self.half]) * x[..., self.half:])


class SwiGLUFFN(nn.Cell):
    """Meta's DINOv3 SwiGLUFFN: w3(silu(w1 x) * w2 x), hidden width 2/3 of the ratio's, rounded up to `align_to`."""

    def __init__(self, in_features: int, hidden_features: int, align_to: int = 8) -> None:
        super().__init__()
        hidden = int(hidden_features * 2 / 3)
        hidden += -hidden % align_to
        self.w1 = Linear(in_features, hidden)
        self.w2 = Linear(in_features, hidden)
        self.w3 = Linear(hidden, in_features)
        self.act = SiLU()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.w3(self.act(self.w1(x)) * self.w2(x))


FFN_LAYERS = {"mlp": Mlp, "swiglu_packed": SwiGLUPacked, "swiglu": SwiGLUFFN}


class Block(PolicyCell):
    """Pre-norm transformer block of every family; its feed-forward comes from FFN_LAYERS by name, LayerScale when
    `layer_scale` is given, rotary attention with `rope`. Each branch is added to the residual stream in the
    residual dtype."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, layer_scale: Optional[float] = None, eps: float = 1e-6,
                 ffn_layer: str = "mlp", rope: bool = False, num_prefix_tokens: int = 1, mask_k_bias: bool = False,
                 ffn_kwargs: Optional[Dict[str, int]] = None) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps)
        self.attn = Attention(dim, num_heads, qkv_bias, rope, num_prefix_tokens, mask_k_bias)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, eps)
        self.mlp = FFN_LAYERS[ffn_layer](dim, int(dim * mlp_ratio), **(ffn_kwargs or {}))
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def attention_probs(self, x: ms.Tensor, sin: Optional[ms.Tensor] = None,
                        cos: Optional[ms.Tensor] = None) -> ms.Tensor:
        """(B, heads, N, N) attention probabilities of this block for its input x (attention rollout)."""
        return self.attn.attention_probs(self.norm1(cast(x, self.residual_dtype)), sin, cos)

    def forward_from_normed(self, x: ms.Tensor, normed: ms.Tensor, sin: Optional[ms.Tensor] = None,
                            cos: Optional[ms.Tensor] = None) -> ms.Tensor:
        """The block's output from its input x and norm1(x): construct's body, which Grad-CAM differentiates with
        respect to `normed` (the tokens the block reads)."""
        x = cast(x, self.residual_dtype)
        x = x + cast(self.drop_path1(self.ls1(self.attn(normed, sin, cos))), x.dtype)
        return x + cast(self.drop_path2(self.ls2(self.mlp(self.norm2(x)))), x.dtype)

    def construct(self, x: ms.Tensor, sin: Optional[ms.Tensor] = None, cos: Optional[ms.Tensor] = None) -> ms.Tensor:
        x = cast(x, self.residual_dtype)
        return self.forward_from_normed(x, self.norm1(x), sin, cos)


class EncoderInterface:
    """What training, prediction, heat maps and export use of every family (timm's forward_features /
    forward_head split). A family defines embed_tokens, forward_tokens, pool_features and pool_embedding; blocks
    are `Block`s, called with block_args()."""

    num_prefix_tokens = 1  # tokens before the patches (class token; DINOv3 adds its storage tokens)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def block_args(self) -> Tuple:
        """What each block takes beside the tokens (DINOv3: its rotary tables)."""
        return ()

    def forward_features(self, x: ms.Tensor) -> ms.Tensor:
        """The vector `head` receives (forward_embedding gives the one users extract)."""
        return self.pool_features(self.forward_tokens(x))

    def forward_embedding(self, x: ms.Tensor) -> ms.Tensor:
        return self.pool_embedding(self.forward_tokens(x))

    def forward_head(self, x: ms.Tensor, pre_logits: bool = False) -> ms.Tensor:
        return x if pre_logits else self.head(x)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.forward_head(self.forward_features(x))
