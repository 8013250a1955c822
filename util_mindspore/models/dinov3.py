"""DINOv3 Vision Transformers (facebookresearch/dinov3's DinoVisionTransformer) as MindSpore cells.

Upstream fine-tunes them as `--model Dinov3 --model_arch dinov3_<size>`: torch.hub's model with
pretrained=False, weights from a local `dinov3_<arch>_pretrain.pth` (--finetune), head = Linear(embed_dim,
nb_classes) on the class token. Parameter names are the keys of Meta's checkpoints (and of upstream's fine-tuned
checkpoint-best.pth, which adds `head.*`). What sets DINOv3 apart from DINOv2: patch 16, four storage (register)
tokens after the class token, rotary position embeddings on the patch tokens' queries and keys (no pos_embed; in
training the coordinates are rescaled by a random factor in [1/2, 2], drawn afresh for every block, as Meta's
model does), the key bias masked to zero, LayerNorm eps 1e-5, and a SwiGLU feed-forward (`w1`, `w2`, `w3`) in the
`plus` and 7B sizes. The sizes are rows of util_mindspore/registry.py.

Deliberate differences from upstream: upstream renames every `mlp.w3.` key to `mlp.fc2.` (DINOv2's rule) and
then loads non-strictly, so the SwiGLU sizes (S+, L+, H+, 7B) silently keep a random `w3`; we load `w3` as it is.
Like upstream's hub models, these have no stochastic depth (upstream does not pass --drop_path to them).
"""

from typing import Optional, Tuple

from mindspore import Parameter, Tensor, nn, ops

from util_mindspore.models.blocks import Block, EncoderInterface, PatchEmbed, RopePositionEmbedding
from util_mindspore.models.compute_policy import PolicyCell, cast
from util_mindspore.models.layers import LayerNorm, Linear, trunc_normal, zeros
from util_mindspore.registry import ModelConfig


class DinoVisionTransformer(EncoderInterface, PolicyCell):
    """Meta's DINOv3 ViT with upstream's classifier: logits = head(norm(x)[:, 0]) (its x_norm_clstoken)."""

    def __init__(self, config: ModelConfig, img_size: Optional[int] = None, num_classes: int = 1000) -> None:
        super().__init__()
        img_size = img_size or config.default_input_size  # the row's
        extra, embed_dim = config.extra, config.embed_dim
        self.config = config
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.num_prefix_tokens = config.num_prefix_tokens
        self.patch_embed = PatchEmbed(img_size, config.patch_size, 3, embed_dim)
        self.cls_token = Parameter(trunc_normal((1, 1, embed_dim), std=0.02), name="cls_token")
        self.storage_tokens = Parameter(trunc_normal((1, extra["n_storage_tokens"], embed_dim), std=0.02),
                                        name="storage_tokens")
        self.mask_token = Parameter(zeros((1, embed_dim)), name="mask_token")  # masked pre-training only
        self.rope_embed = RopePositionEmbedding(embed_dim, config.num_heads, self.patch_embed.grid_size,
                                                extra["rope_base"], extra["rope_rescale_coords"])
        ffn_kwargs = {"align_to": extra["swiglu_align"]} if config.ffn_layer == "swiglu" else {}
        self.blocks = nn.CellList([
            Block(embed_dim, config.num_heads, config.mlp_ratio, config.qkv_bias, layer_scale=config.layer_scale,
                  eps=config.norm_eps, ffn_layer=config.ffn_layer, rope=True,
                  num_prefix_tokens=self.num_prefix_tokens, mask_k_bias=extra["mask_k_bias"],
                  ffn_kwargs=ffn_kwargs) for _ in range(config.depth)])
        self.norm = LayerNorm(embed_dim, config.norm_eps)
        if extra["untie_global_and_local_cls_norm"]:  # 7B: a norm for local crops in pre-training; kept for its weights
            self.local_cls_norm = LayerNorm(embed_dim, config.norm_eps)
        self.head = Linear(embed_dim, num_classes, init_std=config.head_init_std) if num_classes > 0 else nn.Identity()

    def no_weight_decay(self) -> set:
        return set()  # Meta's model has no no_weight_decay(): upstream decays every parameter of 2+ dimensions

    def block_args(self) -> Tuple[Tensor, Tensor]:
        return self.rope_embed()

    def embed_tokens(self, x: Tensor) -> Tensor:
        """Images -> class, storage and patch tokens before the blocks: (B, 5 + N, D)."""
        x = cast(self.patch_embed(x), self.residual_dtype)
        prefix = cast(ops.concat((self.cls_token, self.storage_tokens), axis=1), x.dtype)
        if self.onnx_forms:  # the ONNX exporter writes the batch size into a broadcast: add to a batch-sized zero
            prefix = x[:, :1, :] * 0 + prefix
        else:
            prefix = ops.broadcast_to(prefix, (x.shape[0], self.num_prefix_tokens, self.embed_dim))
        return ops.concat((prefix, x), axis=1)

    def forward_tokens(self, x: Tensor) -> Tensor:
        x = self.embed_tokens(x)
        for blk in self.blocks:
            sin, cos = self.rope_embed()  # per block, as Meta's model: in training each draws its own rescaling
            x = blk(x, sin, cos)
        return x

    def pool_features(self, tokens: Tensor) -> Tensor:
        return self.norm(tokens)[:, 0]

    def pool_embedding(self, tokens: Tensor) -> Tensor:
        """The class token after the final norm (Meta's x_norm_clstoken), what `head` reads."""
        return self.pool_features(tokens)
