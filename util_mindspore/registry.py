"""One table of facts per registered model name, as timm's `default_cfgs`: architecture, family, default input
size, default weights, how a `--finetune` source's position embedding is resized, how a new head is drawn, which
vector is the embedding, and the published RETFound checkpoints each model takes.

Everything that builds, loads, exports or explains a model reads it from here; no behaviour follows from a
checkpoint's file name. Adding a size of an existing family is one row. This module imports nothing of
MindSpore, so the converter, the hub and the weight loader can all read it.
"""
import dataclasses
import types
from typing import Any, Dict, List, Mapping, Optional, Tuple

from util_mindspore.errors import UserError

# How a checkpoint's position embedding is resized to the model's grid (util_mindspore/models/pos_embed.py):
# "bicubic" is upstream main_finetune.py's interpolate_pos_embed (F.interpolate, no antialias);
# "bicubic_antialias" is timm's resample_abs_pos_embed, which timm.create_model(pretrained=True) applies.
POS_EMBED_RESIZES = ("bicubic", "bicubic_antialias")

# Which vector `--embeddings` (predict, export, the Python API's forward_embedding) gives, in the words written into
# outputs' metadata; "forward_features" depends on the pooling (describe_embedding)
EMBEDDINGS = {
    # upstream's forward_features: fc_norm applied once (a published encoder has no fc_norm, so it keeps its initial
    # weight 1 / bias 0, as latent_feature.ipynb's non-strict load leaves it)
    "forward_features": {True: "fc_norm(mean of the patch tokens) (upstream's forward_features, global pool)",
                         False: "norm(class token) (upstream's forward_features, --cls_token)"},
    # latent_feature.ipynb's DINOv2 vector: the mean of the normed patch tokens through a fresh LayerNorm
    "patch_mean_layernorm": "mean of the normed patch tokens, then a LayerNorm without weights "
                            "(latent_feature.ipynb's DINOv2)",
    # DINOv3's x_norm_clstoken, what its head reads
    "class_token": "the class token after the final norm (x_norm_clstoken)",
}


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """Weights a model starts from (its defaults) and how they reach upstream's model."""

    name: str  # what --finetune takes: `org/repo/file` on the hub, a published name, or a file
    pos_embed_resize: str = "bicubic"
    head_init_std: float = 2e-5  # a head the source does not hold is drawn trunc_normal(std)


# upstream main_finetune.py's --finetune: interpolate_pos_embed without antialias, head trunc_normal(2e-5)
FINETUNE = WeightsSource("--finetune", "bicubic", 2e-5)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The facts of one registered model name."""

    name: str
    family: str  # retfound_mae, retfound_dinov2, dinov2, dinov3, vit, mae (pre-training)
    architecture: str  # which cells build it: vit (models_vit_mindspore), dinov3, mae (models_mae_mindspore)
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    ffn_layer: str = "mlp"  # mlp, swiglu_packed (DINOv2 ViT-g), swiglu (DINOv3 w1/w2/w3)
    qkv_bias: bool = True
    layer_scale: Optional[float] = None  # LayerScale's initial gamma (DINOv2, DINOv3)
    norm_eps: float = 1e-6
    default_input_size: int = 256  # upstream's --input_size default, or the size upstream builds the model at
    global_pool: Optional[bool] = True  # the classifier's default pooling; None: always the class token
    head_init_std: float = 0.02  # a head built with the model: trunc_normal(std) (timm's; upstream's DINOv3: 2e-5)
    embedding: str = "forward_features"  # a key of EMBEDDINGS
    default_weights: Optional[WeightsSource] = None  # what it starts from without --finetune (upstream's timm)
    finetune: WeightsSource = FINETUNE
    drop_path: bool = True  # whether --drop_path applies (upstream passes it to timm models only)
    published: Tuple[str, ...] = ()  # RETFound checkpoints on HuggingFace (YukunZhou/<name>) it takes
    reads_unnamed: bool = False  # a checkpoint of this shape that names no model is read as this one (RETFound's)
    upstream_family: Optional[str] = None  # upstream's --model when --model_arch picks this size
    extra: Mapping = dataclasses.field(default_factory=dict)  # architecture-specific (DINOv3 RoPE, MAE decoder)
    encoder: Optional[str] = None  # MAE pre-training: the registered classifier its encoder fine-tunes as
    summary: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", types.MappingProxyType(dict(self.extra)))
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"{self.name}: unknown embedding {self.embedding}")

    def replace(self, **overrides: Any) -> "ModelConfig":
        """This configuration with fields (or `extra` entries) replaced: depth=2 for a quick test model."""
        fields = {f.name for f in dataclasses.fields(self)}
        extra = {k: v for k, v in overrides.items() if k not in fields}
        unknown = [k for k in extra if k not in self.extra]
        if unknown:
            raise TypeError(f"{self.name}: unknown model arguments {', '.join(unknown)}")
        plain = {k: v for k, v in overrides.items() if k in fields}
        return dataclasses.replace(self, **plain, extra={**self.extra, **extra})

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the class token, and DINOv3's storage tokens."""
        return 1 + int(self.extra.get("n_storage_tokens", 0))

    @property
    def is_classifier(self) -> bool:
        return self.architecture != "mae"


