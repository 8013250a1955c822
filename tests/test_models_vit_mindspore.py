import mindspore as ms
import numpy as np
import pytest

import models_vit_mindspore as M
from tests.parity import mindspore_twin, ms_logits, random_images, record, set_mode

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch (pip install -e '.[dev]')")
pytest.importorskip("timm", reason="the PyTorch reference needs timm==0.9.2 (pip install -e '.[dev]')")
from tests.torch_reference import create_reference, numpy_state_dict, randomize_  # noqa: E402


def reference_logits(model, images):
    with torch.no_grad():
        return model.eval()(torch.from_numpy(images)).numpy()


def test_registry_lists_every_model_and_rejects_unknown_names():
    assert {"RETFound_mae", "RETFound_dinov2", "vit_tiny_patch16", "vit_small_patch16",
            "vit_base_patch16"} <= set(M.list_models())
    with pytest.raises(KeyError, match="RETFound_mae"):
        M.create_model("RETFound_mea")


@pytest.mark.parametrize("name,kwargs", [
    ("vit_tiny_patch16", dict(global_pool=True)),
    ("vit_tiny_patch16", dict(global_pool=False)),
    ("RETFound_dinov2", dict(depth=2)),
])
def test_parameter_names_and_shapes_equal_pytorch_keys(name, kwargs):
    ref = create_reference(name, img_size=56 if name == "RETFound_dinov2" else 64, num_classes=3, **kwargs)
    ours = M.create_model(name, img_size=56 if name == "RETFound_dinov2" else 64, num_classes=3,
                          **({"depth": 2} if "depth" in kwargs else {"global_pool": kwargs["global_pool"]}))
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(p.shape) for k, p in ours.parameters_and_names()}
    assert our_shapes == ref_shapes


@pytest.mark.parametrize("mode", ["pynative", "graph"])
@pytest.mark.parametrize("name,size,global_pool", [
    ("vit_tiny_patch16", 64, True), ("vit_tiny_patch16", 48, False), ("RETFound_dinov2", 56, None)])
def test_small_model_logits_match_pytorch(mode, name, size, global_pool):
    set_mode(mode)
    depth = {"depth": 2} if name == "RETFound_dinov2" else {}
    ref = randomize_(create_reference(name, img_size=size, num_classes=4, global_pool=global_pool, **depth), seed=1)
    ours = mindspore_twin(name, numpy_state_dict(ref), img_size=size, num_classes=4, global_pool=global_pool, **depth)
    images = random_images(2, size)
    diff = np.abs(ms_logits(ours, images) - reference_logits(ref, images)).max()
    record(f"{name} {size}px global_pool={global_pool} {mode}", diff)
    assert diff <= 1e-4


def test_forward_features_is_what_head_receives():
    set_mode("pynative")
    model = M.create_model("vit_tiny_patch16", img_size=32, num_classes=3)
    model.set_train(False)
    x = ms.Tensor(random_images(2, 32))
    features = model.forward_features(x)
    assert features.shape == (2, 192)
    np.testing.assert_allclose(model(x).asnumpy(), model.head(features).asnumpy(), rtol=0, atol=0)


