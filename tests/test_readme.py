"""The README's Python blocks run as written: the deployment snippet against files made by the README's own export
command, and the published-weights snippet (ViT-L) against a loopback hub serving a file in the published layout."""
import argparse
import importlib.util
import os
import re
import shlex

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

import export_mindspore
import models_vit_mindspore
from tests.conftest import require
from tests.helpers import ROOT, TINY, TOKEN, publish
from util_mindspore.checkpoints.train_checkpoint import save_checkpoint
from util_mindspore.data.transforms import EvalTransform
from util_mindspore.reference import checkpoint_layouts as layouts

README = open(os.path.join(ROOT, "README_MindSpore.md"), encoding="utf-8").read()


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README, re.S)


def runner_of(block):
    """The function below that runs this README block (each is named by a text only its block holds)."""
    runners = [runner for key, runner in RUNNERS.items() if key in block]
    assert len(runners) == 1, f"a README Python block that no test runs (or that two would):\n{block}"
    return runners[0]


def run_deployment_snippet(block, tmp_path, monkeypatch, hub):
    """The deployment snippet against the files the README's own export command writes."""
    for package in ("onnxruntime", "openvino"):
        require(importlib.util.find_spec(package), package)
    command = next(line for line in README.splitlines()
                   if line.startswith("python export_mindspore.py") and "--name model" in line)
    argv = shlex.split(command)[2:]
    argv[argv.index("--resume") + 1] = str(tmp_path / "checkpoint-best.ckpt")
    model = models_vit_mindspore.create_model(TINY, img_size=48, num_classes=3)
    model.set_train(False)
    save_checkpoint(str(tmp_path / "checkpoint-best.ckpt"), model, None, 4, 0.8, ["normal", "DR", "AMD"],
                    argparse.Namespace(model=TINY, input_size=48, global_pool=True, nb_classes=3))
    monkeypatch.chdir(tmp_path)
    assert export_mindspore.run(argv) == 0
    rng = np.random.default_rng(0)
    photos = [Image.fromarray((rng.random((300, 400, 3)) * 255).astype(np.uint8)) for _ in range(2)]
    for i, photo in enumerate(photos, 1):
        photo.save(tmp_path / f"photo{i}.jpg", quality=95)
    namespace = {}
    exec(compile(block, "README_MindSpore.md", "exec"), namespace)
    transform = EvalTransform(48)
    expected_input = []
    for i in (1, 2):
        with Image.open(tmp_path / f"photo{i}.jpg") as image:
            expected_input.append(transform(image))
    np.testing.assert_array_equal(namespace["batch"], np.stack(expected_input))
    expected = model(ms.Tensor(namespace["batch"])).asnumpy()
    for name in ("logits", "logits_openvino", "logits_mindir"):
        assert np.abs(namespace[name] - expected).max() <= 1e-4, name
    assert namespace["exported"].top_classes(expected) == namespace["exported"].top_classes(namespace["logits"])


def run_published_weights_snippet(block, tmp_path, monkeypatch, hub):
    """The published-weights snippet (ViT-L) against a loopback hub serving a file in the published layout."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    path = publish(hub, tmp_path, "RETFound_mae_meh", layouts.mae_pretrained, name="RETFound_mae")
    namespace = {}
    exec(compile(block, "README_MindSpore.md", "exec"), namespace)
    model = namespace["model"]
    assert len(model.blocks) == 24 and model.head.weight.shape == (5, 1024) and model.global_pool
    import torch
    published = torch.load(path, map_location="cpu", weights_only=False)["model"]
    np.testing.assert_array_equal(model.blocks[23].mlp.fc2.weight.asnumpy(), published["blocks.23.mlp.fc2.weight"])


RUNNERS = {"ExportedModel": run_deployment_snippet, 'pretrained="RETFound_mae_meh"': run_published_weights_snippet}
SLOW_RUNNERS = {run_published_weights_snippet: pytest.mark.vitl}  # a full ViT-L


@pytest.mark.parametrize("block", [pytest.param(block, id=f"block{i}", marks=SLOW_RUNNERS.get(runner_of(block), ()))
                                   for i, block in enumerate(python_blocks(), 1)])
def test_every_python_block_of_the_readme_runs_as_written(block, tmp_path, monkeypatch, hub):
    runner_of(block)(block, tmp_path, monkeypatch, hub)
