"""ExportedModel: the preprocessing an export's .json describes equals the evaluation transform the model was
checked with, for every image mode, and a file that is not such a description is one clear error."""
import argparse
import json

import numpy as np
import pytest
from PIL import Image

import export_mindspore
import models_vit_mindspore
from tests.helpers import TINY
from util_mindspore.checkpoints.train_checkpoint import save_checkpoint
from util_mindspore.data.transforms import EvalTransform
from util_mindspore.errors import UserError
from util_mindspore.inference.deployment import ExportedModel


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 2-class ViT-Tiny at 48 px exported to ONNX: its .json is what a deployment reads."""
    folder = tmp_path_factory.mktemp("deployment")
    model = models_vit_mindspore.create_model(TINY, img_size=48, num_classes=2)
    args = argparse.Namespace(model=TINY, input_size=48, global_pool=True, nb_classes=2)
    ckpt = str(folder / "checkpoint-best.ckpt")
    save_checkpoint(ckpt, model, None, 0, 0.5, ["healthy", "=glaucoma"], args)
    assert export_mindspore.run(["--resume", ckpt, "--format", "onnx",
                                 "--output_dir", str(folder / "export"), "--name", "m"]) == 0
    return folder / "export"


def pictures():
    rng = np.random.default_rng(3)
    rgb = (rng.random((70, 95, 3)) * 255).astype(np.uint8)
    return {"RGB": Image.fromarray(rgb), "RGBA": Image.fromarray(rgb).convert("RGBA"),
            "L": Image.fromarray(rgb[..., 0]), "P": Image.fromarray(rgb).convert("P"),
            "I;16": Image.fromarray((rng.random((90, 60)) * 400).astype(np.uint16)),
            "CMYK": Image.fromarray(rgb).convert("CMYK"), "portrait": Image.fromarray(rgb.transpose(1, 0, 2))}


def test_preprocessing_equals_the_evaluation_transform_for_every_mode(exported, tmp_path):
    model = ExportedModel(str(exported / "m.json"))
    assert model.class_names == ["healthy", "=glaucoma"] and model.output_kind == "logits"
    assert set(model.files) == {"onnx"} and model.files["onnx"].endswith("m.onnx")
    transform = EvalTransform(48)
    for name, picture in pictures().items():
        expected = transform(picture)
        np.testing.assert_array_equal(model.preprocess([picture])[0], expected, err_msg=name)
        path = tmp_path / f"{name.replace(';', '_')}.png"
        picture.save(path) if name != "CMYK" else picture.save(tmp_path / "cmyk.jpg")
        stored = path if name != "CMYK" else tmp_path / "cmyk.jpg"
        with Image.open(stored) as reopened:
            np.testing.assert_array_equal(model.preprocess([str(stored)])[0], transform(reopened), err_msg=name)
    batch = model.preprocess(list(pictures().values()))
    assert batch.shape == (7, 3, 48, 48) and batch.dtype == np.float32 and batch.flags["C_CONTIGUOUS"]


def test_probabilities_and_top_classes():
    model = ExportedModel.__new__(ExportedModel)
    model.class_names = ["a", "b"]
    logits = np.array([[1000.0, 0.0], [0.0, 2.0]], np.float32)
    probs = model.probabilities(logits)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    assert probs[0, 0] == 1.0 and probs[1, 1] == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert model.top_classes(logits) == ["a", "b"]


@pytest.mark.parametrize("content", ["not json", json.dumps({"files": {}}),
                                     json.dumps({"preprocessing": {"resize_shorter_side": 1}})])
def test_a_file_that_is_not_an_export_description_is_one_clear_error(tmp_path, content):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(UserError, match=rf"^{tmp_path}/x.json: not the description export_mindspore.py writes"):
        ExportedModel(str(path))
    with pytest.raises(UserError, match="missing.json: missing: export_mindspore.py writes this description"):
        ExportedModel(str(tmp_path / "missing.json"))
