"""`create_model` for every registered name, with or without weights, and `load_trained_model` for a checkpoint
that knows its own model (what predict, export and the service run).
"""
import inspect
import math
from typing import List, Optional, Union

from mindspore import nn
from mindspore.nn.utils import no_init_parameters

from util_mindspore.checkpoints.trained_model import TrainedSpec, read_trained_checkpoint
from util_mindspore.errors import WeightError
from util_mindspore.models.dinov3 import DinoVisionTransformer
from util_mindspore.models.mae import MaskedAutoencoderViT
from util_mindspore.models.vit import VisionTransformer
from util_mindspore.models.weights import load_arrays_into_model, load_pretrained_weights
from util_mindspore.registry import WeightsSource, get_config

_ARCHITECTURES = {"vit": VisionTransformer, "dinov3": DinoVisionTransformer, "mae": MaskedAutoencoderViT}


def create_model(name: str, pretrained: Union[str, WeightsSource, None] = None, weights_cache_dir: Optional[str] = None,
                 img_size: Optional[int] = None, num_classes: Optional[int] = None,
                 drop_path_rate: Optional[float] = None, global_pool: Optional[bool] = None,
                 **overrides: object) -> nn.Cell:
    """A registered model (util_mindspore/registry.py), optionally with pretrained weights.

    Args:
        name: a registered name (`list_models()`), e.g. "RETFound_mae", "dinov2_vitb14", "mae_vit_large_patch16".
        pretrained: weights loaded as upstream's --finetune loads them: a published name (RETFound_mae_meh...),
            `org/repo[/file]` on the HuggingFace hub, or a local .pth / .safetensors / .ckpt; or a WeightsSource,
            loaded by its own rules (the configuration's `default_weights`: DINOv2's LVD-142M as timm loads it).
            The parameters they replace are never drawn at random (the model is built under
            no_init_parameters); only what the checkpoint lacks (a new head, fc_norm) is.
        weights_cache_dir: where converted weights are cached (default $RETFOUND_MS_CACHE).
        img_size: input size in pixels (a multiple of the patch size); default: the row's default input size.
        num_classes: classes of the new head (0: the encoder without a head); classifiers only.
        drop_path_rate: stochastic depth of the last block (linearly spaced); only where the row says it applies.
        global_pool: mean of the patch tokens (True) or the class token (False); only for models that can pool
            either way (None: the row's default).
        **overrides: configuration fields replaced for this model, e.g. depth=2 for a quick test.

    Returns:
        The cell: a VisionTransformer, DinoVisionTransformer or MaskedAutoencoderViT, in training mode.

    Raises:
        TypeError: an argument the model does not use (an MAE's num_classes, DINOv3's drop_path_rate).
    """
    config = get_config(name).replace(**overrides) if overrides else get_config(name)
    build = _ARCHITECTURES[config.architecture]
    given = {key: value for key, value in (("num_classes", num_classes), ("drop_path_rate", drop_path_rate),
                                           ("global_pool", global_pool)) if value is not None}
    takes = inspect.signature(build).parameters
    refused = sorted(key for key in given if key not in takes)
    if refused:
        raise TypeError(f"create_model('{name}'): {build.__name__} takes no {', '.join(refused)}")
    arguments = dict(given, img_size=img_size or config.default_input_size)
    if not pretrained:
        return build(config, **arguments)
    with no_init_parameters():  # initializers are built (and seeded) as usual, filled only on demand
        model = build(config, **arguments)
    load_pretrained_weights(model, pretrained, cache_dir=weights_cache_dir)
    model.init_parameters_data()
    return model


class TrainedModel:
    """A model built from a checkpoint, with the settings the checkpoint gave it
    (util_mindspore/checkpoints/trained_model.py)."""

    def __init__(self, model: nn.Cell, spec: TrainedSpec) -> None:
        self.model, self.spec = model, spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @property
    def global_pool(self) -> bool:
        return self.spec.global_pool

    @property
    def class_names(self) -> Optional[List[str]]:
        return self.spec.class_names

    @property
    def source(self) -> str:
        return self.spec.source

    @property
    def embedding(self) -> str:
        """What forward_embedding gives, in words (written into outputs' metadata)."""
        return self.spec.embedding


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
                             global_pool=spec.global_pool if get_config(spec.name).global_pool is not None else None)
    report = load_arrays_into_model(model, spec.weights, source=spec.source, keep_head=True)
    lacking = [k for k in report.missing + report.reinitialized if k not in spec.may_stay_initial]
    if lacking:
        raise WeightError(f"{spec.source} does not fit --model {spec.name}: it lacks "
                          f"{', '.join(lacking[:4])}{' ...' if len(lacking) > 4 else ''}")
    model.init_parameters_data()
    model.set_train(False)
    spec.weights = {}  # loaded: do not keep a second copy
    return TrainedModel(model, spec)


def num_params(model: nn.Cell) -> int:
    """Trainable parameters (upstream's n_parameters)."""
    return sum(math.prod(p.shape) for p in model.trainable_params())
