"""export_mindspore.py: exported files, reloaded as a deployer would, give upstream's outputs; bad input is one line."""
import argparse
import json
import os

import mindspore as ms
import numpy as np
import onnxruntime
import pytest
import torch

import export_mindspore
import models_vit_mindspore
from tests.helpers import TINY, TOKEN, one_line_error, publish
from tests.parity import assert_within, mindspore_twin, random_images, relative_error
from util_mindspore.checkpoints.train_checkpoint import save_checkpoint
from util_mindspore.inference import export
from util_mindspore.reference import checkpoint_layouts as layouts
from util_mindspore.reference.torch_models import create_reference, numpy_state_dict, randomize_


def run_onnx(path, images):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def run_mindir(path, images):
    return ms.nn.GraphCell(ms.load(path))(ms.Tensor(images)).asnumpy()


def run_openvino(path, images):
    """As a deployer runs the IR: OpenVINO's CPU plugin held to float32 (its default may be bfloat16)."""
    import openvino as ov
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(images)[0])


def torch_outputs(model, images, embeddings=False):
    """Upstream's logits, or the embedding upstream's latent_feature.ipynb takes from the same model."""
    with torch.no_grad():
        x = torch.from_numpy(images)
        if not embeddings:
            return model(x).numpy()
        features = model.forward_features(x)
        if features.dim() == 3 and features.shape[1] > 1:  # timm DINOv2: every token; the notebook pools them
            pooled = features[:, 1:, :].mean(dim=1)
            return torch.nn.functional.layer_norm(pooled, pooled.shape[-1:], eps=1e-6).numpy()
        return features.reshape(features.shape[0], -1).numpy()


