"""predict_mindspore.py: predictions and embeddings equal upstream's model on the same images, with every runtime;
outputs named and written safely whatever the input's names; bad input is one line."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import export_mindspore
import predict_mindspore
from tests.conftest import require
from tests.helpers import ROOT, TINY, TOKEN, make_dataset, one_line_error, publish
from util_mindspore.data.transforms import EvalTransform, NotebookEmbeddingTransform

torch = pytest.importorskip("torch", reason="upstream's model is the reference")
from util_mindspore.reference import checkpoint_layouts as layouts  # noqa: E402
from util_mindspore.reference.torch_models import create_reference  # noqa: E402


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
    """upstream's checkpoint-best.pth of a 2-block ViT-Tiny at 32 px (its args name the model)."""
    path = str(tmp_path / "checkpoint-best.pth")
    return path, layouts.upstream_best(path, "vit_tiny_patch16", img_size=32, depth=2, model=TINY)


def probabilities(rows, k=3):
    return np.array([[float(r[f"prob_class_{i}"]) for i in range(k)] for r in rows])


def test_labelled_folder_with_bad_files_gives_upstream_probabilities_and_embeddings(tmp_path, finetuned_pth, capsys):
    pth, upstream = finetuned_pth
    data = make_dataset(tmp_path / "data", classes=("class_0", "class_1", "class_2"), per_split={"test": 2})
    root = os.path.join(data, "test")
    with open(os.path.join(root, "class_1", "broken.jpg"), "wb") as fh:
        fh.write(b"\xff\xd8 not really a jpeg")
    os.mkfifo(os.path.join(root, "class_2", "pipe.jpg"))  # opening it would hang: it must never be opened
    out = str(tmp_path / "out")
    assert predict_mindspore.run(["--resume", pth, "--data_path", root, "--output_dir", out, "--batch_size", "4",
                                  "--embeddings"]) == 0
    printed = capsys.readouterr().out
    assert "7 images: 6 processed" in printed and "1 unreadable" in printed and "broken.jpg" in printed
    rows = read_csv(os.path.join(out, "predictions.csv"))
    assert [r["path"] for r in rows] == [os.path.join(c, f) for c, f in [
        ("class_0", "0.png"), ("class_0", "1.png"), ("class_1", "0.png"), ("class_1", "1.png"),
        ("class_1", "broken.jpg"), ("class_2", "0.png"), ("class_2", "1.png")]]
    bad = rows[4]
    assert bad["status"].startswith("unreadable") and bad["prediction"] == "" and bad["correct"] == ""
    good = [r for r in rows if r["status"] == "ok"]
    probs, embeddings = upstream_probs_and_embeddings(upstream, [os.path.join(root, r["path"]) for r in good],
                                                      EvalTransform(32))
    assert np.abs(probabilities(good) - probs).max() <= 1e-5
    for r, p in zip(good, probs):
        assert r["prediction"] == f"class_{int(np.argmax(p))}" and r["label"] == r["path"].split(os.sep)[0]
        assert r["correct"] == str(int(r["prediction"] == r["label"]))
    stored = np.load(os.path.join(out, "embeddings.npy"))
    assert stored.shape == (7, 192) and stored.dtype == np.float32 and np.isnan(stored[4]).all()
    assert np.abs(np.delete(stored, 4, axis=0) - embeddings).max() <= 1e-5
    features = read_csv(os.path.join(out, "Feature.csv"))
    assert [f["name"] for f in features] == [r["path"] for r in good] and len(features[0]) == 193
    meta = json.load(open(os.path.join(out, "embeddings.json")))
    assert meta["vector"].startswith("fc_norm(mean of the patch tokens)") and meta["global_pool"] is True
    assert not [f for f in os.listdir(out) if "partial" in f or f.startswith(".")]


