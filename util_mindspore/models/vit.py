"""The Vision Transformer of RETFound_mae, RETFound_dinov2, DINOv2 and timm's sizes (upstream models_vit.py's
VisionTransformer, on timm 0.9.2's), as MindSpore cells.

Parameter names are the PyTorch state_dict keys, so a converted checkpoint loads by name with no renaming table.
What each registered name is (size, family, default weights, embedding) is a row of util_mindspore/registry.py;
the parts come from util_mindspore/models/blocks.py.
"""
from typing import Optional

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from util_mindspore.models.blocks import Block, EncoderInterface, PatchEmbed
from util_mindspore.models.compute_policy import PolicyCell, cast
from util_mindspore.models.layers import LayerNorm, Linear, trunc_normal
from util_mindspore.registry import ModelConfig


class VisionTransformer(EncoderInterface, PolicyCell):
    """ViT with a class token and learned position embeddings: RETFound_mae, RETFound_dinov2, DINOv2, timm sizes.

    global_pool=True (upstream RETFound's MAE fine-tuning head): features = fc_norm(fc_norm(mean of patch
    tokens)); no final `norm`. DELIBERATE DOUBLE fc_norm: upstream's `forward_features` applies fc_norm, and timm
    0.9.x's `forward_head` applies the same fc_norm again before `head`. Every fine-tuned upstream checkpoint was
    trained through both, so we apply it twice to give the same logits.
    global_pool=False (and every DINOv2 model): features = norm(x)[:, 0] (class token).
    """

    def __init__(self, config: ModelConfig, img_size: Optional[int] = None, num_classes: int = 1000,
                 drop_path_rate: float = 0.0, global_pool: Optional[bool] = None) -> None:
        super().__init__()
        img_size = img_size or config.default_input_size  # the row's
        self.config = config
        self.patch_mean_embedding = config.embedding == "patch_mean_layernorm"  # a constant graph mode can read
        self.num_classes = num_classes
        self.embed_dim = self.num_features = config.embed_dim
        if config.global_pool is None and global_pool is not None:
            raise TypeError(f"{config.name} classifies its class token only (its row's global_pool is None): "
                            "global_pool does not apply")
        self.global_pool = bool(config.global_pool if global_pool is None else global_pool)
        self.eps = config.norm_eps
        embed_dim = config.embed_dim
        self.patch_embed = PatchEmbed(img_size, config.patch_size, 3, embed_dim)
        num_patches = self.patch_embed.num_patches
        # timm's normal_(std=1e-6); drawn by TruncNormal (its +-2 bounds never bind here), which takes its seed when
        # built: MindSpore's Normal takes one from np.random when filled, so create_model(pretrained=...),
        # which never fills cls_token, would then draw a different head from the same seed
        self.cls_token = Parameter(trunc_normal((1, 1, embed_dim), std=1e-6), name="cls_token")
        self.pos_embed = Parameter(trunc_normal((1, num_patches + 1, embed_dim)), name="pos_embed")
        rates = np.linspace(0, drop_path_rate, config.depth).tolist()  # stochastic depth decay rule
        self.blocks = nn.CellList([
            Block(embed_dim, config.num_heads, config.mlp_ratio, config.qkv_bias, rates[i], config.layer_scale,
                  config.norm_eps, config.ffn_layer) for i in range(config.depth)])
        if self.global_pool:
            self.fc_norm = LayerNorm(embed_dim, config.norm_eps)
        else:
            self.norm = LayerNorm(embed_dim, config.norm_eps)
        self.head = Linear(embed_dim, num_classes, init_std=config.head_init_std) if num_classes > 0 else nn.Identity()

    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token"}

    def embed_tokens(self, x: Tensor) -> Tensor:
        """Images -> the class token and patch tokens with position embeddings, before the blocks: (B, 1 + N, D)."""
        x = cast(self.patch_embed(x), self.residual_dtype)
        if self.onnx_forms:  # the ONNX exporter writes the batch size into a broadcast: add to a batch-sized zero
            cls = x[:, :1, :] * 0 + cast(self.cls_token, x.dtype)
        else:
            cls = ops.broadcast_to(cast(self.cls_token, x.dtype), (x.shape[0], 1, self.embed_dim))
        return ops.concat((cls, x), axis=1) + cast(self.pos_embed, x.dtype)

    def forward_tokens(self, x: Tensor) -> Tensor:
        """All tokens after the last block, before any norm: (B, 1 + N, D)."""
        x = self.embed_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return x

    def pool_features(self, tokens: Tensor) -> Tensor:
        """forward_tokens' output -> the (B, embed_dim) vector `head` receives."""
        if self.global_pool:
            x = tokens[:, 1:, :].mean(axis=1)
            return self.fc_norm(self.fc_norm(x))  # twice, as upstream on timm 0.9.x (see class docstring)
        return self.norm(tokens)[:, 0]

    def pool_embedding(self, tokens: Tensor) -> Tensor:
        """forward_tokens' output -> the embedding upstream's latent_feature.ipynb extracts, (B, embed_dim):
        upstream's `forward_features` (global pool: fc_norm(mean of patch tokens), applied once; class token:
        norm(x)[:, 0]); for DINOv2 (config.embedding) the notebook's mean of the normed patch tokens, then a
        LayerNorm without weights (its fresh nn.LayerNorm)."""
        if self.patch_mean_embedding:
            x = cast(self.norm(tokens)[:, 1:, :].mean(axis=1), self.accurate_dtype)
            centred = x - x.mean(axis=-1, keep_dims=True)
            return centred / ops.sqrt((centred * centred).mean(axis=-1, keep_dims=True) + self.eps)
        if self.global_pool:
            return self.fc_norm(tokens[:, 1:, :].mean(axis=1))
        return self.norm(tokens)[:, 0]
