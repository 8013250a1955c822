"""DINOv3 Vision Transformers (facebookresearch/dinov3's DinoVisionTransformer) as MindSpore cells.

Upstream fine-tunes them as `--model Dinov3 --model_arch dinov3_<size>`: torch.hub's model with
pretrained=False, weights from a local `dinov3_<arch>_pretrain.pth` (--finetune), head = Linear(embed_dim,
nb_classes) on the class token. Parameter names are the keys of Meta's checkpoints. What sets DINOv3 apart
from DINOv2: patch 16, four storage (register) tokens after the class token, rotary position embeddings on the
patch tokens' queries and keys (no pos_embed; in training the coordinates are rescaled by a random factor in
[1/2, 2], drawn afresh for every block, as Meta's model does), the key bias masked to zero, LayerNorm eps 1e-5,
and a SwiGLU feed-forward (`w1`, `w2`, `w3`) in the `plus` and 7B sizes.

Deliberate differences from upstream: upstream renames every `mlp.w3.` key to `mlp.fc2.` (DINOv2's rule) and
then loads non-strictly, so the SwiGLU sizes (S+, H+, 7B) silently keep a random `w3`; we load `w3` as it is.
Like upstream's hub models, these have no stochastic depth (upstream does not pass --drop_path to them).
"""
import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops

from models_vit_mindspore import Attention, EncoderInterface, Mlp, PatchEmbed
from util_mindspore.compute_policy import PolicyCell, cast
from util_mindspore.layers import LayerNorm, LayerScale, Linear, SiLU, merge_heads, split_heads, trunc_normal, zeros


class RopePositionEmbedding(PolicyCell):
    """sin and cos tables (HW, head_dim) of Meta's RoPE ('separate' coordinates in [-1, 1], periods
    base ** (2i / (head_dim / 2))). `periods` is a frozen parameter so a checkpoint's own values load by name."""

    def __init__(self, embed_dim, num_heads, grid, base=100.0, rescale_coords=None):
        super().__init__()
        head_dim = embed_dim // num_heads
        exponents = 2 * np.arange(head_dim // 4, dtype=np.float32) / np.float32(head_dim // 2)
        self.periods = Parameter(ms.Tensor(np.float32(base) ** exponents, ms.float32), name="periods",
                                 requires_grad=False)
        axis = (np.arange(grid, dtype=np.float32) + np.float32(0.5)) / np.float32(grid)
        rows, cols = np.meshgrid(axis, axis, indexing="ij")
        self.coords = ms.Tensor(2.0 * np.stack([rows, cols], axis=-1).reshape(-1, 2) - 1.0, ms.float32)  # (HW, 2)
        self.log_rescale = math.log(rescale_coords) if rescale_coords else None

    def construct(self):
        coords = self.coords
        if self.training and self.log_rescale is not None:
            coords = coords * ops.exp(ops.uniform((1,), ms.Tensor(-self.log_rescale, ms.float32),
                                                  ms.Tensor(self.log_rescale, ms.float32)))
        angles = (2 * math.pi) * coords.reshape(-1, 2, 1) / self.periods.reshape(1, 1, -1)  # (HW, 2, head_dim / 4)
        angles = angles.reshape(angles.shape[0], -1)
        angles = ops.concat((angles, angles), axis=-1)  # (HW, head_dim)
        return ops.sin(angles), ops.cos(angles)


def _rotate(x, sin, cos):
    """x * cos + rotate_half(x) * sin on the last axis, rotate_half(x) = (-second half, first half)."""
    half = x.shape[-1] // 2
    return x * cos + ops.concat((-x[..., half:], x[..., :half]), axis=-1) * sin


class RopeAttention(Attention):
    """Meta's SelfAttention: RoPE on the patch tokens' queries and keys (the prefix tokens are not rotated), in
    float32 as Meta's rope dtype; the softmax and matmuls as timm's attention (models_vit_mindspore.Attention)."""

    def __init__(self, dim, num_heads, qkv_bias=True, mask_k_bias=True, num_prefix_tokens=5):
        mask = np.ones(3 * dim, np.float32)
        mask[dim:2 * dim] = 0.0
        super().__init__(dim, num_heads, qkv_bias, qkv_bias_mask=mask if mask_k_bias else None)
        self.num_prefix_tokens = num_prefix_tokens

    def _rope(self, x, sin, cos):
        prefix = self.num_prefix_tokens
        rotated = _rotate(cast(x[:, :, prefix:, :], ms.float32), sin, cos)
        return ops.concat((x[:, :, :prefix, :], cast(rotated, x.dtype)), axis=2)

    def _probs_and_values(self, x, sin, cos):
        qkv, dim = self.qkv(x), x.shape[-1]
        q, k, v = qkv[..., :dim], qkv[..., dim:2 * dim], qkv[..., 2 * dim:]
        dtype, heads, cpu = self.matmul_dtype, self.num_heads, self.cpu_forms
        q = cast(self._rope(split_heads(q, heads, cpu), sin, cos) * self.scale, dtype)
        k = cast(self._rope(split_heads(k, heads, cpu), sin, cos), dtype)
        scores = cast(self.matmul_qk(q, k), self.matmul_out_dtype)
        return self.softmax(scores), split_heads(v, heads, cpu)

    def attention_probs(self, x, sin, cos):
        return self._probs_and_values(x, sin, cos)[0]

    def construct(self, x, sin, cos):
        probs, v = self._probs_and_values(x, sin, cos)
        dtype = self.matmul_dtype
        out = cast(self.matmul_av(cast(probs, dtype), cast(v, dtype)), self.matmul_out_dtype)
        return self.proj(merge_heads(out, self.cpu_forms))


class SwiGLUFFN(nn.Cell):
    """Meta's SwiGLUFFN: w3(silu(w1 x) * w2 x), hidden width 2/3 of the ratio's, rounded up to `align_to`."""

    def __init__(self, dim, hidden_features, align_to=8):
        super().__init__()
        hidden = int(hidden_features * 2 / 3)
        hidden += -hidden % align_to
        self.w1 = Linear(dim, hidden)
        self.w2 = Linear(dim, hidden)
        self.w3 = Linear(hidden, dim)
        self.act = SiLU()

    def construct(self, x):
        return self.w3(self.act(self.w1(x)) * self.w2(x))


class Dinov3Block(PolicyCell):
    def __init__(self, dim, num_heads, ffn_ratio, qkv_bias, mask_k_bias, ffn_layer, swiglu_align, num_prefix_tokens,
                 layerscale_init=1e-5, eps=1e-5):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps)
        self.attn = RopeAttention(dim, num_heads, qkv_bias, mask_k_bias, num_prefix_tokens)
        self.ls1 = LayerScale(dim, layerscale_init)
        self.norm2 = LayerNorm(dim, eps)
        hidden = int(dim * ffn_ratio)
        self.mlp = Mlp(dim, hidden) if ffn_layer == "mlp" else SwiGLUFFN(dim, hidden, swiglu_align)
        self.ls2 = LayerScale(dim, layerscale_init)

    def construct(self, x, sin, cos):
        x = cast(x, self.residual_dtype)
        x = x + cast(self.ls1(self.attn(self.norm1(x), sin, cos)), x.dtype)
        return x + cast(self.ls2(self.mlp(self.norm2(x))), x.dtype)