def test_csv_list_groups_by_patient_counts_the_unmatched_and_gives_notebook_embeddings(tmp_path, finetuned_pth,
                                                                                       capsys):
    pth, upstream = finetuned_pth
    rng = np.random.default_rng(1)
    names = ["p1_left.png", "p1_right.png", "p2_left.png", "scan.png"]
    for name in names:
        Image.fromarray((rng.random((50, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / name)
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n" + "".join(f"{n},class_{i % 2}\n" for i, n in enumerate(names)))
    out = str(tmp_path / "out")
    assert predict_mindspore.run(["--resume", pth, "--data_path", str(listing), "--output_dir", out, "--group_by",
                                  r"^(p\d+)_", "--embeddings", "--embedding_preprocessing", "notebook"]) == 0
    assert "--group_by: 2 groups; 1 images matched no group (scan.png)" in capsys.readouterr().out
    rows = read_csv(os.path.join(out, "predictions.csv"))
    assert [r["label"] for r in rows] == ["class_0", "class_1", "class_0", "class_1"]
    groups = read_csv(os.path.join(out, "predictions_by_group.csv"))
    assert [(g["group"], g["images"], g["label"]) for g in groups] == [("p1", "2", ""), ("p2", "1", "class_0")]
    assert np.allclose([float(groups[0][f"prob_class_{k}"]) for k in range(3)], probabilities(rows[:2]).mean(0),
                       rtol=1e-12)
    _, expected = upstream_probs_and_embeddings(upstream, [str(tmp_path / n) for n in names],
                                                NotebookEmbeddingTransform(32))
    assert np.abs(np.load(os.path.join(out, "embeddings.npy")) - expected).max() <= 1e-5
    assert json.load(open(os.path.join(out, "embeddings.json")))["preprocessing"] == "notebook"


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_exported_runtimes_give_the_mindspore_models_probabilities(tmp_path, finetuned_pth, runtime):
    pth, _ = finetuned_pth
    if runtime == "openvino":
        require(__import__("importlib").util.find_spec("openvino"), "openvino (pip install -e '.[openvino]')")
    data = make_dataset(tmp_path / "data", per_split={"test": 2})
    fmt = "onnx" if runtime == "onnxruntime" else "openvino"
    assert export_mindspore.run(["--resume", pth, "--format", fmt, "--output_dir", str(tmp_path / "export")]) == 0
    exported = str(tmp_path / "export" / (f"{TINY}.onnx" if fmt == "onnx" else f"{TINY}.xml"))
    results = {}
    for name, resume in (("mindspore", pth), (runtime, exported)):
        out = str(tmp_path / name)
        argv = ["--resume", resume, "--data_path", os.path.join(data, "test"), "--output_dir", out, "--batch_size", "4"]
        if name == "mindspore":
            assert predict_mindspore.run(argv) == 0
        else:  # in a fresh process: an exported file runs without MindSpore ever being imported
            done = subprocess.run([sys.executable, "-c", "import sys, predict_mindspore; code = predict_mindspore.run("
                                   "sys.argv[1:]); print('mindspore loaded:', 'mindspore' in sys.modules); "
                                   "sys.exit(code)", *argv], capture_output=True, text=True, cwd=ROOT, timeout=300)
            assert done.returncode == 0 and "mindspore loaded: False" in done.stdout, done.stderr[-2000:]
        results[name] = read_csv(os.path.join(out, "predictions.csv"))
    assert [r["path"] for r in results[runtime]] == [r["path"] for r in results["mindspore"]]
    assert np.abs(probabilities(results[runtime]) - probabilities(results["mindspore"])).max() <= 1e-5
    assert [r["prediction"] for r in results[runtime]] == [r["prediction"] for r in results["mindspore"]]


def test_openvino_from_a_checkpoint_exports_once_verified_and_bfloat16_says_what_it_changed(tmp_path, finetuned_pth,
                                                                                            capsys):
    """--runtime openvino with a .pth: exported once into the weights cache (checked against MindSpore to 1e-4),
    reused on the next run; float32 by default; bfloat16 only when asked, reporting top-1 agreement and the
    largest probability difference on its float32 sample, in the summary and the report."""
    require(__import__("importlib").util.find_spec("openvino"), "openvino (pip install -e '.[openvino]')")
    from util_mindspore.inference.runtimes import openvino_bfloat16_available
    pth, upstream = finetuned_pth
    data = make_dataset(tmp_path / "data", classes=("class_0", "class_1", "class_2"), per_split={"test": 3})
    root = os.path.join(data, "test")
    cache = str(tmp_path / "cache")
    out = str(tmp_path / "f32")
    argv = ["--resume", pth, "--data_path", root, "--runtime", "openvino", "--weights_cache_dir", cache]
    assert predict_mindspore.run(argv + ["--output_dir", out]) == 0
    assert "exported" in capsys.readouterr().out
    exports = [f for f in os.listdir(os.path.join(cache, "openvino")) if not f.endswith(".lock")]
    rows = read_csv(os.path.join(out, "predictions.csv"))
    probs, _ = upstream_probs_and_embeddings(upstream, [os.path.join(root, r["path"]) for r in rows],
                                             EvalTransform(32))
    assert np.abs(probabilities(rows) - probs).max() <= 1e-4
    assert predict_mindspore.run(argv + ["--output_dir", str(tmp_path / "again")]) == 0
    assert "exported" not in capsys.readouterr().out and len(exports) == 1
    assert [f for f in os.listdir(os.path.join(cache, "openvino")) if not f.endswith(".lock")] == exports
    bf16 = argv + ["--output_dir", str(tmp_path / "bf16"), "--precision", "bfloat16", "--report"]
    if not openvino_bfloat16_available():
        assert predict_mindspore.run(bf16) == 1
        assert "this CPU has no bfloat16" in one_line_error(capsys)
        return
    assert predict_mindspore.run(bf16) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("bfloat16 against float32")]
    assert len(line) == 1 and "on 9 images: top-1 class agrees on" in line[0]
    report = open(tmp_path / "bf16" / "report.html", encoding="utf-8").read()
    assert "bfloat16 against float32 on 9 images" in report


def test_a_published_encoder_writes_embeddings_only_as_the_notebook_extracts_them(tmp_path, hub, monkeypatch):
    """The published MAE checkpoint's embedding is latent_feature.ipynb's: fc_norm at its initial values."""
    from tests.checkpoints.test_trained_model import notebook_vector, reduced
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with reduced("RETFound_mae") as small:
        publish(hub, tmp_path, "RETFound_mae_meh", lambda path: layouts.mae_pretrained(path, "RETFound_mae", depth=2))
        image = tmp_path / "eye.png"
        Image.fromarray((np.random.default_rng(3).random((240, 260, 3)) * 255).astype(np.uint8)).save(image)
        out = str(tmp_path / "out")
        assert predict_mindspore.run(["--resume", "RETFound_mae_meh", "--model", small, "--data_path", str(image),
                                      "--embeddings", "--output_dir", out]) == 0
    assert sorted(os.listdir(out)) == ["Feature.csv", "embeddings.json", "embeddings.npy"]
    expected = notebook_vector(str(tmp_path / "RETFound_mae_meh.pth"), "RETFound_mae",
                               EvalTransform(224)(Image.open(image))[None], depth=2)
    assert np.abs(np.load(os.path.join(out, "embeddings.npy")) - expected).max() <= 1e-5
    assert "initial values" in json.load(open(os.path.join(out, "embeddings.json")))["vector"]


def test_any_byte_name_works_in_heat_maps_the_report_and_the_csvs(tmp_path, finetuned_pth):
    """x.jpg and x.png, a/b.jpg and a__b.jpg each get their own heat map; a name that is not UTF-8 is drawn and
    written with \\xNN escapes; a name starting like a spreadsheet formula is neutralised."""
    pth, _ = finetuned_pth
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(2)
    names = [b"x.jpg", b"x.png", b"a/b.jpg", b"a__b.jpg", b"\xff\xfe.png", b"=cmd.png"]
    for name in names:
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(os.path.join(os.fsencode(root), name))
    out, maps = tmp_path / "out", tmp_path / "maps"
    assert predict_mindspore.run(["--resume", pth, "--data_path", str(root), "--output_dir", str(out), "--heatmaps",
                                  str(maps), "--report", "--embeddings"]) == 0
    drawn = sorted(os.path.relpath(os.path.join(d, f), maps) for d, _, fs in os.walk(maps) for f in fs)
    assert len(drawn) == 6 and {"x.jpg.png", "x.png.png", "a__b.jpg.png", os.path.join("a", "b.jpg.png")} <= set(drawn)
    text = (out / "predictions.csv").read_text(encoding="utf-8")
    assert "\\xff\\xfe.png" in text and "'=cmd.png" in text and "\ndcff" not in text and "\\udcff" not in text
    feature = (out / "Feature.csv").read_text(encoding="utf-8")
    assert "\\xff\\xfe.png" in feature and "'=cmd.png" in feature
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "\\xff\\xfe.png" in report and report.count('class="heat"') == 6 and "%FF%FE.png.png" in report


def test_bad_input_is_one_line_and_leaves_no_folder(tmp_path, finetuned_pth, capsys):
    pth, _ = finetuned_pth
    base = ["--resume", pth, "--output_dir", str(tmp_path / "out")]
    assert predict_mindspore.run(base + ["--data_path", str(tmp_path / "missing")]) == 1
    assert "missing" in one_line_error(capsys)
    (tmp_path / "list.csv").write_text("file\nx.png\n")
    assert predict_mindspore.run(base + ["--data_path", str(tmp_path / "list.csv")]) == 1
    assert "`path` column" in one_line_error(capsys)
    (tmp_path / "empty").mkdir()
    assert predict_mindspore.run(base + ["--data_path", str(tmp_path / "empty")]) == 1
    assert "no images found" in one_line_error(capsys)
    assert predict_mindspore.run(base + ["--data_path", str(tmp_path), "--model", "vit_small_patch16"]) == 1
    assert "does not fit --model vit_small_patch16" in one_line_error(capsys)
    assert predict_mindspore.run(base + ["--data_path", str(tmp_path), "--group_by", "("]) == 1
    assert "--group_by" in one_line_error(capsys)
    assert predict_mindspore.run(base + ["--data_path", str(tmp_path), "--input_size", "64"]) == 1
    assert "--input_size 64 does not fit" in one_line_error(capsys)
    assert predict_mindspore.run(base + ["--data_path", str(tmp_path), "--precision", "bfloat16"]) == 1
    assert "--precision bfloat16 is OpenVINO's" in one_line_error(capsys)
    assert predict_mindspore.run(base + ["--data_path", str(tmp_path), "--batch_size", "0"]) == 1
    assert "--batch_size 0 is outside [1, inf]" in one_line_error(capsys)
    assert not os.path.exists(tmp_path / "out")


def test_damaged_checkpoints_and_busy_folders_are_one_line(tmp_path, copy_task, capsys):
    from util_mindspore.process import run_lock
    best = os.path.join(copy_task, "checkpoint-best.ckpt")
    data = bytearray(open(best, "rb").read())
    data[len(data) // 2] ^= 0x04
    damaged = str(tmp_path / "damaged.ckpt")
    open(damaged, "wb").write(data)
    image = tmp_path / "eye.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    assert predict_mindspore.run(["--resume", damaged, "--data_path", str(image), "--output_dir",
                                  str(tmp_path / "out")]) == 1
    assert "damaged checkpoint: checksum mismatch" in one_line_error(capsys)
    busy = tmp_path / "busy"
    with run_lock.hold(str(busy), "prediction"):
        assert predict_mindspore.run(["--resume", best, "--data_path", str(image), "--output_dir", str(busy)]) == 1
        assert f"{busy} is in use by another run (prediction by PID {os.getpid()}" in one_line_error(capsys)


@pytest.mark.msrun
def test_msrun_shards_images_and_rank0_writes_what_one_process_writes(tmp_path, finetuned_pth):
    import shutil
    import subprocess

    from tests.helpers import ROOT
    from tests.process.test_distributed import free_port
    require(shutil.which("msrun"), "msrun (installed with mindspore)")
    pth, _ = finetuned_pth
    data = make_dataset(tmp_path / "data", classes=("class_0", "class_1", "class_2"), per_split={"test": 3})
    root = os.path.join(data, "test")
    (tmp_path / "data" / "test" / "class_1" / "z_broken.png").write_bytes(b"no image")
    flags = ["--resume", pth, "--data_path", root, "--batch_size", "2", "--embeddings", "--num_workers", "2"]
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
    assert predict_mindspore.run(["--resume", pth, "--data_path", root, "--output_dir", out, "--amp_level", "O2",
                                  "--heatmaps", maps, "--target", "class_1"]) == 0
    rows = read_csv(os.path.join(out, "predictions.csv"))
    probs, _ = upstream_probs_and_embeddings(upstream, [os.path.join(root, r["path"]) for r in rows],
                                             EvalTransform(32))
    assert np.abs(probabilities(rows) - probs).max() <= 8 * 2.0 ** -10
    assert sorted(os.listdir(maps)) == ["class_0", "class_1", "class_2"]
    assert os.listdir(os.path.join(maps, "class_1")) == ["0.png.png"]


def test_unwritable_output_dir_is_one_line(tmp_path, finetuned_pth, capsys):
    pth, _ = finetuned_pth
    data = make_dataset(tmp_path / "data", per_split={"test": 1})
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the output folder should be")
    assert predict_mindspore.run(["--resume", pth, "--data_path", os.path.join(data, "test"), "--output_dir",
                                  str(blocker / "out")]) == 1
    assert "not_a_dir" in one_line_error(capsys)


def test_an_upstream_encoder_from_any_family_gives_embeddings_without_a_head(tmp_path):
    """A Meta DINOv2 .pth as --resume with --embeddings: the notebook's DINOv2 vector (mean of normed patch tokens,
    a LayerNorm without weights)."""
    path = str(tmp_path / "dinov2_vits14_pretrain.pth")
    layouts.meta_dinov2(path, "dinov2_vits14")
    image = tmp_path / "eye.png"
    Image.fromarray((np.random.default_rng(8).random((70, 60, 3)) * 255).astype(np.uint8)).save(image)
    out = str(tmp_path / "out")
    assert predict_mindspore.run(["--resume", path, "--data_path", str(image), "--embeddings", "--output_dir", out,
                                  "--input_size", "56"]) == 0
    reference = layouts.upstream_load(create_reference("dinov2_vits14", img_size=56, num_classes=0), path)
    with torch.no_grad():
        pooled = reference.forward_features(torch.from_numpy(EvalTransform(56)(Image.open(image))[None]))
        pooled = pooled[:, 1:, :].mean(dim=1)
        expected = torch.nn.functional.layer_norm(pooled, pooled.shape[-1:], eps=1e-6).numpy()
    assert np.abs(np.load(os.path.join(out, "embeddings.npy")) - expected).max() <= 1e-5
