"""RETFound_mae, RETFound_dinov2 and the DINOv2 sizes against upstream's models on timm 0.9.2, on the same random
weights: logits at the bounds README_MindSpore.md states (## Parity), gradients, parameter names."""
import mindspore as ms
import numpy as np
import pytest

import models_vit_mindspore as M
from tests.parity import assert_within, both_modes, mindspore_twin, random_images, relative_error, set_mode

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch (pip install -e '.[dev]')")
pytest.importorskip("timm", reason="the PyTorch reference needs timm==0.9.2 (pip install -e '.[dev]')")
from util_mindspore.reference.torch_models import create_reference, numpy_state_dict, randomize_  # noqa: E402


def reference_logits(model, images):
    with torch.no_grad():
        return model.eval()(torch.from_numpy(images)).numpy()


@pytest.mark.parametrize("name,kwargs", [
    ("vit_tiny_patch16", dict(global_pool=True, depth=2)),
    ("vit_tiny_patch16", dict(global_pool=False, depth=2)),
    ("RETFound_dinov2", dict(depth=2)),
])
def test_parameter_names_and_shapes_equal_pytorch_keys(name, kwargs):
    size = 56 if name == "RETFound_dinov2" else 64
    ref = create_reference(name, img_size=size, num_classes=3, **kwargs)
    ours = M.create_model(name, img_size=size, num_classes=3, **kwargs)
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == \
        {k: tuple(p.shape) for k, p in ours.parameters_and_names()}


# (name, image size, global pool, bound): bounds about twice the figures measured here, stated in the README
SMALL = [("vit_tiny_patch16", 64, True, 2e-6), ("vit_tiny_patch16", 48, False, 2e-6),
         ("RETFound_mae", 64, True, 8e-6), ("RETFound_dinov2", 56, None, 1.5e-5)]


@pytest.mark.parametrize("name,size,global_pool,bound", SMALL)
def test_reduced_depth_logits_match_upstream_in_both_modes(name, size, global_pool, bound):
    """Real widths (tiny, ViT-L) at 2 blocks, random weights in the published layout; logits relative to max(1,
    |logit|) (tests/parity.relative_error)."""
    ref = randomize_(create_reference(name, img_size=size, num_classes=4, global_pool=global_pool, depth=2), seed=1)
    ours = mindspore_twin(name, numpy_state_dict(ref), img_size=size, num_classes=4, global_pool=global_pool, depth=2)
    images = random_images(2, size)
    both_modes(f"{name} {size}px global_pool={global_pool} depth 2", ours, images, reference_logits(ref, images),
               bound)


def test_forward_features_is_upstreams_pre_logits_and_forward_embedding_its_forward_features():
    """forward_features: what upstream's head receives (fc_norm twice on timm 0.9); forward_embedding: upstream's
    forward_features (fc_norm once), the vector latent_feature.ipynb extracts."""
    ref = randomize_(create_reference("vit_tiny_patch16", img_size=32, num_classes=3, depth=2), seed=3).eval()
    ours = mindspore_twin("vit_tiny_patch16", numpy_state_dict(ref), img_size=32, num_classes=3, depth=2)
    x = random_images(2, 32)
    with torch.no_grad():
        features = ref.forward_features(torch.from_numpy(x))
        pre_logits = ref.forward_head(features, pre_logits=True).numpy()
        embedding = features.reshape(2, -1).numpy()
    set_mode("pynative")
    assert_within("ViT-Tiny forward_features vs upstream's pre-logits (depth 2)",
                  relative_error(ours.forward_features(ms.Tensor(x)).asnumpy(), pre_logits), 1e-5)
    assert_within("ViT-Tiny forward_embedding vs upstream's forward_features (depth 2)",
                  relative_error(ours.forward_embedding(ms.Tensor(x)).asnumpy(), embedding), 1e-5)
    assert np.abs(pre_logits - embedding).max() > 1e-3  # the two vectors differ: the test tells them apart


