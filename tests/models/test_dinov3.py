"""DINOv3 against timm 1.0.31's DINOv3 (the reference, run in a child process: util_mindspore/reference/dinov3.py),
loading Meta-layout random checkpoints through timm's own key conversion; RoPE's training-time rescaling."""
import mindspore as ms
import numpy as np
import pytest

import models_vit_mindspore as M
from tests.conftest import require
from tests.parity import both_modes, random_images, set_mode

# the default run checks S and S+ (the plain and the SwiGLU block); the wider sizes run with the slow marker
DINOV3_DEPTH2 = [("dinov3_vits16", 2e-6), ("dinov3_vits16plus", 4e-6),
                 *(pytest.param(name, bound, marks=pytest.mark.slow) for name, bound in (
                     ("dinov3_vitb16", 2e-6), ("dinov3_vitl16", 2e-6), ("dinov3_vith16plus", 3e-6),
                     ("dinov3_vit7b16", 5e-6)))]


def dinov3_head(embed_dim, seed=3):
    rng = np.random.default_rng(seed)
    return {"weight": (rng.standard_normal((5, embed_dim)) * 0.2 / embed_dim ** 0.5).astype(np.float32),
            "bias": (rng.standard_normal(5) * 0.1).astype(np.float32)}


def assert_dinov3_matches_timm(name, tmp_path, img_size, bound, depth=None):
    """Meta-layout random weights, loaded by us through the converter and by timm through its own key
    conversion; logits of the same images in graph mode, and PyNative giving graph mode's."""
    pytest.importorskip("torch")
    from util_mindspore.reference import checkpoint_layouts
    from util_mindspore.reference import dinov3 as dinov3_reference
    require(dinov3_reference.available(), dinov3_reference.install_hint())
    path = str(tmp_path / f"{name}_pretrain.pth")
    sd = checkpoint_layouts.meta_dinov3(path, name, depth=depth)
    head = dinov3_head(sd["cls_token"].shape[-1])
    del sd
    images = random_images(2, img_size, seed=9)
    expected = dinov3_reference.reference_logits(name, path, depth, img_size, head, images, str(tmp_path))
    size = {} if depth is None else {"depth": depth}
    ours = M.create_model(name, pretrained=path, img_size=img_size, num_classes=5, **size)
    ours.head.weight.set_data(ms.Tensor(head["weight"]))
    ours.head.bias.set_data(ms.Tensor(head["bias"]))
    ours.set_train(False)
    what = f"{name} {img_size}px {'full depth' if depth is None else f'depth {depth}'}"
    both_modes(what, ours, images, expected, bound)


@pytest.mark.parametrize("name,bound", DINOV3_DEPTH2)
def test_dinov3_family_at_reduced_depth_matches_timm(name, bound, tmp_path):
    assert_dinov3_matches_timm(name, tmp_path, 64, bound, depth=2)


@pytest.mark.slow
@pytest.mark.parametrize("name,bound", [("dinov3_vits16", 1e-6), ("dinov3_vitb16", 3e-6)])
def test_dinov3_small_and_base_at_full_depth_match_timm(name, bound, tmp_path):
    assert_dinov3_matches_timm(name, tmp_path, 224, bound)


@pytest.mark.vitl
def test_dinov3_large_at_full_depth_matches_timm(tmp_path):
    assert_dinov3_matches_timm("dinov3_vitl16", tmp_path, 224, 2e-6)


def test_rotary_coordinates_are_rescaled_in_training_only():
    """Meta's DINOv3 rescales RoPE coordinates by a random factor in [1/2, 2] in training (per block)."""
    set_mode("pynative")
    model = M.create_model("dinov3_vits16", img_size=32, num_classes=3, depth=2)
    for blk in model.blocks:  # LayerScale at 1 (not 1e-5) so attention, where RoPE acts, shows in the features
        blk.ls1.gamma.set_data(ms.Tensor(np.ones(384, np.float32)))
    images = ms.Tensor(random_images(2, 32))
    model.set_train(False)
    np.testing.assert_array_equal(model(images).asnumpy(), model(images).asnumpy())
    column = 384 // 6 // 4 - 1  # the longest period: an angle small enough for arcsin
    sin_eval = model.rope_embed()[0].asnumpy()[0, column]
    model.set_train(True)
    scales = [np.arcsin(model.rope_embed()[0].asnumpy()[0, column]) / np.arcsin(sin_eval) for _ in range(20)]
    assert 0.5 - 1e-4 <= min(scales) < max(scales) <= 2.0 + 1e-4
    assert np.abs(model.forward_features(images).asnumpy() - model.forward_features(images).asnumpy()).max() > 1e-3
    set_mode("graph")


def test_key_bias_mask_is_a_constant_checked_against_metas():
    """Meta's bias_mask buffers load as a check (the same 1 / 0 / 1 mask) and a different one is refused."""
    from util_mindspore.errors import WeightError
    from util_mindspore.models.weights import load_arrays_into_model
    model = M.create_model("dinov3_vits16", img_size=32, num_classes=0, depth=1)
    arrays = {name: p.asnumpy() for name, p in model.parameters_and_names()}
    mask = np.ones(3 * 384, np.float32)
    mask[384:768] = 0
    report = load_arrays_into_model(model, {**arrays, "blocks.0.attn.qkv.bias_mask": mask})
    assert report.verified_constants == ["blocks.0.attn.qkv.bias_mask"] and report.unexpected == []
    with pytest.raises(WeightError, match="blocks.0.attn.qkv.bias_mask is not DINOv3's key-bias mask"):
        load_arrays_into_model(model, {**arrays, "blocks.0.attn.qkv.bias_mask": np.ones(3 * 384, np.float32)})