class DinoVisionTransformer(EncoderInterface, PolicyCell):
    """Meta's DINOv3 ViT with upstream's classifier: logits = head(norm(x)[:, 0]) (its x_norm_clstoken)."""

    def __init__(self, img_size=224, patch_size=16, num_classes=1000, embed_dim=768, depth=12, num_heads=12,
                 ffn_ratio=4.0, qkv_bias=True, ffn_layer="mlp", swiglu_align=8, n_storage_tokens=4, mask_k_bias=True,
                 rope_base=100.0, rope_rescale_coords=2.0, untie_global_and_local_cls_norm=False, eps=1e-5):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.num_prefix_tokens = 1 + n_storage_tokens
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.cls_token = Parameter(trunc_normal((1, 1, embed_dim), std=0.02), name="cls_token")
        self.storage_tokens = Parameter(trunc_normal((1, n_storage_tokens, embed_dim), std=0.02),
                                        name="storage_tokens")
        self.mask_token = Parameter(zeros((1, embed_dim)), name="mask_token")  # masked pre-training only
        self.rope_embed = RopePositionEmbedding(embed_dim, num_heads, self.patch_embed.grid_size, rope_base,
                                                rope_rescale_coords)
        self.blocks = nn.CellList([
            Dinov3Block(embed_dim, num_heads, ffn_ratio, qkv_bias, mask_k_bias, ffn_layer, swiglu_align,
                        self.num_prefix_tokens, eps=eps) for _ in range(depth)])
        self.norm = LayerNorm(embed_dim, eps)
        if untie_global_and_local_cls_norm:  # 7B: a norm for local crops in pre-training; kept for its weights
            self.local_cls_norm = LayerNorm(embed_dim, eps)
        self.head = Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self.head.weight.set_data(trunc_normal((num_classes, embed_dim), std=2e-5))  # upstream's Dinov3 head

    def no_weight_decay(self):
        return set()  # Meta's model has no no_weight_decay(): upstream decays every parameter of 2+ dimensions

    def block_args(self):
        return self.rope_embed()

    def embed_tokens(self, x):
        """Images -> class, storage and patch tokens before the blocks: (B, 5 + N, D)."""
        x = cast(self.patch_embed(x), self.residual_dtype)
        prefix = cast(ops.concat((self.cls_token, self.storage_tokens), axis=1), x.dtype)
        if self.onnx_forms:  # the ONNX exporter writes the batch size into a broadcast: add to a batch-sized zero
            prefix = x[:, :1, :] * 0 + prefix
        else:
            prefix = ops.broadcast_to(prefix, (x.shape[0], self.num_prefix_tokens, self.embed_dim))
        return ops.concat((prefix, x), axis=1)

    def forward_tokens(self, x):
        x = self.embed_tokens(x)
        for blk in self.blocks:
            sin, cos = self.rope_embed()  # per block, as Meta's model: in training each draws its own rescaling
            x = blk(x, sin, cos)
        return x

    def pool_features(self, tokens):
        return self.norm(tokens)[:, 0]

    def pool_embedding(self, tokens):
        """The class token after the final norm (Meta's x_norm_clstoken), what `head` reads."""
        return self.pool_features(tokens)