@pytest.mark.parametrize("name,size,depth", [("vit_tiny_patch16", 32, 3), ("RETFound_dinov2", 28, 2)])
def test_gradients_match_pytorch(name, size, depth):
    """Every parameter's gradient, through our backward rules (softmax, LayerScale for DINOv2)."""
    set_mode("pynative")
    ref = randomize_(create_reference(name, img_size=size, num_classes=3, depth=depth), seed=2)
    ours = mindspore_twin(name, numpy_state_dict(ref), img_size=size, num_classes=3, depth=depth)
    images, labels = random_images(4, size, seed=3), np.array([0, 2, 1, 2], dtype=np.int32)
    ref.eval().zero_grad()
    torch.nn.functional.cross_entropy(ref(torch.from_numpy(images)), torch.from_numpy(labels).long()).backward()
    ref_grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}
    params = ours.trainable_params()
    _, grads = ms.value_and_grad(lambda x, y: ms.ops.cross_entropy(ours(x), y), None, params)(
        ms.Tensor(images), ms.Tensor(labels))
    assert len(grads) == len(ref_grads)
    worst = max(np.linalg.norm(g.asnumpy() - ref_grads[p.name]) / max(np.linalg.norm(ref_grads[p.name]), 1e-12)
                for p, g in zip(params, grads))
    assert_within(f"{name} gradients, worst relative error", worst, 1e-5)


def test_drop_path_is_random_in_train_mode_only_and_linearly_spaced():
    set_mode("graph")
    model = M.create_model("vit_tiny_patch16", img_size=32, num_classes=3, drop_path_rate=0.3, depth=4)
    np.testing.assert_allclose([blk.drop_path1.drop_prob for blk in model.blocks], [0.0, 0.1, 0.2, 0.3], atol=1e-12)
    x = ms.Tensor(random_images(8, 32))
    model.set_train(True)
    assert np.abs(model(x).asnumpy() - model(x).asnumpy()).max() > 1e-4
    model.set_train(False)
    np.testing.assert_array_equal(model(x).asnumpy(), model(x).asnumpy())


# README ## Parity: ViT-L at full depth, batch 2, float32, both execution modes
VITL = [("RETFound_mae", 224, True, 5e-6), ("RETFound_mae", 256, True, 6e-6), ("RETFound_mae", 224, False, 1.5e-5),
        ("RETFound_dinov2", 224, None, 1.5e-5)]


@pytest.mark.vitl
@pytest.mark.parametrize("name,size,global_pool,bound", VITL)
def test_vit_large_logits_match_upstream(name, size, global_pool, bound):
    ref = randomize_(create_reference(name, img_size=size, num_classes=5, global_pool=global_pool), seed=4)
    images = random_images(2, size, seed=5)
    expected = reference_logits(ref, images)
    state_dict = numpy_state_dict(ref)
    del ref
    ours = mindspore_twin(name, state_dict, img_size=size, num_classes=5, global_pool=global_pool)
    both_modes(f"{name} {size}px global_pool={global_pool} (ViT-L)", ours, images, expected, bound)


def assert_twin_logits(name, size, bound, what, seed=7, **size_kwargs):
    """Logits of our model and the reference on the same random weights; the head is scaled to give logits of
    order 1 (randomize_'s 0.05 weights give 5 on ViT-g, where float32 rounding alone is 4e-6 relative)."""
    ref = randomize_(create_reference(name, img_size=size, num_classes=5, **size_kwargs), seed=seed)
    with torch.no_grad():
        ref.head.weight.mul_(0.2)
    images = random_images(2, size, seed=seed)
    expected = reference_logits(ref, images)
    state_dict = numpy_state_dict(ref)
    del ref
    ours = mindspore_twin(name, state_dict, img_size=size, num_classes=5, **size_kwargs)
    both_modes(what, ours, images, expected, bound)


DINOV2_DEPTH2 = [("dinov2_vits14", 1e-6), ("dinov2_vitb14", 3e-6), ("dinov2_vitl14", 3e-6), ("dinov2_vitg14", 6e-6)]


@pytest.mark.parametrize("name,bound", DINOV2_DEPTH2)
def test_dinov2_family_at_reduced_depth_matches_timm(name, bound):
    """upstream's --model Dinov2 --model_arch <name> (timm vit_*_patch14_dinov2), real widths, 2 blocks."""
    assert_twin_logits(name, 56, bound, f"{name} 56px depth 2", depth=2)


@pytest.mark.slow
@pytest.mark.parametrize("name,bound", [("dinov2_vits14", 5e-6), ("dinov2_vitb14", 2e-5)])
def test_dinov2_small_and_base_at_full_depth_match_timm(name, bound):
    assert_twin_logits(name, 224, bound, f"{name} 224px full depth")


@pytest.mark.vitl
def test_dinov2_large_at_full_depth_matches_timm():
    assert_twin_logits("dinov2_vitl14", 224, 2e-5, "dinov2_vitl14 224px full depth (ViT-L)")
