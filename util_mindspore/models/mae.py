"""The masked autoencoder RETFound was pre-trained with (upstream models_mae.py, after facebookresearch/mae), as
MindSpore cells: `mae_vit_base_patch16`, `mae_vit_large_patch16` (RETFound's), `mae_vit_huge_patch14`, each with
a 512-d, 8-block decoder (rows of util_mindspore/registry.py).

Parameter names are upstream's keys, so the published RETFound MAE checkpoints (encoder and decoder) load by name
and every checkpoint we write is a valid --finetune source: the encoder's keys are the ViT's. The position
embeddings are fixed 2-D sin-cos tables (Parameters that never train, never decay).

`construct(imgs, mask_ratio, noise)` returns (loss, pred, mask) as upstream's forward does; `noise` (N, L) is the
uniform draw upstream's random_masking takes from torch.rand, so the same noise masks the same patches.
"""

from typing import Iterable, Optional, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops

from util_mindspore.models.blocks import Block, PatchEmbed
from util_mindspore.models.compute_policy import PolicyCell, cast
from util_mindspore.models.layers import LayerNorm, Linear, trunc_normal, xavier_uniform, zeros
from util_mindspore.models.pos_embed import sincos_pos_embed
from util_mindspore.registry import ModelConfig


def _fixed_pos_embed(dim: int, grid: int, name: str) -> Parameter:
    table = sincos_pos_embed(dim, grid, cls_token=True).astype(np.float32)[None]
    return Parameter(ms.Tensor(table), name=name, requires_grad=False)


def _xavier_linears(cells: Iterable[Tuple[str, nn.Cell]]) -> None:
    """upstream's _init_weights: every Linear xavier_uniform with a zero bias (LayerNorms are 1 / 0 already)."""
    for _, cell in cells:
        if isinstance(cell, Linear):
            cell.weight.set_data(xavier_uniform(cell.weight.shape))
            if cell.bias is not None:
                cell.bias.set_data(zeros(cell.bias.shape))


