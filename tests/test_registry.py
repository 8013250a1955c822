"""The table of model facts: every name builds from its row, behaviour follows from the row, the README's model
table states the rows' parameter counts."""
import functools
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
from mindspore.nn.utils import no_init_parameters

import models_vit_mindspore as M
from tests.helpers import ROOT
from util_mindspore import registry as R


@functools.cache
def parameters(name):
    with no_init_parameters():  # shapes only: nothing is drawn
        model = M.create_model(name, img_size=224, num_classes=0 if R.get_config(name).is_classifier else None)
    return sum(math.prod(p.shape) for p in model.trainable_params())


@pytest.mark.parametrize("name", sorted(R.MODEL_CONFIGS))
def test_every_name_builds_the_architecture_its_row_states(name):
    config = R.get_config(name)
    with no_init_parameters():
        model = M.create_model(name, img_size=2 * config.patch_size * 2, depth=1,
                               num_classes=3 if config.is_classifier else None)
    assert model.config.name == name and model.patch_embed.patch_size == config.patch_size
    assert model.patch_embed.proj.weight.shape == (config.embed_dim, 3, config.patch_size, config.patch_size)
    assert model.blocks[0].attn.num_heads == config.num_heads and len(model.blocks) == 1
    assert type(model).__name__ == {"vit": "VisionTransformer", "dinov3": "DinoVisionTransformer",
                                    "mae": "MaskedAutoencoderViT"}[config.architecture]
    if config.is_classifier:
        assert model.num_prefix_tokens == config.num_prefix_tokens


def test_readme_model_table_states_the_rows_parameter_counts():
    """The README's "Choosing a model" table: each size's parameters, computed from our cells."""
    text = open(f"{ROOT}/README_MindSpore.md", encoding="utf-8").read()
    table = text.split("## Choosing a model", 1)[1].split("\n## ", 1)[0].split("|---", 1)[1]  # below the header
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    checked = 0
    for row in rows:
        names = re.findall(r"`(\w+)`", row.split("|")[1])
        counts = [c.strip() for c in row.split("|")[3].split("/")]
        sized = [n for n in names if n in R.MODEL_CONFIGS]
        assert len(sized) == len(counts), row
        for name, stated in zip(sized, counts):
            value = parameters(name)
            expected = f"{value / 1e9:.1f}B" if value >= 1e9 else f"{round(value / 1e6)}M"
            assert stated == expected, f"{name}: README says {stated}, the cells hold {expected}"
            checked += 1
    assert checked >= 14


def test_readme_memory_figures_follow_from_the_parameter_counts():
    """README: DINOv3 7B's float32 weights, its AdamW fine-tuning (weights, gradients, two moments: 16 bytes a
    parameter) and ViT-g's."""
    text = open(f"{ROOT}/README_MindSpore.md", encoding="utf-8").read().replace("\n", " ")
    big, giant = parameters("dinov3_vit7b16"), parameters("dinov2_vitg14")
    assert f"{big * 4 / 1e9:.0f} GB in float32 for the weights alone, about {round(big * 16 / 1e10) * 10} GB to" \
        in text
    assert f"ViT-g (1.1B) needs about {giant * 16 / 1e9:.0f} GB to fine-tune" in text


def test_upstream_family_names_pick_a_size_with_model_arch():
    assert R.resolve_model_name("Dinov2", "dinov2_vitb14") == "dinov2_vitb14"
    assert R.resolve_model_name("Dinov3", "dinov3_vith16plus") == "dinov3_vith16plus"
    assert R.resolve_model_name("RETFound_mae", "dinov3_vits16") == "RETFound_mae"  # ignored, as upstream
    with pytest.raises(R.UnknownModelError, match="--model Dinov2 --model_arch dinov2_vitx14: choose --model_arch"):
        R.resolve_model_name("Dinov2", "dinov2_vitx14")
    with pytest.raises(R.UnknownModelError, match="^unknown model 'RETFound_mea'; choose one of: RETFound_dinov2"):
        M.create_model("RETFound_mea")
    assert set(R.upstream_families()) == {"Dinov2", "Dinov3"}
    assert "mae_vit_large_patch16" not in R.list_models() and "mae_vit_large_patch16" in R.list_models(False)


