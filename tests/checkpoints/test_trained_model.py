"""Upstream's fine-tuned checkpoints of every family, as upstream writes them, read for inference with their own
settings (its args name the model, its tensors the rest), with upstream's probabilities; and the embedding of a
published MAE encoder, which is latent_feature.ipynb's."""
import contextlib
import os

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

import models_vit_mindspore as M
from tests.conftest import require
from tests.parity import assert_within, relative_error, set_mode
from util_mindspore import registry as R
from util_mindspore.data.transforms import EvalTransform, NotebookEmbeddingTransform
from util_mindspore.errors import WeightError

torch = pytest.importorskip("torch", reason="writing upstream's checkpoints needs torch")
pytest.importorskip("timm", reason="the PyTorch reference needs timm==0.9.2")
from util_mindspore.reference import checkpoint_layouts as layouts  # noqa: E402
from util_mindspore.reference.torch_models import create_reference  # noqa: E402


@contextlib.contextmanager
def reduced(name, depth=2):
    """A registered row of `name` at `depth` blocks (a size of its family, as a user could register one)."""
    row = R.register(R.get_config(name).replace(name=f"{name}_depth{depth}", depth=depth))
    try:
        yield row.name
    finally:
        R.unregister(row.name)


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ours_probabilities(trained, images):
    set_mode("graph")
    return softmax(trained.model(ms.Tensor(images)).asnumpy().astype(np.float64))


def images_for(size, batch=3, seed=4):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


# (family as upstream's args name it, upstream_best's model, --model_arch, image size)
VIT_FAMILIES = [("RETFound_mae", "RETFound_mae", None, 224), ("RETFound_dinov2", "RETFound_dinov2", None, 224),
                ("Dinov2", "dinov2_vits14", "dinov2_vits14", 224), ("Dinov2", "dinov2_vitb14", "dinov2_vitb14", 224),
                ("Dinov2", "dinov2_vitl14", "dinov2_vitl14", 224),
                pytest.param("Dinov2", "dinov2_vitg14", "dinov2_vitg14", 224, marks=pytest.mark.slow)]


@pytest.mark.parametrize("family,name,arch,size", VIT_FAMILIES)
def test_upstream_checkpoint_best_of_each_vit_family_gives_upstreams_probabilities(tmp_path, family, name, arch, size):
    """At 2 blocks (a registered reduced row: upstream's args name the full size, so --model names the row)."""
    path = str(tmp_path / "checkpoint-best.pth")
    with reduced(name) as small:
        upstream = layouts.upstream_best(path, name, img_size=size, depth=2, model=family, model_arch=arch)
        trained = M.load_trained_model(path, model_name=small)
        assert (trained.input_size, trained.class_names) == (size, ["class_0", "class_1", "class_2"])
        images = images_for(size)
        with torch.no_grad():
            expected = torch.softmax(upstream(torch.from_numpy(images)).double(), 1).numpy()
        assert_within(f"upstream checkpoint-best.pth of {family} {name} (depth 2), probabilities",
                      relative_error(ours_probabilities(trained, images), expected), 1e-4)


@pytest.mark.parametrize("name", [name if name in ("dinov3_vits16", "dinov3_vits16plus") else  # plain, SwiGLU
                                  pytest.param(name, marks=pytest.mark.slow)
                                  for name in R.upstream_families()["Dinov3"]])
def test_upstream_checkpoint_best_of_every_dinov3_size_gives_upstreams_probabilities(tmp_path, name):
    """upstream's --model Dinov3 output (Meta's keys, mask_token and bias_mask buffers, a head) against timm 1.0.31's
    DINOv3 with the same weights and head; ViT-L+ (no timm model) against its own load with its own head."""
    from util_mindspore.reference import dinov3 as dinov3_reference
    require(dinov3_reference.available(), dinov3_reference.install_hint())
    path, raw = str(tmp_path / "checkpoint-best.pth"), str(tmp_path / f"{name}_pretrain.pth")
    with reduced(name) as small:
        sd = layouts.upstream_best_dinov3(path, name, img_size=64, depth=2)
        trained = M.load_trained_model(path, model_name=small)
        assert trained.input_size == 64 and len(trained.class_names) == 3
        images = images_for(64)
        if name not in dinov3_reference.TIMM_DINOV3:  # no reference model: the head must be the checkpoint's
            np.testing.assert_array_equal(trained.model.head.weight.asnumpy(), sd["head.weight"])
            return
        layouts.meta_dinov3(raw, name, depth=2)  # the same backbone, Meta's raw file for timm's loader
        head = {"weight": sd["head.weight"], "bias": sd["head.bias"]}
        expected = softmax(dinov3_reference.reference_logits(name, raw, 2, 64, head, images, str(tmp_path)))
        assert_within(f"upstream checkpoint-best.pth of Dinov3 {name} (depth 2), probabilities",
                      relative_error(ours_probabilities(trained, images), expected), 1e-4)


def test_the_checkpoints_own_arguments_name_the_model(tmp_path):
    """No --model: upstream's args (Dinov3 + model_arch, input size) say what to build, at full depth."""
    path = str(tmp_path / "checkpoint-best.pth")
    layouts.upstream_best_dinov3(path, "dinov3_vits16", img_size=48)
    trained = M.load_trained_model(path)
    assert (trained.name, trained.input_size) == ("dinov3_vits16", 48)
    layouts.upstream_best(path, "dinov2_vits14", img_size=56, model="Dinov2", model_arch="dinov2_vits14")
    assert (M.load_trained_model(path).name, M.load_trained_model(path).input_size) == ("dinov2_vits14", 56)


