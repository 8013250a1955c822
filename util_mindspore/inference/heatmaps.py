"""Where the model looks: attention rollout (Abnar & Zuidema 2020) and Grad-CAM on the last block's tokens.

Rollout: each block's attention averaged over heads, plus the identity (the residual), rows renormalised, and
multiplied from the first block to the last; the class token's row over the patches is the map. No attention is
discarded (the paper's plain rollout). Grad-CAM: the tokens the last block reads, after its first LayerNorm
(pytorch-grad-cam's ViT target layer; a class-token model passes no gradient from its head to the patches of the
last block's output), weighted by the mean gradient of the target class's logit over the patches, summed over
channels, negatives set to 0. Both run eagerly (PyNative) on the model as it is, at its precision.
"""
from typing import TYPE_CHECKING, Optional, Tuple

import mindspore as ms
import numpy as np

from util_mindspore.files.atomic import atomic_write
from util_mindspore.models.compute_policy import cast

if TYPE_CHECKING:
    from PIL import Image

    from util_mindspore.models.blocks import EncoderInterface


class _PyNative:
    def __enter__(self) -> None:
        self.mode = ms.get_context("mode")
        ms.set_context(mode=ms.PYNATIVE_MODE)

    def __exit__(self, *exc: object) -> None:
        ms.set_context(mode=self.mode)


def attention_rollout(model: "EncoderInterface", images: np.ndarray) -> np.ndarray:
    """(B, T, T) float64 rollout matrices over all T tokens (prefix tokens first) for preprocessed images."""
    with _PyNative():
        tokens = model.embed_tokens(ms.Tensor(images))
        extra = model.block_args()
        rollout = None
        for blk in model.blocks:
            attn = blk.attention_probs(tokens, *extra).asnumpy().astype(np.float64).mean(axis=1)
            attn = attn + np.eye(attn.shape[-1])
            attn = attn / attn.sum(axis=-1, keepdims=True)
            rollout = attn if rollout is None else attn @ rollout
            tokens = blk(tokens, *extra)
    return rollout


def grad_cam(model: "EncoderInterface", images: np.ndarray,
             targets: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(maps (B, N) float64, target classes): Grad-CAM of each image's target class (default: its prediction)."""
    with _PyNative():
        x = model.embed_tokens(ms.Tensor(images))
        extra = model.block_args()
        for blk in model.blocks[:-1]:
            x = blk(x, *extra)
        last = model.blocks[-1]
        normed = last.norm1(cast(x, last.residual_dtype))

        def logits_from(a: ms.Tensor) -> ms.Tensor:
            return model.forward_head(model.pool_features(last.forward_from_normed(x, a, *extra))).astype(ms.float32)

        logits = logits_from(normed).asnumpy()
        targets = np.argmax(logits, axis=1) if targets is None else np.asarray(targets)
        onehot = np.zeros(logits.shape, np.float32)
        onehot[np.arange(len(targets)), targets] = 1.0
        selector = ms.Tensor(onehot)
        grads = ms.grad(lambda a: (logits_from(a) * selector).sum())(normed).asnumpy().astype(np.float64)
    prefix = model.num_prefix_tokens
    activations = normed.asnumpy().astype(np.float64)[:, prefix:, :]
    weights = grads[:, prefix:, :].mean(axis=1, keepdims=True)
    return np.maximum((activations * weights).sum(axis=-1), 0.0), targets


def to_grid(values: np.ndarray) -> np.ndarray:
    """(B, N) patch values -> (B, g, g), scaled to [0, 1] per image (all-zero maps stay 0)."""
    grid = int(round(values.shape[1] ** 0.5))
    maps = values.reshape(values.shape[0], grid, grid)
    peak = maps.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, maps / np.where(peak > 0, peak, 1.0), 0.0)


def _overlay(picture: "Image.Image", heat: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps
    from PIL import Image

    size = picture.size
    heat = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize(size, Image.BICUBIC))
    colours = colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3]
    return (0.55 * np.asarray(picture, np.float64) / 255.0 + 0.45 * colours).clip(0, 1)


def save_heatmap_figure(path: str, picture: "Image.Image", rollout_map: np.ndarray, cam_map: np.ndarray,
                        title: str) -> None:
    """One PNG: the picture the model saw, attention rollout over it, Grad-CAM over it, with a colour bar (0: none,
    1: the image's maximum) under the two maps."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from util_mindspore.evaluation.figures import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 4.4))
    panels = ((np.asarray(picture), "image the model saw"), (_overlay(picture, rollout_map), "attention rollout"),
              (_overlay(picture, cam_map), "Grad-CAM"))
    for ax, (shown, name) in zip(axes, panels):
        ax.imshow(shown)
        ax.set_title(name, fontsize=12)
        ax.axis("off")
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), colormaps["jet"]), ax=list(axes), orientation="horizontal",
                       fraction=0.06, pad=0.04)
    bar.set_label("relative weight (1 = this image's maximum)", fontsize=10)
    fig.suptitle(title, fontsize=11)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