def test_behaviour_follows_from_a_rows_facts_never_from_its_name(tmp_path):
    """A row whose facts no real model has (input size 48, heads drawn with std 0.5, the class token as embedding,
    read for unnamed checkpoints of its shape): every reader behaves as the row says."""
    import argparse

    from util_mindspore.checkpoints.train_checkpoint import save_checkpoint
    from util_mindspore.checkpoints.trained_model import model_of_checkpoint
    from util_mindspore.cli.options import input_size_help
    from util_mindspore.training.finetuning import resolve_settings
    row = R.get_config("vit_tiny_patch16").replace(
        name="zz_rowtest", depth=3, default_input_size=48, head_init_std=0.5, global_pool=None,
        embedding="class_token", reads_unnamed=True, summary="a row for this test")
    R.register(row)
    try:
        np.random.seed(0)
        model = M.create_model("zz_rowtest", num_classes=64)  # no size, no std given: the row's
        assert model.patch_embed.grid_size == 3 and len(model.blocks) == 3 and not model.global_pool
        assert 0.45 < float(model.head.weight.asnumpy().std()) < 0.55
        args = argparse.Namespace(model="zz_rowtest", model_arch=None, input_size=None)
        resolve_settings(args)
        assert args.input_size == 48 and "48 for" in input_size_help() and "zz_rowtest" in input_size_help()
        weights = {n: p.asnumpy() for n, p in model.parameters_and_names()}
        assert model_of_checkpoint(weights, "x.pth") == "zz_rowtest"  # the shape, read as the row says
        path = str(tmp_path / "checkpoint-best.ckpt")
        save_checkpoint(path, model, None, 0, 0.0, [f"c{i}" for i in range(64)], args, kind="best")
        trained = M.load_trained_model(path)
        assert (trained.name, trained.input_size, trained.global_pool) == ("zz_rowtest", 48, False)
        assert trained.embedding == R.EMBEDDINGS["class_token"]
    finally:
        R.unregister("zz_rowtest")
    with pytest.raises(R.UnknownModelError, match="unknown model 'zz_rowtest'"):
        M.create_model("zz_rowtest")


def test_a_new_size_is_one_row(tmp_path):
    """register() adds a name that every reader then knows: create_model, --model's help and the size messages,
    the trained-model reader (by the name a checkpoint records, and by its shapes), the converter's shape match."""
    from util_mindspore.checkpoints.train_checkpoint import save_checkpoint
    from util_mindspore.checkpoints.trained_model import model_of_checkpoint
    from util_mindspore.cli.options import model_choices
    row = R.get_config("dinov2_vits14").replace(name="dinov2_vits14_depth3", depth=3, summary="a test size")
    R.register(row)
    try:
        model = M.create_model("dinov2_vits14_depth3", img_size=28, num_classes=2)
        assert len(model.blocks) == 3 and "dinov2_vits14_depth3" in R.architectures_like(384, 3, 14)
        assert "dinov2_vits14_depth3" in model_choices() and "dinov2_vits14_depth3" in R.describe_vit(384, 3, 14)
        weights = {n: p.asnumpy() for n, p in model.parameters_and_names()}
        assert model_of_checkpoint(weights, "x.pth") == "dinov2_vits14_depth3"
        path = str(tmp_path / "checkpoint-best.ckpt")
        save_checkpoint(path, model, None, 0, 0.0, ["a", "b"], SimpleNamespace(model="dinov2_vits14_depth3"),
                        kind="best")
        trained = M.load_trained_model(path)
        assert (trained.name, trained.input_size, trained.class_names) == ("dinov2_vits14_depth3", 28, ["a", "b"])
        with pytest.raises(ValueError, match="already registered"):
            R.register(row)
    finally:
        R.unregister("dinov2_vits14_depth3")
    with pytest.raises(TypeError, match="unknown model arguments depthh"):
        R.get_config("RETFound_mae").replace(depthh=2)
