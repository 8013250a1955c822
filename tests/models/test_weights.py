"""Loading into a model: published checkpoints against upstream's loading, strict reports, lazy init."""
import json
import os

import mindspore as ms
import numpy as np
import pytest

import models_vit_mindspore as M
from tests.helpers import TOKEN, publish
from tests.parity import assert_within, ms_logits, random_images, relative_error, set_mode
from util_mindspore.checkpoints.conversion import CONVERTER_VERSION, download_and_convert_weights
from util_mindspore.errors import WeightError
from util_mindspore.models import initializers
from util_mindspore.models.weights import load_pretrained_weights
from util_mindspore.registry import get_config

torch = pytest.importorskip("torch", reason="writing checkpoints in the published layouts needs torch")
pytest.importorskip("timm", reason="the PyTorch reference needs timm==0.9.2")
from util_mindspore.reference import checkpoint_layouts as layouts  # noqa: E402
from util_mindspore.reference.torch_models import create_reference  # noqa: E402


def same_random_head(ref, ours):
    """Both sides re-draw the head (std 2e-5, logits near 0); give both one larger head so logits mean something."""
    rng = np.random.default_rng(8)
    weight = (0.05 * rng.standard_normal(tuple(ref.head.weight.shape))).astype(np.float32)
    bias = (0.05 * rng.standard_normal(tuple(ref.head.bias.shape))).astype(np.float32)
    ours.head.weight.set_data(ms.Tensor(weight))
    ours.head.bias.set_data(ms.Tensor(bias))
    with torch.no_grad():
        ref.head.weight.copy_(torch.from_numpy(weight))
        ref.head.bias.copy_(torch.from_numpy(bias))
    return ref


def assert_logits_equal(ours, ref, size, what, bound=5e-6):
    images = random_images(2, size, seed=21)
    with torch.no_grad():
        expected = ref.eval()(torch.from_numpy(images)).numpy()
    assert_within(what, relative_error(ms_logits(ours, images), expected), bound)


@pytest.mark.parametrize("size", [224, 256])
def test_mae_published_checkpoint_downloads_once_converts_once_and_matches_upstream(hub, tmp_path, size):
    set_mode("pynative")
    path = publish(hub, tmp_path, "RETFound_mae_meh", layouts.mae_pretrained)
    ours = M.create_model("vit_tiny_patch16", img_size=size, num_classes=3)
    report = load_pretrained_weights(ours, "RETFound_mae_meh", token=TOKEN)
    assert hub.gets() == 1
    assert set(report.missing) == {"fc_norm.weight", "fc_norm.bias"}
    assert set(report.reinitialized) == {"head.weight", "head.bias"}
    assert "norm.weight" in report.unexpected and not any(k.startswith("decoder") for k in report.unexpected)
    assert {"mask_token", "decoder_pred.weight"} <= set(report.unused_pretraining)  # kept, for pre-training
    assert bool(report.interpolated) == (size != 224)
    ours.set_train(False)
    ref = layouts.upstream_load(create_reference("vit_tiny_patch16", img_size=size, num_classes=3), path)
    assert_logits_equal(ours, same_random_head(ref, ours), size, f"converted MAE layout (tiny) at {size}px")

    converted = str(tmp_path / "ms_cache" / "RETFound_mae_meh.ckpt")
    before = os.stat(converted).st_mtime_ns
    again = download_and_convert_weights("RETFound_mae_meh", token=TOKEN)
    assert hub.gets() == 1  # a cache hit: a HEAD to check the ETag, no GET, no conversion
    assert again == converted and os.stat(converted).st_mtime_ns == before  # not written again
    meta = json.load(open(again[:-len(".ckpt")] + ".json"))
    assert meta["layout"] == "mae" and meta["converter_version"] == CONVERTER_VERSION
    assert len(meta["source_sha256"]) == 64 and meta["repo_id"] == "YukunZhou/RETFound_mae_meh"