_DINOV2_LVD142M = "timm/vit_{}_patch14_dinov2.lvd142m/model.safetensors"
_MAE_DECODER = {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16, "decoder_qkv_bias": True,
                "norm_pix_loss": False}
_DINOV3 = {"n_storage_tokens": 4, "rope_base": 100.0, "rope_rescale_coords": 2.0, "mask_k_bias": True,
           "swiglu_align": 8, "untie_global_and_local_cls_norm": False}


def _vit(name: str, patch: int, dim: int, depth: int, heads: int, summary: str, **facts: Any) -> ModelConfig:
    return ModelConfig(name, facts.pop("family", "vit"), "vit", patch, dim, depth, heads, summary=summary, **facts)


def _dinov2(name: str, size: str, dim: int, depth: int, heads: int, summary: str, **facts: Any) -> ModelConfig:
    return _vit(name, 14, dim, depth, heads, summary, family="dinov2", layer_scale=1e-5, default_input_size=224,
                global_pool=None, embedding="patch_mean_layernorm", upstream_family="Dinov2",
                default_weights=WeightsSource(_DINOV2_LVD142M.format(size), "bicubic_antialias", 0.02), **facts)


def _dinov3(name: str, dim: int, depth: int, heads: int, ffn_ratio: float, swiglu: bool, summary: str,
            **extra: Any) -> ModelConfig:
    return ModelConfig(name, "dinov3", "dinov3", 16, dim, depth, heads, mlp_ratio=ffn_ratio,
                       ffn_layer="swiglu" if swiglu else "mlp", qkv_bias=extra.pop("qkv_bias", True),
                       layer_scale=1e-5, norm_eps=1e-5, global_pool=None, head_init_std=2e-5, embedding="class_token",
                       drop_path=False,
                       upstream_family="Dinov3", extra={**_DINOV3, **extra}, summary=summary)


def _mae(name: str, encoder: str, patch: int, dim: int, depth: int, heads: int, summary: str,
         published: Tuple[str, ...] = (), **decoder: Any) -> ModelConfig:
    return ModelConfig(name, "mae", "mae", patch, dim, depth, heads, default_input_size=224, global_pool=None,
                       encoder=encoder, published=published, extra={**_MAE_DECODER, **decoder}, summary=summary)


RETFOUND_MAE_WEIGHTS = ("RETFound_mae_natureCFP", "RETFound_mae_natureOCT", "RETFound_mae_meh", "RETFound_mae_shanghai")
RETFOUND_DINOV2_WEIGHTS = ("RETFound_dinov2_meh", "RETFound_dinov2_shanghai")

