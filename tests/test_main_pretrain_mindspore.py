"""MAE pre-training end to end: upstream's command line and outputs, exact resume, a published checkpoint
continued, and each checkpoint a valid --finetune / --resume for fine-tuning, prediction and export."""
import json
import os

import numpy as np
import pytest

import export_mindspore
import mae_visualize_mindspore
import main_finetune_mindspore
import main_pretrain_mindspore
import predict_mindspore
from tests.helpers import TINY, TOKEN, assert_picture, one_line_error, publish, read_tensorboard_scalars, small_argv
from util_mindspore.checkpoints.train_checkpoint import read_checkpoint
from util_mindspore.training import pretraining as engine_pretrain

MAE = "mae_vit_tiny_patch16_depth2"


def pretrain_argv(data, out, epochs=2, extra=()):
    return ["--model", MAE, "--data_path", data, "--input_size", "32", "--batch_size", "4", "--epochs", str(epochs),
            "--warmup_epochs", "1", "--blr", "1e-3", "--output_dir", out, "--log_dir", os.path.join(out, "tb"),
            "--save_every", "1", "--num_workers", "2", "--visualize", "2", *extra]


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, dataset):
    out = str(tmp_path_factory.mktemp("pretrain"))
    assert main_pretrain_mindspore.run(pretrain_argv(dataset, out)) == 0
    return out


def test_pre_training_writes_upstreams_outputs_and_pictures(pretrained_run, dataset):
    out = pretrained_run
    assert sorted(f for f in os.listdir(out) if f.endswith(".ckpt")) == ["checkpoint-0.ckpt", "checkpoint-1.ckpt"]
    rows = [json.loads(line) for line in open(os.path.join(out, "log.txt"))]
    assert [sorted(r) for r in rows] == [["epoch", "train_loss", "train_lr"]] * 2 and rows[1]["epoch"] == 1
    assert all(np.isfinite(r["train_loss"]) for r in rows)
    for epoch in (0, 1):
        for ext in ("png", "pdf"):
            assert_picture(os.path.join(out, "reconstructions", f"epoch_{epoch}.{ext}"))
    last = read_checkpoint(os.path.join(out, "checkpoint-1.ckpt"))
    assert last.meta["model"] == MAE and last.epoch == 1 and "optimizer.exp_avg.decoder_pred.weight" in last.state
    assert "decoder_pos_embed" in last.weights and not any(k.endswith("pos_embed") for k in last.state)
    pytest.importorskip("tensorboardX")
    scalars = read_tensorboard_scalars(os.path.join(out, "tb"))
    steps = 24 // 4  # upstream's layout: the train/ folder's images, batch 4
    assert set(scalars) == {"train_loss", "lr"} and [s for s, _ in scalars["lr"]][:2] == [0, int(1000 / steps)]


@pytest.mark.slow
def test_resume_continues_a_pre_training_run_exactly(dataset, tmp_path, monkeypatch):
    """Two epochs, or one then --resume: the same weights and optimizer state (the masks come from the seed, the
    epoch and the step)."""
    original = engine_pretrain.train_one_epoch

    def stop_at_1(train_step, loader, epoch, *rest):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(train_step, loader, epoch, *rest)
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    assert main_pretrain_mindspore.run(pretrain_argv(dataset, whole, extra=["--visualize", "0"])) == 0
    monkeypatch.setattr(engine_pretrain, "train_one_epoch", stop_at_1)
    with pytest.raises(KeyboardInterrupt):
        main_pretrain_mindspore.run(pretrain_argv(dataset, broken, extra=["--visualize", "0"]))
    monkeypatch.setattr(engine_pretrain, "train_one_epoch", original)
    assert main_pretrain_mindspore.run(pretrain_argv(dataset, broken, extra=[
        "--visualize", "0", "--resume", os.path.join(broken, "checkpoint-0.ckpt")])) == 0
    a, b = (read_checkpoint(os.path.join(folder, "checkpoint-1.ckpt")) for folder in (whole, broken))
    for name, expected in {**a.weights, **a.state}.items():
        np.testing.assert_array_equal({**b.weights, **b.state}[name], expected, err_msg=name)