@pytest.mark.parametrize("chunked", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_dinov2_teacher_518_to_224_matches_upstream(hub, tmp_path, chunked):
    set_mode("pynative")
    name = "RETFound_dinov2_shanghai" if chunked else "RETFound_dinov2_meh"
    publish(hub, tmp_path, name, layouts.dinov2_pretrained, chunked=chunked, depth=4)
    plain = str(tmp_path / "plain.pth")
    layouts.dinov2_pretrained(plain, chunked=False, depth=4)  # upstream cannot read chunks: compare to plain
    ours = M.create_model("RETFound_dinov2", img_size=224, num_classes=3, depth=4)
    report = load_pretrained_weights(ours, name, token=TOKEN)
    assert report.missing == [] and report.interpolated and set(report.reinitialized) == {"head.weight", "head.bias"}
    ours.set_train(False)
    ref = layouts.upstream_load(create_reference("RETFound_dinov2", img_size=224, num_classes=3, depth=4), plain)
    assert_logits_equal(ours, same_random_head(ref, ours), 224,
                        f"converted DINOv2 teacher 518->224 (depth 4){' chunked' if chunked else ''}", bound=2e-5)


def test_create_model_pretrained_draws_only_what_the_checkpoint_lacks(tmp_path, monkeypatch):
    """create_model(pretrained=...) gives the model that building and then loading gives, seed for seed,
    without filling the loaded parameters with random values first."""
    path = str(tmp_path / "mae.pth")
    layouts.mae_pretrained(path)
    kwargs = dict(img_size=32, num_classes=3, global_pool=True)
    np.random.seed(5)
    eager = M.create_model("vit_tiny_patch16", **kwargs)
    load_pretrained_weights(eager, path, cache_dir=str(tmp_path / "cache"))
    filled, initialize = [], initializers.TruncNormal._initialize
    monkeypatch.setattr(initializers.TruncNormal, "_initialize", lambda self, arr: filled.append(arr.shape)
                        or initialize(self, arr))
    np.random.seed(5)
    lazy = M.create_model("vit_tiny_patch16", pretrained=path, weights_cache_dir=str(tmp_path / "cache"), **kwargs)
    assert filled == [(3, 192)]  # the new head only
    expected = dict(eager.parameters_and_names())
    for name, param in lazy.parameters_and_names():
        assert not param.has_init, name
        np.testing.assert_array_equal(param.asnumpy(), expected[name].asnumpy(), err_msg=name)


def test_upstream_finetuned_checkpoint_keeps_its_head_and_matches(tmp_path):
    set_mode("pynative")
    path = str(tmp_path / "checkpoint-best.pth")
    ref = layouts.finetuned(path, num_classes=3)
    ours = M.create_model("vit_tiny_patch16", img_size=224, num_classes=3)
    report = load_pretrained_weights(ours, path)
    assert report.missing == [] and report.unexpected == [] and report.reinitialized == []
    ours.set_train(False)
    assert_logits_equal(ours, ref, 224, "upstream fine-tuned checkpoint-best.pth (tiny)")


def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    path = str(tmp_path / "dino.pth")
    layouts.dinov2_pretrained(path, depth=2)
    model = M.create_model("vit_tiny_patch16", img_size=224, num_classes=3)
    with pytest.raises(WeightError, match=r"does not fit this model.*cls_token \(1, 1, 1024\)"):
        load_pretrained_weights(model, path)


def test_retfound_dinov2_without_finetune_starts_from_lvd142m_as_timm_loads_it(hub, tmp_path):
    """upstream: timm.create_model('vit_large_patch14_dinov2.lvd142m', pretrained=True, img_size=224). timm shrinks
    pos_embed 37x37 -> 16x16 with antialiasing and leaves the new head at trunc_normal(0.02)."""
    set_mode("pynative")
    source = get_config("RETFound_dinov2").default_weights
    repo, filename = source.name.rsplit("/", 1)
    path = str(tmp_path / filename)
    layouts.timm_dinov2_lvd142m(path, depth=2)
    hub.add(repo, filename, path, gated=False)
    ours = M.create_model("RETFound_dinov2", pretrained=source, img_size=224, num_classes=5, depth=2)
    ref = torch_timm_pretrained(path, depth=2)
    std = float(ours.head.weight.asnumpy().std())
    assert 0.015 < std < 0.025, f"head drawn with std {std}, timm's is 0.02"
    np.testing.assert_allclose(ours.pos_embed.asnumpy(), ref.pos_embed.detach().numpy(), atol=1e-5)
    ours.set_train(False)
    assert_logits_equal(ours, same_random_head(ref, ours), 224, "LVD-142M default weights 518->224 (depth 2)",
                        bound=2e-5)


def torch_timm_pretrained(path, depth):
    import timm
    return timm.create_model("vit_large_patch14_dinov2.lvd142m", pretrained=True, img_size=224, num_classes=5,
                             depth=depth, pretrained_cfg_overlay={"file": path})


@pytest.mark.parametrize("name", ["dinov2_vitb14", "dinov2_vitg14"])
def test_meta_dinov2_checkpoint_as_finetune_matches_upstream(tmp_path, name):
    """upstream --model Dinov2 --finetune dinov2_<arch>_pretrain.pth: a raw state dict, w12/w3 renamed for ViT-g."""
    set_mode("pynative")
    path = str(tmp_path / f"{name}_pretrain.pth")
    layouts.meta_dinov2(path, name, depth=2)
    ours = M.create_model(name, pretrained=path, img_size=224, num_classes=4, depth=2)
    ref = layouts.upstream_load(create_reference(name, img_size=224, num_classes=4, depth=2), path)
    ours.set_train(False)
    assert_logits_equal(ours, same_random_head(ref, ours), 224, f"Meta {name} .pth 518->224 (depth 2)", bound=3e-5)


def test_timm_dinov2_base_default_weights_load_as_timm(hub, tmp_path):
    set_mode("pynative")
    source = get_config("dinov2_vitb14").default_weights
    assert source.name == "timm/vit_base_patch14_dinov2.lvd142m/model.safetensors"
    repo, filename = source.name.rsplit("/", 1)
    path = str(tmp_path / filename)
    layouts.timm_dinov2_lvd142m(path, depth=2, name="dinov2_vitb14")
    hub.add(repo, filename, path)
    ours = M.create_model("dinov2_vitb14", pretrained=source, img_size=224, num_classes=5, depth=2)
    import timm
    ref = timm.create_model("vit_base_patch14_dinov2.lvd142m", pretrained=True, img_size=224, num_classes=5, depth=2,
                            pretrained_cfg_overlay={"file": path})
    ours.set_train(False)
    assert_logits_equal(ours, same_random_head(ref, ours), 224, "timm DINOv2-B default weights (depth 2)", bound=2e-5)


def test_a_checkpoint_of_another_size_names_the_model_it_fits(tmp_path):
    path = str(tmp_path / "dinov2_vits14_pretrain.pth")
    layouts.meta_dinov2(path, "dinov2_vits14")
    with pytest.raises(WeightError, match=r"width 384, 12 blocks, patch 14 \(like --model dinov2_vits14\)"):
        M.create_model("dinov2_vitb14", pretrained=path, img_size=224, num_classes=3)