_TABLE = [
    _vit("RETFound_mae", 16, 1024, 24, 16, "RETFound-MAE encoder, ViT-L/16 (upstream models_vit.RETFound_mae)",
         family="retfound_mae", published=RETFOUND_MAE_WEIGHTS, reads_unnamed=True),
    dataclasses.replace(
        _dinov2("RETFound_dinov2", "large", 1024, 24, 16,
                "RETFound-DINOv2 encoder, timm vit_large_patch14_dinov2 (LayerScale, class token)",
                published=RETFOUND_DINOV2_WEIGHTS),
        family="retfound_dinov2", upstream_family=None, reads_unnamed=True),
    _dinov2("dinov2_vits14", "small", 384, 12, 6, "DINOv2 ViT-S/14"),
    _dinov2("dinov2_vitb14", "base", 768, 12, 12, "DINOv2 ViT-B/14"),
    _dinov2("dinov2_vitl14", "large", 1024, 24, 16, "DINOv2 ViT-L/14, RETFound_dinov2's architecture"),
    _dinov2("dinov2_vitg14", "giant", 1536, 40, 24, "DINOv2 ViT-g/14, SwiGLU feed-forward of packed width 8192",
            mlp_ratio=2.66667 * 2, ffn_layer="swiglu_packed"),
    _dinov3("dinov3_vits16", 384, 12, 6, 4.0, False, "DINOv3 ViT-S/16"),
    _dinov3("dinov3_vits16plus", 384, 12, 6, 6.0, True, "DINOv3 ViT-S+/16 (SwiGLU)"),
    _dinov3("dinov3_vitb16", 768, 12, 12, 4.0, False, "DINOv3 ViT-B/16"),
    _dinov3("dinov3_vitl16", 1024, 24, 16, 4.0, False, "DINOv3 ViT-L/16"),
    _dinov3("dinov3_vitl16plus", 1024, 24, 16, 6.0, True, "DINOv3 ViT-L+/16 (SwiGLU)"),
    _dinov3("dinov3_vith16plus", 1280, 32, 20, 6.0, True, "DINOv3 ViT-H+/16 (SwiGLU)"),
    _dinov3("dinov3_vit7b16", 4096, 40, 32, 3.0, True, "DINOv3 ViT-7B/16 (SwiGLU)", swiglu_align=64,
            qkv_bias=False, untie_global_and_local_cls_norm=True),
    _vit("vit_tiny_patch16", 16, 192, 12, 3, "ViT-Tiny/16 (timm's size) for CPU experiments"),
    _vit("vit_small_patch16", 16, 384, 12, 6, "ViT-S/16 (timm's size)"),
    _vit("vit_base_patch16", 16, 768, 12, 12, "ViT-B/16, the encoder of mae_vit_base_patch16"),
    _vit("vit_huge_patch14", 14, 1280, 32, 16, "ViT-H/14, the encoder of mae_vit_huge_patch14",
         default_input_size=224),
    _vit("vit_tiny_patch16_depth2", 16, 192, 2, 3, "a 2-block ViT-Tiny/16: plumbing checks in seconds"),
    _mae("mae_vit_base_patch16", "vit_base_patch16", 16, 768, 12, 12, "MAE ViT-B/16, decoder 512-d x 8"),
    _mae("mae_vit_large_patch16", "RETFound_mae", 16, 1024, 24, 16,
         "MAE ViT-L/16, decoder 512-d x 8: RETFound's pre-training model", published=RETFOUND_MAE_WEIGHTS),
    _mae("mae_vit_huge_patch14", "vit_huge_patch14", 14, 1280, 32, 16, "MAE ViT-H/14, decoder 512-d x 8"),
    _mae("mae_vit_tiny_patch16_depth2", "vit_tiny_patch16_depth2", 16, 192, 2, 3,
         "a 2-block MAE ViT-Tiny/16 with a 1-block 128-d decoder: plumbing checks in seconds",
         decoder_embed_dim=128, decoder_depth=1, decoder_num_heads=4),
]
MODEL_CONFIGS: Dict[str, ModelConfig] = {config.name: config for config in _TABLE}


class UnknownModelError(UserError):
    """A model name the table does not hold (--model, --model_arch, a checkpoint's arguments): one line listing
    the choices."""


def get_config(name: str) -> ModelConfig:
    """The configuration of a registered name; UnknownModelError lists the choices."""
    if name not in MODEL_CONFIGS:
        raise UnknownModelError(f"unknown model '{name}'; choose one of: {', '.join(list_models())}")
    return MODEL_CONFIGS[name]


def register(config: ModelConfig) -> ModelConfig:
    """Add a row (a size of an existing family, a test model); its name must be new."""
    if config.name in MODEL_CONFIGS:
        raise ValueError(f"model '{config.name}' is already registered")
    MODEL_CONFIGS[config.name] = config
    return config