@pytest.mark.parametrize("name,size,depth", [("vit_tiny_patch16", 32, 3), ("RETFound_dinov2", 28, 2)])
def test_gradients_match_pytorch(name, size, depth):
    """Every parameter's gradient, through our backward rules (softmax, drop path off, LayerScale for DINOv2)."""
    set_mode("pynative")
    ref = randomize_(create_reference(name, img_size=size, num_classes=3, depth=depth), seed=2)
    ours = mindspore_twin(name, numpy_state_dict(ref), img_size=size, num_classes=3, depth=depth)
    images, labels = random_images(4, size, seed=3), np.array([0, 2, 1, 2], dtype=np.int32)

    ref.eval().zero_grad()
    torch.nn.functional.cross_entropy(ref(torch.from_numpy(images)), torch.from_numpy(labels).long()).backward()
    ref_grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}

    params = ours.trainable_params()
    loss_fn = lambda x, y: ms.ops.cross_entropy(ours(x), y)  # noqa: E731
    _, grads = ms.value_and_grad(loss_fn, None, params)(ms.Tensor(images), ms.Tensor(labels))
    assert len(grads) == len(ref_grads)
    worst = 0.0
    for p, g in zip(params, grads):
        expected = ref_grads[p.name]
        rel = np.linalg.norm(g.asnumpy() - expected) / max(np.linalg.norm(expected), 1e-12)
        worst = max(worst, rel)
        assert rel <= 1e-5, f"{p.name}: relative gradient error {rel:.2e}"
    record(f"{name} gradients, worst relative error", worst)


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_drop_path_is_random_in_train_mode_only(mode):
    set_mode(mode)
    model = M.create_model("vit_tiny_patch16", img_size=32, num_classes=3, drop_path_rate=0.5, depth=4)
    x = ms.Tensor(random_images(4, 32))
    model.set_train(True)
    a, b = model(x).asnumpy(), model(x).asnumpy()
    assert np.abs(a - b).max() > 1e-4
    model.set_train(False)
    c, d = model(x).asnumpy(), model(x).asnumpy()
    np.testing.assert_array_equal(c, d)


def test_drop_path_rates_are_linearly_spaced():
    model = M.create_model("vit_tiny_patch16", img_size=32, drop_path_rate=0.3, depth=4)
    rates = [blk.drop_path1.drop_prob for blk in model.blocks]
    np.testing.assert_allclose(rates, [0.0, 0.1, 0.2, 0.3], atol=1e-12)


@pytest.mark.vitl
@pytest.mark.parametrize("name,size,global_pool", [
    ("RETFound_mae", 224, True), ("RETFound_mae", 256, True), ("RETFound_mae", 224, False),
    ("RETFound_dinov2", 224, None)])
def test_vit_large_logits_match_pytorch(name, size, global_pool):
    ref = randomize_(create_reference(name, img_size=size, num_classes=5, global_pool=global_pool), seed=4)
    images = random_images(2, size, seed=5)
    expected = reference_logits(ref, images)
    state_dict = numpy_state_dict(ref)
    del ref
    for mode in ("pynative", "graph"):
        set_mode(mode)
        ours = mindspore_twin(name, state_dict, img_size=size, num_classes=5, global_pool=global_pool)
        diff = np.abs(ms_logits(ours, images) - expected).max()
        record(f"{name} {size}px global_pool={global_pool} {mode} (ViT-L)", diff)
        assert diff <= 1e-4, f"{mode}: max |diff| {diff:.2e}"


DINOV2_ARCHS = ["dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14"]


def assert_twin_logits(name, size, tolerance, what, seed=7, **size_kwargs):
    """Logits of our model and the reference on the same random weights; the head is scaled to give logits of
    order 1 (randomize_'s 0.05 weights give 5 on ViT-g, where float32 rounding alone is 4e-6 relative)."""
    ref = randomize_(create_reference(name, img_size=size, num_classes=5, **size_kwargs), seed=seed)
    with torch.no_grad():
        ref.head.weight.mul_(0.2)
    images = random_images(2, size, seed=seed)
    expected = reference_logits(ref, images)
    state_dict = numpy_state_dict(ref)
    assert {k: tuple(v.shape) for k, v in state_dict.items()} == {
        k: tuple(p.shape) for k, p in M.create_model(name, img_size=size, num_classes=5, **size_kwargs)
        .parameters_and_names()}
    del ref
    ours = mindspore_twin(name, state_dict, img_size=size, num_classes=5, **size_kwargs)  # one model, both modes
    for mode in ("pynative", "graph"):
        set_mode(mode)
        diff = np.abs(ms_logits(ours, images) - expected).max()
        record(f"{what} {mode}", diff)
        assert diff <= tolerance, f"{mode}: max |diff| {diff:.2e}"