def test_a_pre_training_checkpoint_fine_tunes_predicts_and_exports(pretrained_run, dataset, tmp_path, capsys):
    ckpt = os.path.join(pretrained_run, "checkpoint-1.ckpt")
    assert main_finetune_mindspore.run(small_argv(dataset, str(tmp_path / "ft"), epochs=1, extra=[
        "--finetune", ckpt])) == 0
    printed = capsys.readouterr().out
    assert "pre-training parts not used:" in printed and "missing: fc_norm.weight, fc_norm.bias" in printed
    assert predict_mindspore.run(["--resume", ckpt, "--data_path", os.path.join(dataset, "test"), "--embeddings",
                                  "--output_dir", str(tmp_path / "pred")]) == 0
    meta = json.load(open(tmp_path / "pred" / "embeddings.json"))
    assert meta["model"] == TINY and "initial values" in meta["vector"]  # the MAE's encoder, the notebook's vector
    assert np.load(tmp_path / "pred" / "embeddings.npy").shape == (9, 192)
    assert export_mindspore.run(["--resume", ckpt, "--embeddings", "--format", "onnx", "--output_dir",
                                 str(tmp_path / "export")]) == 0
    assert os.path.exists(tmp_path / "export" / f"{TINY}_embeddings.onnx")


def test_a_published_checkpoint_is_continued_with_its_decoder(dataset, tmp_path, hub, monkeypatch, capsys):
    """--pretrained RETFound_mae_meh: encoder and decoder through the converter and its cache, a fresh optimizer;
    its own norm_pix_loss named when the run's differs; the reconstruction command reads it too."""
    pytest.importorskip("torch")
    from util_mindspore.reference import checkpoint_layouts as layouts
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    publish(hub, tmp_path, "RETFound_mae_meh", lambda path: layouts.mae_published(path, img_size=32))
    out = str(tmp_path / "out")
    assert main_pretrain_mindspore.run(pretrain_argv(dataset, out, epochs=1, extra=[
        "--pretrained", "RETFound_mae_meh", "--visualize", "0"])) == 0
    printed = capsys.readouterr().out
    assert "loaded 50 tensors from RETFound_mae_meh; missing: none; unexpected: none" in printed
    assert "was pre-trained with norm_pix_loss=True; this run uses False" in printed
    pictures = tmp_path / "recon"
    assert mae_visualize_mindspore.run(["--resume", "RETFound_mae_meh", "--model", MAE, "--data_path",
                                        os.path.join(dataset, "test", "a"), "--input_size", "32", "--output_dir",
                                        str(pictures)]) == 0
    assert sorted(os.listdir(pictures)) == ["0.png.pdf", "0.png.png", "1.png.pdf", "1.png.png", "2.png.pdf",
                                            "2.png.png"]
    assert "patches given the original's mean and variance" not in capsys.readouterr().out  # (the titles say it)


def test_reconstruction_panels_are_the_notebooks(dataset):
    """original, masked (removed patches at ImageNet's mean), reconstruction, visible patches pasted back."""
    import models_vit_mindspore as M
    from util_mindspore.training.pretraining import reconstruction_panels
    model = M.create_model(MAE, img_size=32)
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    noise = np.random.default_rng(1).random((2, 4), dtype=np.float32)
    original, masked, recon, pasted = reconstruction_panels(model, images, 0.75, noise, norm_pix=False)
    kept = np.argsort(noise, axis=1)[:, 0]  # one patch of four kept (the smallest noise)
    grey = np.array([0.485, 0.456, 0.406])  # 0 in normalised space: ImageNet's mean
    for n in range(2):
        for patch in range(4):
            row, col = divmod(patch, 2)
            window = (n, slice(16 * row, 16 * row + 16), slice(16 * col, 16 * col + 16))
            if patch == kept[n]:
                np.testing.assert_allclose(masked[window], original[window])
                np.testing.assert_allclose(pasted[window], original[window])
            else:
                np.testing.assert_allclose(masked[window], np.broadcast_to(grey, (16, 16, 3)), atol=1e-12)
                np.testing.assert_allclose(pasted[window], recon[window])
    assert recon.shape == original.shape == (2, 32, 32, 3)


@pytest.mark.parametrize("flags,message", [
    (["--mask_ratio", "1.0"], "--mask_ratio 1.0 is outside [0, 1)"),
    (["--model", "RETFound_mae"], "--model RETFound_mae: choose an MAE model"),
    (["--pretrained", "x.pth", "--resume", "y.ckpt"], "give one"),
    (["--input_size", "40"], "--input_size 40 is not a multiple of the patch size 16"),
])
def test_bad_pre_training_flags_are_one_line(dataset, tmp_path, capsys, flags, message):
    assert main_pretrain_mindspore.run(pretrain_argv(dataset, str(tmp_path / "out"), extra=flags)) == 1
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_upstreams_imagefolder_layout_reads_its_train_folder(dataset):
    from util_mindspore.training.pretraining import image_root
    assert image_root(dataset) == os.path.join(dataset, "train")
    assert image_root(os.path.join(dataset, "train", "a")) == os.path.join(dataset, "train", "a")