def unregister(name: str) -> None:
    """Remove a row added by register()."""
    MODEL_CONFIGS.pop(name, None)


def list_models(classifiers_only: bool = True, architecture: Optional[str] = None) -> List[str]:
    """Registered names, sorted: the classifiers (classifiers_only), every model (False), or those of one
    architecture ("vit", "dinov3", "mae": the MAE pre-training models)."""
    if architecture is not None:
        return sorted(n for n, c in MODEL_CONFIGS.items() if c.architecture == architecture)
    return sorted(n for n, c in MODEL_CONFIGS.items() if c.is_classifier or not classifiers_only)


def upstream_families() -> Dict[str, Tuple[str, ...]]:
    """upstream's --model names whose size --model_arch picks (Dinov2, Dinov3) -> their registered sizes."""
    families: Dict[str, Tuple[str, ...]] = {}
    for config in MODEL_CONFIGS.values():
        if config.upstream_family:
            families[config.upstream_family] = families.get(config.upstream_family, ()) + (config.name,)
    return families


def resolve_model_name(model: str, model_arch: Optional[str] = None) -> str:
    """upstream's `--model Dinov2 --model_arch dinov2_vitb14` -> `dinov2_vitb14`; other names as they are
    (RETFound models ignore --model_arch, as upstream)."""
    families = upstream_families()
    if model not in families:
        return model
    if model_arch not in families[model]:
        raise UnknownModelError(f"--model {model} --model_arch {model_arch}: choose --model_arch from "
                                f"{', '.join(families[model])}")
    return model_arch


def published_weights() -> Dict[str, str]:
    """Every published RETFound checkpoint name -> the classifier model it belongs to."""
    return {weights: config.name for config in MODEL_CONFIGS.values() if config.is_classifier
            for weights in config.published}


def architectures_like(embed_dim: int, depth: int, patch_size: int) -> List[str]:
    """Registered classifiers of this size (what a checkpoint of another size fits, for error messages)."""
    return [c.name for c in MODEL_CONFIGS.values() if c.is_classifier
            and (c.embed_dim, c.depth, c.patch_size) == (embed_dim, depth, patch_size)]


def models_of_shape(embed_dim: int, depth: int, patch_size: int, storage_tokens: int, layer_scale: bool,
                    architecture: Optional[str] = None) -> List[str]:
    """The registered models whose rows build a checkpoint of this shape (width, blocks, patch, storage tokens,
    LayerScale), the one it is read as first (`reads_unnamed`): which model a checkpoint holds when nothing names
    it. `architecture` narrows to one ("mae": a pre-training checkpoint with its decoder)."""
    fitting = [c for c in MODEL_CONFIGS.values()
               if (c.embed_dim, c.depth, c.patch_size) == (embed_dim, depth, patch_size)
               and int(c.extra.get("n_storage_tokens", 0)) == storage_tokens
               and (c.layer_scale is not None) == layer_scale
               and (c.architecture == architecture if architecture else c.is_classifier)]
    return [c.name for c in sorted(fitting, key=lambda c: not c.reads_unnamed)]


def describe_vit(embed_dim: int, depth: int, patch_size: int) -> str:
    """'a ViT of width 192, 2 blocks, patch 16 (like --model vit_tiny_patch16_depth2)': a checkpoint's size in the
    words of the "does not fit" messages."""
    names = architectures_like(embed_dim, depth, patch_size)
    like = f" (like --model {' / '.join(names)})" if names else ""
    return f"a ViT of width {embed_dim}, {depth} block{'s' if depth != 1 else ''}, patch {patch_size}{like}"


def describe_embedding(config: ModelConfig, global_pool: bool) -> str:
    """What forward_embedding gives for this row at this pooling, in words (EMBEDDINGS)."""
    text = EMBEDDINGS[config.embedding]
    return text[bool(global_pool)] if isinstance(text, dict) else text


def encoder_config(config: ModelConfig) -> ModelConfig:
    """The classifier configuration whose encoder a model has (an MAE's encoder, or the model itself)."""
    return MODEL_CONFIGS[config.encoder] if config.encoder else config