@pytest.mark.parametrize("name", DINOV2_ARCHS)
def test_dinov2_family_at_reduced_depth_matches_timm(name):
    """upstream's --model Dinov2 --model_arch <name> (timm vit_*_patch14_dinov2), real widths, 2 blocks."""
    assert_twin_logits(name, 56, 1e-5, f"{name} 56px depth 2", depth=2)


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vitb14"])
def test_dinov2_small_and_base_at_full_depth_match_timm(name):
    assert_twin_logits(name, 224, 1e-5, f"{name} 224px full depth")


@pytest.mark.vitl
def test_dinov2_large_at_full_depth_matches_timm():
    assert_twin_logits("dinov2_vitl14", 224, 1e-5, "dinov2_vitl14 224px full depth (ViT-L)")


def test_family_names_take_model_arch_as_upstream():
    assert M.resolve_model_name("Dinov2", "dinov2_vitb14") == "dinov2_vitb14"
    assert M.resolve_model_name("RETFound_mae", "dinov3_vits16") == "RETFound_mae"  # ignored, as upstream
    with pytest.raises(ValueError, match="--model Dinov2 --model_arch dinov2_vitx14: choose --model_arch from"):
        M.resolve_model_name("Dinov2", "dinov2_vitx14")
    assert M.default_input_size("dinov2_vitg14") == 224 and M.default_input_size("RETFound_mae") == 256


DINOV3_ARCHS = ["dinov3_vits16", "dinov3_vits16plus", "dinov3_vitb16", "dinov3_vitl16", "dinov3_vith16plus",
                "dinov3_vit7b16"]


def assert_dinov3_matches_timm(name, tmp_path, img_size, depth=None, tolerance=1e-5):
    """Meta-layout random weights, loaded by us through the converter and by timm >= 1.0.20 through its own key
    conversion (tests/dinov3_reference.py); logits of the same images, PYNATIVE and GRAPH."""
    from tests import checkpoint_layouts, dinov3_reference
    if not dinov3_reference.available():
        pytest.skip(dinov3_reference.install_hint())
    path = str(tmp_path / f"{name}_pretrain.pth")
    sd = checkpoint_layouts.meta_dinov3(path, name, depth=depth)
    embed_dim = sd["cls_token"].shape[-1]
    rng = np.random.default_rng(3)
    head = {"weight": (rng.standard_normal((5, embed_dim)) * 0.2 / embed_dim ** 0.5).astype(np.float32),
            "bias": (rng.standard_normal(5) * 0.1).astype(np.float32)}
    del sd
    images = random_images(2, img_size, seed=9)
    expected = dinov3_reference.reference_logits(name, path, depth, img_size, head, images, str(tmp_path))
    size = {} if depth is None else {"depth": depth}
    ours = M.create_model(name, pretrained=path, img_size=img_size, num_classes=5, **size)  # one model, both modes
    ours.head.weight.set_data(ms.Tensor(head["weight"]))
    ours.head.bias.set_data(ms.Tensor(head["bias"]))
    for mode in ("pynative", "graph"):
        set_mode(mode)
        diff = np.abs(ms_logits(ours, images) - expected).max()
        record(f"{name} {img_size}px {'full depth' if depth is None else f'depth {depth}'} {mode}", diff)
        assert diff <= tolerance, f"{mode}: max |diff| {diff:.2e}"


@pytest.mark.parametrize("name", DINOV3_ARCHS)
def test_dinov3_family_at_reduced_depth_matches_timm(name, tmp_path):
    assert_dinov3_matches_timm(name, tmp_path, 64, depth=2)


@pytest.mark.parametrize("name", ["dinov3_vits16", "dinov3_vitb16"])
def test_dinov3_small_and_base_at_full_depth_match_timm(name, tmp_path):
    assert_dinov3_matches_timm(name, tmp_path, 224)


@pytest.mark.vitl
def test_dinov3_large_at_full_depth_matches_timm(tmp_path):
    assert_dinov3_matches_timm("dinov3_vitl16", tmp_path, 224)