def test_upstream_finetuned_pth_exports_to_files_that_give_upstream_logits_at_any_batch(tmp_path, capsys):
    upstream = layouts.finetuned(str(tmp_path / "checkpoint-best.pth"), img_size=32, depth=2)
    out = tmp_path / "export"
    code = export_mindspore.run(["--resume", str(tmp_path / "checkpoint-best.pth"), "--model", TINY,
                                 "--output_dir", str(out), "--format", "mindir,onnx,openvino"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mindir:" in printed and "onnx:" in printed and "max |diff|" in printed
    assert sorted(os.listdir(out)) == [f"{TINY}.{ext}" for ext in ("bin", "json", "mindir", "onnx", "xml")]
    sidecar = json.loads((out / f"{TINY}.json").read_text())
    # settings read from the checkpoint itself: 3 classes from head.weight, 32 px from pos_embed's 2x2 grid
    assert sidecar["output"]["class_names"] == ["class_0", "class_1", "class_2"]
    assert sidecar["input"]["shape"] == ["batch", 3, 32, 32]
    assert sidecar["preprocessing"]["resize_shorter_side"] == 36 and sidecar["preprocessing"]["center_crop"] == 32
    assert sidecar["verification"]["onnx"]["batch_sizes"] == [1, 3]
    onnx_path, mindir_path = str(out / f"{TINY}.onnx"), str(out / f"{TINY}.mindir")
    assert onnxruntime.InferenceSession(onnx_path).get_inputs()[0].shape[0] == "batch"
    assert sidecar["files"]["openvino"] == f"{TINY}.xml" and sidecar["format_version"] == 2
    for batch in (1, 5):  # neither is the batch size the ONNX graph was traced at
        images = random_images(batch, 32, seed=batch)
        expected = torch_outputs(upstream, images)
        assert_within("export onnx of upstream's ViT-Tiny checkpoint vs upstream, relative",
                      relative_error(run_onnx(onnx_path, images), expected), 1e-4)
        assert_within("export mindir of upstream's ViT-Tiny checkpoint vs upstream, relative",
                      relative_error(run_mindir(mindir_path, images), expected), 1e-5)
        assert_within("export openvino of upstream's ViT-Tiny checkpoint vs upstream, relative",
                      relative_error(run_openvino(str(out / f"{TINY}.xml"), images), expected), 1e-4)
    assert os.access(mindir_path, os.W_OK)  # ms.export writes read-only files; ours belong to the user


@pytest.mark.slow  # the default run checks every format against upstream on the tiny model (above)
@pytest.mark.parametrize("name, size", [("RETFound_mae", 224), ("RETFound_dinov2", 224)])
def test_retfound_models_export_with_upstream_logits_and_embeddings(tmp_path, name, size):
    """Real widths at reduced depth: ONNX and MindIR against the upstream PyTorch model, logits and embeddings."""
    upstream = randomize_(create_reference(name, img_size=size, num_classes=4, depth=2), seed=3).eval()
    model = mindspore_twin(name, numpy_state_dict(upstream), img_size=size, num_classes=4, depth=2)
    images = random_images(2, size, seed=1)
    for embeddings in (False, True):
        net = export.EmbeddingNet(model) if embeddings else model
        expected = torch_outputs(upstream, images, embeddings)
        for fmt, tolerance, runner, bound in (("mindir", 1e-5, run_mindir, 1e-5), ("onnx", 1e-4, run_onnx, 2e-5),
                                              ("openvino", 1e-4, run_openvino, 2e-5)):
            check = export.export_verified(net, model, fmt, str(tmp_path), f"{name}_{embeddings}", size)
            assert check.max_abs_diff <= tolerance and check.batch_sizes == (1, 3)
            path = str(tmp_path / check.files[0])
            diff = relative_error(runner(path, images), expected)
            assert_within(f"export {fmt} {name} depth 2 {'embedding' if embeddings else 'logits'} vs upstream, "
                          "relative to max(1, |output|)", diff, bound)


@pytest.mark.vitl
def test_vitl_mindir_is_written_split_and_reloads_with_upstream_logits(tmp_path):
    """Past 1 GB of parameters MindSpore writes <name>_graph.mindir + <name>_variables/, which the graph names."""
    upstream = randomize_(create_reference("RETFound_mae", img_size=224, num_classes=5), seed=3).eval()
    model = mindspore_twin("RETFound_mae", numpy_state_dict(upstream), img_size=224, num_classes=5)
    check = export.export_verified(model, model, "mindir", str(tmp_path), "vitl", 224)
    assert check.files == ["vitl_graph.mindir", "vitl_variables"]
    assert sorted(os.listdir(tmp_path)) == ["vitl_graph.mindir", "vitl_variables"]  # no staging folder left
    images = random_images(2, 224, seed=7)
    expected = torch_outputs(upstream, images)
    diff = relative_error(run_mindir(str(tmp_path / "vitl_graph.mindir"), images), expected)
    assert_within("export mindir RETFound_mae ViT-L (split file) vs upstream, relative to max(1, |logit|)",
                  diff, 2e-5)


def test_our_checkpoint_brings_its_class_names_and_settings_and_fixed_batch_float16(tmp_path):
    model = models_vit_mindspore.create_model(TINY, img_size=48, num_classes=2, global_pool=False)
    args = argparse.Namespace(model=TINY, input_size=48, global_pool=False, nb_classes=2)
    ckpt = str(tmp_path / "checkpoint-best.ckpt")
    save_checkpoint(ckpt, model, None, 3, 0.9, ["healthy", "glaucoma"], args)
    out = tmp_path / "export"
    assert export_mindspore.run(["--resume", ckpt, "--output_dir", str(out), "--batch", "2", "--format", "onnx",
                                 "--amp_level", "O2", "--name", "glaucoma"]) == 0
    assert sorted(os.listdir(out)) == ["glaucoma.json", "glaucoma.onnx"]
    sidecar = json.loads((out / "glaucoma.json").read_text())
    assert sidecar["output"]["class_names"] == ["healthy", "glaucoma"]
    assert sidecar["model"] == TINY and sidecar["global_pool"] is False
    assert sidecar["input"]["shape"] == [2, 3, 48, 48]
    assert sidecar["output"]["dtype"] == "float16" and sidecar["precision"]["amp_level"] == "O2"
    images = random_images(2, 48)
    model.set_train(False)
    exported = run_onnx(str(out / "glaucoma.onnx"), images)
    assert exported.dtype == np.float16
    # float16 matmuls: within 8 float16 units of the float32 model at the logits' magnitude
    reference = model(ms.Tensor(images)).asnumpy()
    assert np.abs(exported - reference).max() <= 8 * 2.0 ** -10 * max(1.0, np.abs(reference).max())


def test_published_encoder_exports_its_embedding(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    publish(hub, tmp_path, "RETFound_mae_meh", layouts.mae_pretrained)
    out = tmp_path / "export"
    assert export_mindspore.run(["--resume", "RETFound_mae_meh", "--model", "vit_tiny_patch16", "--embeddings",
                                 "--format", "onnx", "--input_size", "32", "--output_dir", str(out)]) == 0
    sidecar = json.loads((out / "vit_tiny_patch16_embeddings.json").read_text())
    assert sidecar["output"]["kind"] == "embedding" and sidecar["output"]["shape"] == ["batch", 192]
    assert sidecar["output"]["class_names"] is None and sidecar["global_pool"] is True  # the notebook's global pool
    assert "initial values" in sidecar["output"]["meaning"]
    # latent_feature.ipynb's RETFound_mae(global_pool=True), the checkpoint loaded non-strictly (fc_norm stays at
    # weight 1, bias 0), pos_embed resized from 14x14 to 2x2 as upstream's --finetune does
    encoder = create_reference("vit_tiny_patch16", img_size=32, num_classes=0, global_pool=True)
    layouts.upstream_load(encoder, str(tmp_path / "RETFound_mae_meh.pth"))
    assert float(encoder.fc_norm.weight.min()) == float(encoder.fc_norm.weight.max()) == 1.0
    images = random_images(3, 32)
    expected = torch_outputs(encoder, images, embeddings=True)
    assert np.abs(run_onnx(str(out / "vit_tiny_patch16_embeddings.onnx"), images) - expected).max() <= 1e-4


def test_bad_checkpoint_is_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "checkpoint-best.pth"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    out = tmp_path / "export"
    assert export_mindspore.run(["--resume", str(bad), "--output_dir", str(out)]) == 1
    assert "checkpoint-best.pth: not a PyTorch checkpoint" in one_line_error(capsys)
    assert not out.exists()  # a failed export leaves no folder


def test_encoder_without_head_needs_embeddings_and_flags_must_fit(tmp_path, capsys):
    layouts.mae_pretrained(str(tmp_path / "encoder.pth"))
    assert export_mindspore.run(["--resume", str(tmp_path / "encoder.pth"), "--model", "vit_tiny_patch16",
                                 "--output_dir", str(tmp_path / "e")]) == 1
    err = one_line_error(capsys)
    assert "no classifier head" in err and "--embeddings" in err
    layouts.finetuned(str(tmp_path / "ft.pth"), img_size=32)
    assert export_mindspore.run(["--resume", str(tmp_path / "ft.pth"), "--model", "vit_tiny_patch16",
                                 "--nb_classes", "5", "--output_dir", str(tmp_path / "e")]) == 1
    assert "--nb_classes 5" in one_line_error(capsys)
    assert export_mindspore.run(["--resume", str(tmp_path / "ft.pth"), "--format", "tflite"]) == 1
    assert "--format tflite" in one_line_error(capsys)
    assert export_mindspore.run(["--resume", str(tmp_path / "ft.pth"), "--batch", "0"]) == 1
    assert "--batch 0" in one_line_error(capsys)
    assert export_mindspore.run(["--resume", str(tmp_path / "ft.pth"), "--model", "dinov2_vits14",
                                 "--output_dir", str(tmp_path / "e")]) == 1
    assert ("does not fit --model dinov2_vits14 (width 384, 12 blocks, patch 14): it holds a ViT of width 192, "
            "12 blocks, patch 16 (like --model vit_tiny_patch16)") in one_line_error(capsys)


def test_unwritable_output_dir_is_one_line(tmp_path, capsys):
    layouts.finetuned(str(tmp_path / "ft.pth"), img_size=32)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the output folder should be")
    assert export_mindspore.run(["--resume", str(tmp_path / "ft.pth"), "--model", "vit_tiny_patch16",
                                 "--output_dir", str(blocker / "export")]) == 1
    assert "not_a_dir" in one_line_error(capsys)


def test_failed_verification_removes_every_file(tmp_path, capsys, monkeypatch):
    layouts.finetuned(str(tmp_path / "ft.pth"), img_size=32, depth=2)
    monkeypatch.setitem(export.FLOAT32_TOLERANCE, "onnx", -1.0)  # no export can pass this
    out = tmp_path / "export"
    assert export_mindspore.run(["--resume", str(tmp_path / "ft.pth"), "--model", TINY,
                                 "--output_dir", str(out)]) == 1
    assert "does not reproduce the model" in one_line_error(capsys)
    assert not out.exists()  # the verified MindIR goes too: all formats or none, and the folder the run made


@pytest.mark.parametrize("name, size", [("dinov3_vits16plus", 32),
                                        pytest.param("dinov2_vitg14", 28, marks=pytest.mark.slow)])
def test_swiglu_families_export_verified(tmp_path, name, size):
    """DINOv3 (storage tokens, RoPE, SwiGLU w1/w2/w3) and DINOv2-g (packed SwiGLU) export to every format,
    verified at batch sizes other than the traced one."""
    model = models_vit_mindspore.create_model(name, img_size=size, num_classes=3, depth=2)
    model.set_train(False)
    for fmt, ext in (("mindir", "mindir"), ("onnx", "onnx"), ("openvino", "xml")):
        check = export.export_verified(model, model, fmt, str(tmp_path), f"{name}_{fmt}", size)
        assert check.batch_sizes == (1, 3) and check.max_abs_diff <= check.tolerance
        assert os.path.exists(tmp_path / f"{name}_{fmt}.{ext}")


def test_an_upstream_dinov3_checkpoint_exports_with_its_own_settings(tmp_path):
    """upstream's --model Dinov3 checkpoint-best.pth (Meta's keys, bias_mask, mask_token): model, input size and
    classes read from it; the export verified."""
    from tests.checkpoints.test_trained_model import reduced
    path = str(tmp_path / "checkpoint-best.pth")
    with reduced("dinov3_vits16") as small:
        layouts.upstream_best_dinov3(path, "dinov3_vits16", img_size=48, depth=2)
        assert export_mindspore.run(["--resume", path, "--model", small, "--format", "onnx", "--output_dir",
                                     str(tmp_path / "out")]) == 0
    sidecar = json.loads((tmp_path / "out" / f"{small}.json").read_text())
    assert sidecar["input"]["shape"] == ["batch", 3, 48, 48] and len(sidecar["output"]["class_names"]) == 3