def test_flags_that_contradict_a_fine_tuned_checkpoint_stop_in_one_line(tmp_path):
    path = str(tmp_path / "checkpoint-best.pth")
    layouts.upstream_best(path, "dinov2_vits14", img_size=56, model="Dinov2", model_arch="dinov2_vits14")
    with pytest.raises(WeightError, match="--input_size 112 does not fit .*: it was fine-tuned at 56 px"):
        M.load_trained_model(path, input_size=112)
    with pytest.raises(WeightError, match="--nb_classes 5 does not fit .*: its head has 3 classes"):
        M.load_trained_model(path, nb_classes=5)
    with pytest.raises(WeightError, match=r"does not fit --model vit_small_patch16 \(width 384, 12 blocks, patch 16\)"
                                          r": it holds a ViT of width 384, 12 blocks, patch 14 \(like --model "
                                          r"dinov2_vits14\)"):
        M.load_trained_model(path, model_name="vit_small_patch16")


def notebook_vector(encoder_path, name, images, depth=None):
    """latent_feature.ipynb's computation on upstream's model: RETFound_mae(global_pool=True) with the published
    checkpoint loaded strict=False (fc_norm stays at weight 1, bias 0), forward_features."""
    model = create_reference(name, img_size=224, num_classes=5, global_pool=True, depth=depth)
    checkpoint = torch.load(encoder_path, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["model"], strict=False)
    with torch.no_grad():
        return model.eval().forward_features(torch.from_numpy(images)).reshape(len(images), -1).numpy()


def test_published_encoder_embedding_is_the_notebooks_vector(tmp_path):
    """A published MAE checkpoint (norm, decoder, no fc_norm): the default embedding is fc_norm at its initial
    values over the mean patch token, as the notebook computes it; --cls_token gives norm(class token)."""
    path = str(tmp_path / "RETFound_mae_meh.pth")
    with reduced("RETFound_mae") as small:
        layouts.mae_pretrained(path, name="RETFound_mae", depth=2)
        rng = np.random.default_rng(5)
        pictures = [Image.fromarray((rng.random((260, 300, 3)) * 255).astype(np.uint8)) for _ in range(2)]
        for transform in (EvalTransform(224), NotebookEmbeddingTransform(224)):
            images = np.stack([transform(p) for p in pictures])
            trained = M.load_trained_model(path, model_name=small, with_head=False)
            assert trained.global_pool and "initial values" in trained.embedding
            ours = trained.model.forward_embedding(ms.Tensor(images)).asnumpy()
            assert_within(f"published MAE encoder embedding vs latent_feature.ipynb ({type(transform).__name__}, "
                          "depth 2)", relative_error(ours, notebook_vector(path, "RETFound_mae", images, depth=2)),
                          1e-5)
        cls = M.load_trained_model(path, model_name=small, with_head=False, global_pool=False)
        reference = create_reference("RETFound_mae", img_size=224, num_classes=0, global_pool=False, depth=2)
        layouts.upstream_load(reference, path)
        with torch.no_grad():
            expected = reference.forward_features(torch.from_numpy(images)).numpy()
        assert_within("published MAE encoder --cls_token embedding vs upstream's forward_features (depth 2)",
                      relative_error(cls.model.forward_embedding(ms.Tensor(images)).asnumpy(), expected), 1e-5)


@pytest.mark.vitl
def test_published_vit_large_encoder_embedding_is_the_notebooks_vector(tmp_path):
    path = str(tmp_path / "RETFound_mae_meh.pth")
    layouts.mae_pretrained(path, name="RETFound_mae")
    rng = np.random.default_rng(6)
    pictures = [Image.fromarray((rng.random((500, 560, 3)) * 255).astype(np.uint8)) for _ in range(2)]
    trained = M.load_trained_model(path, with_head=False)
    assert trained.name == "RETFound_mae"
    for transform in (EvalTransform(224), NotebookEmbeddingTransform(224)):
        images = np.stack([transform(p) for p in pictures])
        ours = trained.model.forward_embedding(ms.Tensor(images)).asnumpy()
        assert_within(f"published MAE encoder embedding vs latent_feature.ipynb ({type(transform).__name__}, ViT-L)",
                      relative_error(ours, notebook_vector(path, "RETFound_mae", images)), 1e-5)


@pytest.mark.vitl
@pytest.mark.parametrize("family,name", [("RETFound_mae", "RETFound_mae"), ("RETFound_dinov2", "RETFound_dinov2")])
def test_upstream_vit_large_checkpoint_best_reads_its_own_settings(tmp_path, family, name):
    path = str(tmp_path / "checkpoint-best.pth")
    upstream = layouts.upstream_best(path, name, img_size=224, model=family)
    trained = M.load_trained_model(path)
    assert (trained.name, trained.input_size) == (name, 224)
    images = images_for(224, batch=2)
    with torch.no_grad():
        expected = torch.softmax(upstream(torch.from_numpy(images)).double(), 1).numpy()
    assert_within(f"upstream checkpoint-best.pth of {family} (ViT-L), probabilities",
                  relative_error(ours_probabilities(trained, images), expected), 1e-4)
    assert os.path.getsize(path) > 1e9