class MaskedAutoencoderViT(PolicyCell):
    """Masked autoencoder with a ViT encoder (upstream's MaskedAutoencoderViT)."""

    def __init__(self, config: ModelConfig, img_size: Optional[int] = None) -> None:
        super().__init__()
        img_size = img_size or config.default_input_size  # the row's
        extra, dim = config.extra, config.embed_dim
        dec_dim, patch = extra["decoder_embed_dim"], config.patch_size
        self.config = config
        self.norm_pix_loss = bool(extra["norm_pix_loss"])
        self.patch_size = patch
        self.patch_embed = PatchEmbed(img_size, patch, 3, dim)
        grid = self.patch_embed.grid_size
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = Parameter(trunc_normal((1, 1, dim), std=0.02), name="cls_token")
        self.pos_embed = _fixed_pos_embed(dim, grid, "pos_embed")
        self.blocks = nn.CellList([Block(dim, config.num_heads, config.mlp_ratio, config.qkv_bias, eps=config.norm_eps)
                                   for _ in range(config.depth)])
        self.norm = LayerNorm(dim, config.norm_eps)
        self.decoder_embed = Linear(dim, dec_dim)
        self.mask_token = Parameter(trunc_normal((1, 1, dec_dim), std=0.02), name="mask_token")
        self.decoder_pos_embed = _fixed_pos_embed(dec_dim, grid, "decoder_pos_embed")
        self.decoder_blocks = nn.CellList([
            Block(dec_dim, extra["decoder_num_heads"], config.mlp_ratio, extra["decoder_qkv_bias"], eps=config.norm_eps)
            for _ in range(extra["decoder_depth"])])
        self.decoder_norm = LayerNorm(dec_dim, config.norm_eps)
        self.decoder_pred = Linear(dec_dim, patch * patch * 3)
        _xavier_linears(self.cells_and_names())
        self.patch_embed.proj.weight.set_data(xavier_uniform(self.patch_embed.proj.weight.shape))  # as a linear

    def no_weight_decay(self) -> set:
        return set()  # timm's add_weight_decay as upstream calls it: only 1-D parameters (norms, biases) are exempt

    def patchify(self, imgs: ms.Tensor) -> ms.Tensor:
        """(N, 3, H, W) -> (N, L, p*p*3), each patch flattened as (row, column, channel), as upstream."""
        p = self.patch_size
        n, _, h, w = imgs.shape
        x = imgs.reshape(n, 3, h // p, p, w // p, p).transpose(0, 2, 4, 3, 5, 1)
        return x.reshape(n, (h // p) * (w // p), p * p * 3)

    def unpatchify(self, x: ms.Tensor) -> ms.Tensor:
        """(N, L, p*p*3) -> (N, 3, H, W), the inverse of patchify."""
        p = self.patch_size
        n, length, _ = x.shape
        g = int(round(length ** 0.5))
        return x.reshape(n, g, g, p, p, 3).transpose(0, 5, 1, 3, 2, 4).reshape(n, 3, g * p, g * p)

    def random_masking(self, x: ms.Tensor, mask_ratio: float,
                       noise: ms.Tensor) -> Tuple[ms.Tensor, ms.Tensor, ms.Tensor]:
        """Keep the int(L * (1 - mask_ratio)) patches with the smallest noise. Returns the kept tokens, the mask
        (N, L; 1 = removed, in the patches' own order) and the order that restores them."""
        n, length, _ = x.shape
        keep = int(length * (1 - mask_ratio))
        ids_shuffle = ops.argsort(noise, axis=1)
        ids_restore = ops.argsort(ids_shuffle, axis=1)
        kept = ops.gather(x, ids_shuffle[:, :keep], 1, batch_dims=1)
        mask = cast(ids_restore >= keep, ms.float32)
        return kept, mask, ids_restore

    def forward_encoder(self, imgs: ms.Tensor, mask_ratio: float,
                        noise: ms.Tensor) -> Tuple[ms.Tensor, ms.Tensor, ms.Tensor]:
        x = cast(self.patch_embed(imgs), self.residual_dtype)
        x = x + cast(self.pos_embed[:, 1:, :], x.dtype)
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = cast(self.cls_token + self.pos_embed[:, :1, :], x.dtype)
        x = ops.concat((ops.broadcast_to(cls, (x.shape[0], 1, x.shape[2])), x), axis=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: ms.Tensor, ids_restore: ms.Tensor) -> ms.Tensor:
        x = cast(self.decoder_embed(x), self.residual_dtype)
        n, visible, dim = x.shape
        mask_tokens = ops.broadcast_to(cast(self.mask_token, x.dtype), (n, ids_restore.shape[1] + 1 - visible, dim))
        shuffled = ops.concat((x[:, 1:, :], mask_tokens), axis=1)
        x = ops.concat((x[:, :1, :], ops.gather(shuffled, ids_restore, 1, batch_dims=1)), axis=1)
        x = x + cast(self.decoder_pos_embed, x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def forward_loss(self, imgs: ms.Tensor, pred: ms.Tensor, mask: ms.Tensor) -> ms.Tensor:
        """Mean squared error per patch, averaged over the removed patches; with norm_pix_loss each target patch is
        standardised by its own mean and (unbiased, as torch's var) variance."""
        target = self.patchify(cast(imgs, ms.float32))
        if self.norm_pix_loss:
            mean = target.mean(axis=-1, keep_dims=True)
            var = ((target - mean) ** 2).sum(axis=-1, keepdims=True) / (target.shape[-1] - 1)
            target = (target - mean) / ops.sqrt(var + 1e-6)
        loss = ((cast(pred, ms.float32) - target) ** 2).mean(axis=-1)
        return (loss * mask).sum() / mask.sum()

    def construct(self, imgs: ms.Tensor, mask_ratio: float = 0.75,
                  noise: Optional[ms.Tensor] = None) -> Tuple[ms.Tensor, ms.Tensor, ms.Tensor]:
        if noise is None:
            noise = ops.rand((imgs.shape[0], self.num_patches), dtype=ms.float32)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask
