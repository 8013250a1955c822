"""RETFound Vision Transformers as MindSpore cells, and `create_model` for every registered name.

Parameter names are the PyTorch state_dict keys of upstream RETFound (timm 0.9.2 VisionTransformer), so a
converted checkpoint loads by name with no renaming table. What each name is (size, family, default weights,
embedding) is one row of util_mindspore/model_registry.py; the parts come from util_mindspore/vit_blocks.py.
"""
import dataclasses
import math
from typing import Optional, Union

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.nn.utils import no_init_parameters

from models_dinov3_mindspore import DinoVisionTransformer
from models_mae_mindspore import MaskedAutoencoderViT
from util_mindspore.compute_policy import PolicyCell, cast
from util_mindspore.errors import WeightError
from util_mindspore.layers import LayerNorm, Linear, trunc_normal
from util_mindspore.model_registry import ModelConfig, WeightsSource, get_config, list_models, resolve_model_name
from util_mindspore.trained_model import TrainedSpec, read_trained_checkpoint
from util_mindspore.vit_blocks import Block, EncoderInterface, PatchEmbed
from util_mindspore.weights import load_arrays_into_model, load_pretrained_weights

__all__ = ["VisionTransformer", "RETFound_mae", "RETFound_dinov2", "create_model", "load_trained_model", "list_models",
           "resolve_model_name", "num_params"]


class VisionTransformer(EncoderInterface, PolicyCell):
    """ViT with a class token and learned position embeddings: RETFound_mae, RETFound_dinov2, DINOv2, timm sizes.

    global_pool=True (upstream RETFound's MAE fine-tuning head): features = fc_norm(fc_norm(mean of patch
    tokens)); no final `norm`. DELIBERATE DOUBLE fc_norm: upstream's `forward_features` applies fc_norm, and timm
    0.9.x's `forward_head` applies the same fc_norm again before `head`. Every fine-tuned upstream checkpoint was
    trained through both, so we apply it twice to give the same logits.
    global_pool=False (and every DINOv2 model): features = norm(x)[:, 0] (class token).
    """

    def __init__(self, config: ModelConfig, img_size: int = 224, num_classes: int = 1000,
                 drop_path_rate: float = 0.0, global_pool: Optional[bool] = None):
        super().__init__()
        self.config = config
        self.patch_mean_embedding = config.embedding == "patch_mean_layernorm"  # a constant graph mode can read
        self.num_classes = num_classes
        self.embed_dim = self.num_features = config.embed_dim
        # DINOv2 (config.global_pool None) pools the class token whatever the flag, as upstream's timm models
        self.global_pool = bool(config.global_pool if global_pool is None or config.global_pool is None
                                else global_pool)
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
        self.head = Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

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


_ARCHITECTURES = {"vit": VisionTransformer, "dinov3": DinoVisionTransformer, "mae": MaskedAutoencoderViT}


def create_model(name: str, pretrained: Union[str, WeightsSource, None] = None, weights_cache_dir: Optional[str] = None,
                 img_size: int = 224, num_classes: int = 1000, drop_path_rate: float = 0.0,
                 global_pool: Optional[bool] = None, **overrides) -> nn.Cell:
    """A registered model (util_mindspore/model_registry.py), optionally with pretrained weights.

    Args:
        name: a registered name (`list_models()`), e.g. "RETFound_mae", "dinov2_vitb14", "mae_vit_large_patch16".
        pretrained: weights loaded as upstream's --finetune loads them: a published name (RETFound_mae_meh...),
            `org/repo[/file]` on the HuggingFace hub, or a local .pth / .safetensors / .ckpt; or a WeightsSource,
            loaded by its own rules (the configuration's `default_weights`: DINOv2's LVD-142M as timm loads it).
            The parameters they replace are never drawn at random (the model is built under
            no_init_parameters); only what the checkpoint lacks (a new head, fc_norm) is.
        weights_cache_dir: where converted weights are cached (default $RETFOUND_MS_CACHE).
        img_size: input size in pixels (a multiple of the patch size).
        num_classes: classes of the new head; 0 builds the encoder without a head.
        drop_path_rate: stochastic depth of the last block (linearly spaced), for families that use it.
        global_pool: mean of the patch tokens (True) or the class token (False); None: the model's default.
        **overrides: configuration fields replaced for this model, e.g. depth=2 for a quick test.

    Returns:
        The cell: a VisionTransformer, DinoVisionTransformer or MaskedAutoencoderViT, in training mode.
    """
    config = get_config(name).replace(**overrides) if overrides else get_config(name)
    build = _ARCHITECTURES[config.architecture]
    if not config.drop_path:
        drop_path_rate = 0.0  # as upstream, which passes no --drop_path to DINOv3's hub models
    if not pretrained:
        return build(config, img_size=img_size, num_classes=num_classes, drop_path_rate=drop_path_rate,
                     global_pool=global_pool)
    with no_init_parameters():  # initializers are built (and seeded) as usual, filled only on demand
        model = build(config, img_size=img_size, num_classes=num_classes, drop_path_rate=drop_path_rate,
                      global_pool=global_pool)
    load_pretrained_weights(model, pretrained, cache_dir=weights_cache_dir)
    model.init_parameters_data()
    return model


@dataclasses.dataclass
class TrainedModel:
    """A model built from a checkpoint with the settings the checkpoint knows (util_mindspore/trained_model.py)."""

    model: nn.Cell
    spec: TrainedSpec

    def __getattr__(self, name: str):  # name, input_size, global_pool, class_names, source, embedding
        return getattr(self.spec, name)


def load_trained_model(source: str, model_name: Optional[str] = None, nb_classes: Optional[int] = None,
                       input_size: Optional[int] = None, global_pool: Optional[bool] = None,
                       with_head: Optional[bool] = True, cache_dir: Optional[str] = None) -> TrainedModel:
    """A trained model (or an encoder) from a checkpoint, every parameter loaded from it, in inference mode.

    Args:
        source: our .ckpt, an upstream fine-tuned checkpoint-best.pth of any family, one of our MAE pre-training
            checkpoints, or a published name (what --resume takes in predict and export).
        model_name: a registered name; default: the one the checkpoint names or its shapes fit.
        nb_classes: must equal the head's classes when given.
        input_size: default: the size the checkpoint was trained at.
        global_pool: default: what the checkpoint holds (for a published MAE encoder: latent_feature.ipynb's).
        with_head: True: a classifier; False: the encoder only (embeddings); None: the head when there is one.
        cache_dir: the converted-weights cache.

    Returns:
        The TrainedModel: the cell and the settings it was built with.
    """
    spec = read_trained_checkpoint(source, model_name, nb_classes, input_size, global_pool, with_head, cache_dir)
    with no_init_parameters():  # every parameter comes from the checkpoint (fc_norm of an encoder excepted)
        model = create_model(spec.name, img_size=spec.input_size, num_classes=spec.num_classes,
                             global_pool=spec.global_pool)
    report = load_arrays_into_model(model, spec.weights, source=spec.source, keep_head=True)
    lacking = [k for k in report.missing + report.reinitialized if k not in spec.may_stay_initial]
    if lacking:
        raise WeightError(f"{spec.source} does not fit --model {spec.name}: it lacks "
                          f"{', '.join(lacking[:4])}{' ...' if len(lacking) > 4 else ''}")
    model.init_parameters_data()
    model.set_train(False)
    spec.weights = {}  # loaded: do not keep a second copy
    return TrainedModel(model, spec)


def RETFound_mae(**kwargs) -> VisionTransformer:
    """upstream models_vit.RETFound_mae: the RETFound-MAE encoder, ViT-L/16."""
    return create_model("RETFound_mae", **kwargs)


def RETFound_dinov2(**kwargs) -> VisionTransformer:
    """upstream models_vit.RETFound_dinov2: timm's vit_large_patch14_dinov2 (LayerScale, class token)."""
    return create_model("RETFound_dinov2", **kwargs)


def num_params(model: nn.Cell) -> int:
    """Trainable parameters (upstream's n_parameters)."""
    return sum(math.prod(p.shape) for p in model.trainable_params())
