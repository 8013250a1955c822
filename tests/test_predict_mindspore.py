"""predict_mindspore.py: predictions and embeddings equal upstream's model on the same images; bad input is one line."""
import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image

import export_mindspore
import predict_mindspore
from tests import checkpoint_layouts as layouts
from tests.helpers import TOKEN, make_dataset, publish
from tests.torch_reference import create_reference
from util_mindspore.transforms import EvalTransform, NotebookEmbeddingTransform


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def upstream_probs_and_embeddings(model, paths, transform):
    images = np.stack([transform(Image.open(p)) for p in paths])
    with torch.no_grad():
        x = torch.from_numpy(images)
        probs = torch.softmax(model(x).double(), dim=1).numpy()
        embeddings = model.forward_features(x).reshape(len(paths), -1).numpy()  # upstream's: fc_norm once
    return probs, embeddings


@pytest.fixture
def finetuned_pth(tmp_path):
    path = str(tmp_path / "checkpoint-best.pth")
    return path, layouts.finetuned(path, img_size=32).eval()


def test_labelled_folder_with_bad_files_gives_upstream_probabilities_and_embeddings(tmp_path, finetuned_pth, capsys):
    pth, upstream = finetuned_pth
    data = make_dataset(tmp_path / "data", classes=("class_0", "class_1", "class_2"), per_split={"test": 2})
    root = os.path.join(data, "test")
    with open(os.path.join(root, "class_1", "broken.jpg"), "wb") as fh:
        fh.write(b"\xff\xd8 not really a jpeg")
    os.mkfifo(os.path.join(root, "class_2", "pipe.jpg"))  # opening it would hang: it must never be opened
    out = str(tmp_path / "out")
    code = predict_mindspore.run(["--resume", pth, "--model", "vit_tiny_patch16", "--data_path", root,
                                  "--output_dir", out, "--batch_size", "4", "--embeddings"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "7 images: 6 processed" in printed and "1 unreadable" in printed and "broken.jpg" in printed
    rows = read_csv(os.path.join(out, "predictions.csv"))
    assert [r["path"] for r in rows] == [os.path.join("class_0", "0.png"), os.path.join("class_0", "1.png"),
                                         os.path.join("class_1", "0.png"), os.path.join("class_1", "1.png"),
                                         os.path.join("class_1", "broken.jpg"), os.path.join("class_2", "0.png"),
                                         os.path.join("class_2", "1.png")]
    bad = rows[4]
    assert bad["status"].startswith("unreadable") and bad["prediction"] == "" and bad["correct"] == ""
    good = [r for r in rows if r["status"] == "ok"]
    probs, embeddings = upstream_probs_and_embeddings(upstream, [os.path.join(root, r["path"]) for r in good],
                                                      EvalTransform(32))
    ours = np.array([[float(r[f"prob_class_{k}"]) for k in range(3)] for r in good])
    assert np.abs(ours - probs).max() <= 1e-5
    for r, p in zip(good, probs):
        assert r["prediction"] == f"class_{int(np.argmax(p))}" and r["label"] == r["path"].split(os.sep)[0]
        assert r["correct"] == str(int(r["prediction"] == r["label"]))
    stored = np.load(os.path.join(out, "embeddings.npy"))
    assert stored.shape == (7, 192) and stored.dtype == np.float32 and np.isnan(stored[4]).all()
    assert np.abs(np.delete(stored, 4, axis=0) - embeddings).max() <= 1e-5
    features = read_csv(os.path.join(out, "Feature.csv"))
    assert [f["name"] for f in features] == [r["path"] for r in good]
    assert list(features[0])[:3] == ["name", "feature_0", "feature_1"] and len(features[0]) == 193
    assert not [f for f in os.listdir(out) if "partial" in f]


def test_csv_list_with_labels_groups_by_patient_and_notebook_embeddings(tmp_path, finetuned_pth):
    pth, upstream = finetuned_pth
    rng = np.random.default_rng(1)
    names = ["p1_left.png", "p1_right.png", "p2_left.png"]
    for name in names:
        Image.fromarray((rng.random((50, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / name)
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n" + "".join(f"{n},class_{i % 2}\n" for i, n in enumerate(names)))
    out = str(tmp_path / "out")
    assert predict_mindspore.run(["--resume", pth, "--model", "vit_tiny_patch16", "--data_path", str(listing),
                                  "--output_dir", out, "--group_by", r"^(p\d+)_", "--embeddings",
                                  "--embedding_preprocessing", "notebook"]) == 0
    rows = read_csv(os.path.join(out, "predictions.csv"))
    assert [r["label"] for r in rows] == ["class_0", "class_1", "class_0"]
    groups = read_csv(os.path.join(out, "predictions_by_group.csv"))
    assert [(g["group"], g["images"], g["label"]) for g in groups] == [("p1", "2", ""), ("p2", "1", "class_0")]
    p1 = np.mean([[float(r[f"prob_class_{k}"]) for k in range(3)] for r in rows[:2]], axis=0)
    assert np.allclose([float(groups[0][f"prob_class_{k}"]) for k in range(3)], p1, rtol=1e-12)
    # the notebook's own preprocessing, then upstream's forward_features
    _, expected = upstream_probs_and_embeddings(upstream, [str(tmp_path / n) for n in names],
                                                NotebookEmbeddingTransform(32))
    assert np.abs(np.load(os.path.join(out, "embeddings.npy")) - expected).max() <= 1e-5


def test_onnx_backend_matches_the_mindspore_backend(tmp_path, finetuned_pth):
    pth, _ = finetuned_pth
    data = make_dataset(tmp_path / "data", per_split={"test": 2})
    export_dir = str(tmp_path / "export")
    assert export_mindspore.run(["--resume", pth, "--model", "vit_tiny_patch16", "--format", "onnx",
                                 "--output_dir", export_dir]) == 0
    results = {}
    for backend, resume in (("mindspore", [pth, "--model", "vit_tiny_patch16"]),
                            ("onnx", [os.path.join(export_dir, "vit_tiny_patch16.onnx")])):
        out = str(tmp_path / backend)
        assert predict_mindspore.run(["--resume", *resume, "--data_path", os.path.join(data, "test"),
                                      "--output_dir", out, "--batch_size", "4"]) == 0
        results[backend] = read_csv(os.path.join(out, "predictions.csv"))
    assert [r["path"] for r in results["onnx"]] == [r["path"] for r in results["mindspore"]]
    for a, b in zip(results["onnx"], results["mindspore"]):
        assert abs(float(a["prob_class_0"]) - float(b["prob_class_0"])) <= 1e-5 and a["prediction"] == b["prediction"]


def test_published_encoder_writes_embeddings_only(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    publish(hub, tmp_path, "RETFound_mae_meh", layouts.mae_pretrained)
    image = tmp_path / "eye.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(image)
    out = str(tmp_path / "out")
    assert predict_mindspore.run(["--resume", "RETFound_mae_meh", "--model", "vit_tiny_patch16", "--data_path",
                                  str(image), "--input_size", "32", "--embeddings", "--output_dir", out]) == 0
    assert sorted(os.listdir(out)) == ["Feature.csv", "embeddings.npy"]
    encoder = create_reference("vit_tiny_patch16", img_size=32, num_classes=0, global_pool=False)
    layouts.upstream_load(encoder, str(tmp_path / "RETFound_mae_meh.pth"))
    with torch.no_grad():
        expected = encoder.forward_features(torch.from_numpy(EvalTransform(32)(Image.open(image))[None])).numpy()
    assert np.abs(np.load(os.path.join(out, "embeddings.npy")) - expected).max() <= 1e-5


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_is_one_line(tmp_path, finetuned_pth, capsys):
    pth, _ = finetuned_pth
    base = ["--resume", pth, "--model", "vit_tiny_patch16", "--output_dir", str(tmp_path / "out")]
    assert predict_mindspore.run(base + ["--data_path", str(tmp_path / "missing")]) == 1
    assert "missing" in one_line_error(capsys)
    (tmp_path / "list.csv").write_text("file\nx.png\n")
    assert predict_mindspore.run(base + ["--data_path", str(tmp_path / "list.csv")]) == 1
    assert "`path` column" in one_line_error(capsys)
    (tmp_path / "empty").mkdir()
    assert predict_mindspore.run(base + ["--data_path", str(tmp_path / "empty")]) == 1
    assert "no images found" in one_line_error(capsys)
    assert predict_mindspore.run(["--resume", pth, "--model", "vit_small_patch16", "--data_path", str(tmp_path)]) == 1
    assert "does not fit" in one_line_error(capsys)
    assert predict_mindspore.run(base + ["--data_path", str(tmp_path), "--group_by", "("]) == 1
    assert "--group_by" in one_line_error(capsys)
    assert not os.path.exists(tmp_path / "out")  # nothing created by runs that fail on their input


@pytest.mark.msrun
def test_msrun_shards_images_and_rank0_writes_what_one_process_writes(tmp_path, finetuned_pth):
    import shutil
    import subprocess

    from tests.helpers import ROOT
    from tests.test_distributed import free_port
    if shutil.which("msrun") is None:
        pytest.skip("msrun (installed with mindspore) is not on PATH")
    pth, _ = finetuned_pth
    data = make_dataset(tmp_path / "data", classes=("class_0", "class_1", "class_2"), per_split={"test": 3})
    root = os.path.join(data, "test")
    (tmp_path / "data" / "test" / "class_1" / "z_broken.png").write_bytes(b"no image")
    flags = ["--resume", pth, "--model", "vit_tiny_patch16", "--data_path", root, "--batch_size", "2",
             "--embeddings", "--num_workers", "2"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run(["msrun", "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
                           f"--log_dir={tmp_path / 'logs'}", "--join=True",
                           os.path.join(ROOT, "predict_mindspore.py"), *flags, "--output_dir", str(tmp_path / "ms")],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    logs = "".join(open(tmp_path / "logs" / n).read() for n in os.listdir(tmp_path / "logs"))
    assert done.returncode == 0, logs[-4000:]
    assert predict_mindspore.run(flags + ["--output_dir", str(tmp_path / "one")]) == 0
    sharded, single = read_csv(tmp_path / "ms" / "predictions.csv"), read_csv(tmp_path / "one" / "predictions.csv")
    assert [r["path"] for r in sharded] == [r["path"] for r in single] and len(single) == 10
    for a, b in zip(sharded, single):
        assert a["status"] == b["status"] and a["prediction"] == b["prediction"]
        if a["status"] == "ok":
            assert abs(float(a["prob_class_0"]) - float(b["prob_class_0"])) <= 1e-6
    assert np.allclose(np.load(tmp_path / "ms" / "embeddings.npy"), np.load(tmp_path / "one" / "embeddings.npy"),
                       atol=1e-5, equal_nan=True)
    assert logs.count("10 images: 9 processed") == 1  # rank 0 alone writes and summarises


def test_accelerator_default_o2_predicts_and_draws_heatmaps_within_float16(tmp_path, finetuned_pth):
    """--amp_level O2 (the GPU / Ascend default) on the CPU: same graphs, float16 matmuls."""
    pth, upstream = finetuned_pth
    data = make_dataset(tmp_path / "data", classes=("class_0", "class_1", "class_2"), per_split={"test": 1})
    root = os.path.join(data, "test")
    out, maps = str(tmp_path / "out"), str(tmp_path / "maps")
    assert predict_mindspore.run(["--resume", pth, "--model", "vit_tiny_patch16", "--data_path", root,
                                  "--output_dir", out, "--amp_level", "O2", "--heatmaps", maps, "--target",
                                  "class_1"]) == 0
    rows = read_csv(os.path.join(out, "predictions.csv"))
    probs, _ = upstream_probs_and_embeddings(upstream, [os.path.join(root, r["path"]) for r in rows],
                                             EvalTransform(32))
    ours = np.array([[float(r[f"prob_class_{k}"]) for k in range(3)] for r in rows])
    assert np.abs(ours - probs).max() <= 8 * 2.0 ** -10
    assert sorted(os.listdir(maps)) == ["class_0__0.png", "class_1__0.png", "class_2__0.png"]


def test_ctrl_c_mid_run_leaves_no_partial_file(tmp_path, finetuned_pth, monkeypatch):
    from util_mindspore import inference_runtimes

    pth, _ = finetuned_pth
    data = make_dataset(tmp_path / "data", per_split={"test": 4})
    original, calls = inference_runtimes.MindSporeRuntime.__call__, []

    def interrupted(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, images)
    monkeypatch.setattr(inference_runtimes.MindSporeRuntime, "__call__", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict_mindspore.run(["--resume", pth, "--model", "vit_tiny_patch16", "--data_path",
                               os.path.join(data, "test"), "--output_dir", str(out), "--batch_size", "4",
                               "--embeddings"])
    assert os.listdir(out) == []  # neither the CSVs nor embeddings.npy, finished or partial


def test_unwritable_output_dir_is_one_line(tmp_path, finetuned_pth, capsys):
    pth, _ = finetuned_pth
    data = make_dataset(tmp_path / "data", per_split={"test": 1})
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the output folder should be")
    assert predict_mindspore.run(["--resume", pth, "--model", "vit_tiny_patch16", "--data_path",
                                  os.path.join(data, "test"), "--output_dir", str(blocker / "out")]) == 1
    assert "not_a_dir" in one_line_error(capsys)
