"""The command line end to end: the README Quickstart on sample data, --eval, --resume, and data errors."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

import engine_finetune_mindspore
import main_finetune_mindspore
from tests.helpers import make_dataset, read_metrics, read_tensorboard_scalars, small_argv
from util_mindspore import metrics as metrics_lib
from util_mindspore import train_checkpoint
from util_mindspore.train_checkpoint import read_checkpoint
from util_mindspore.weights import load_pretrained_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quickstart_argv():
    """The training command of the README Quickstart's first line, as argv (so the README cannot rot)."""
    text = open(os.path.join(ROOT, "README_MindSpore.md"), encoding="utf-8").read()
    section = text.split("## Quickstart", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S).group(1).strip().splitlines()
    assert len(block) == 2, "the Quickstart block has exactly two lines: run, then test"
    command = block[0].split("python main_finetune_mindspore.py", 1)[1]
    return shlex.split(command)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("quickstart"))
    argv = quickstart_argv() + ["--output_dir", out, "--log_dir", os.path.join(out, "tb")]
    cwd = os.getcwd()
    os.chdir(ROOT)  # the README runs from the repository root (relative --data_path)
    try:
        assert main_finetune_mindspore.run(argv) == 0
    finally:
        os.chdir(cwd)
    args = main_finetune_mindspore.get_args_parser().parse_args(argv)
    return os.path.join(out, args.task), argv


def test_quickstart_learns_the_sample_data(quickstart):
    task_dir, argv = quickstart
    args = main_finetune_mindspore.get_args_parser().parse_args(argv)
    for name in ("log.txt", "metrics_val.csv", "metrics_test.csv", "predictions_val.csv", "predictions_test.csv",
                 "confusion_matrix_test.jpg", "roc_curves_test.png", "training_curves.png", "checkpoint-best.ckpt",
                 "checkpoint-last.ckpt"):
        assert os.path.getsize(os.path.join(task_dir, name)) > 0, name
    assert len(read_metrics(os.path.join(task_dir, "metrics_val.csv"))) == args.epochs
    test_rows = read_metrics(os.path.join(task_dir, "metrics_test.csv"))
    assert len(test_rows) == 1
    accuracy = test_rows[0][metrics_lib.METRIC_COLUMNS.index("accuracy")]
    assert accuracy >= 0.90, f"test accuracy {accuracy:.3f}"
    log = [json.loads(line) for line in open(os.path.join(task_dir, "log.txt"))]
    assert [row["epoch"] for row in log] == list(range(args.epochs))
    assert {"train_loss", "train_lr", "n_parameters"} <= set(log[0])


def test_tensorboard_gets_upstreams_scalars(quickstart):
    task_dir, argv = quickstart
    args = main_finetune_mindspore.get_args_parser().parse_args(argv)
    pytest.importorskip("tensorboardX")
    scalars = read_tensorboard_scalars(os.path.join(args.log_dir, args.task))
    assert set(scalars) == {"loss/train", "lr", "loss/val"} | {f"perf/{m}" for m in (
        "accuracy", "f1", "roc_auc", "hamming", "jaccard", "precision", "recall", "average_precision", "kappa",
        "score")}
    steps_per_epoch = len(scalars["lr"]) // args.epochs
    assert len(scalars["loss/train"]) == len(scalars["lr"]) == args.epochs * steps_per_epoch
    assert [s for s, _ in scalars["lr"][:steps_per_epoch + 1]] == \
        [int((it / steps_per_epoch + epoch) * 1000) for epoch in (0, 1) for it in range(steps_per_epoch)][
            :steps_per_epoch + 1]
    log = [json.loads(line) for line in open(os.path.join(task_dir, "log.txt"))]
    assert [s for s, _ in scalars["perf/score"]] == list(range(args.epochs))
    val_rows = read_metrics(os.path.join(task_dir, "metrics_val.csv"))
    np.testing.assert_allclose([v for _, v in scalars["perf/f1"]], [row[2] for row in val_rows], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["loss/val"]], [r["val_loss"] for r in log], rtol=1e-6)
    np.testing.assert_allclose(np.mean([v for _, v in scalars["loss/train"][:steps_per_epoch]]),
                               log[0]["train_loss"], rtol=1e-5)


def test_metrics_csv_agrees_with_sklearn_on_the_predictions(quickstart):
    task_dir, _ = quickstart
    paths, labels, probs, class_names = metrics_lib.read_predictions_csv(os.path.join(task_dir, "predictions_test.csv"))
    assert class_names == ["exudate", "haemorrhage", "normal"]
    assert len(paths) == len(set(paths)) == 60
    loss = float(np.mean(-np.log(probs[np.arange(len(labels)), labels])))
    recomputed = metrics_lib.compute_metrics(labels, probs, loss)
    written = read_metrics(os.path.join(task_dir, "metrics_test.csv"))[0]
    # val_loss (column 0) is upstream's mean of per-batch losses: tests/test_engine_finetune_mindspore.py
    assert written[1:] == pytest.approx([recomputed[k] for k in metrics_lib.METRIC_COLUMNS[1:]], abs=1e-12)


def test_eval_resume_reproduces_the_end_of_training_test_metrics(quickstart, tmp_path):
    task_dir, argv = quickstart
    args = main_finetune_mindspore.get_args_parser().parse_args(argv)
    data_only_test = tmp_path / "data"
    shutil.copytree(os.path.join(ROOT, args.data_path, "test"), data_only_test / "test")  # train/val not needed
    out = tmp_path / "eval_out"
    code = main_finetune_mindspore.run([
        "--eval", "--resume", os.path.join(task_dir, "checkpoint-best.ckpt"), "--model", args.model,
        "--input_size", str(args.input_size), "--nb_classes", str(args.nb_classes), "--data_path", str(data_only_test),
        "--output_dir", str(out), "--task", "eval", "--batch_size", str(args.batch_size)])
    assert code == 0
    assert read_metrics(out / "eval" / "metrics_test.csv") == read_metrics(os.path.join(task_dir, "metrics_test.csv"))
    assert (out / "eval" / "confusion_matrix_test.jpg").exists()
    assert not (out / "eval" / "checkpoint-best.ckpt").exists()


def test_resume_continues_at_the_next_epoch_with_the_same_lr_and_optimizer_state(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data")
    seen = {}
    original_train = engine_finetune_mindspore.train_one_epoch
    original_save = train_checkpoint.save_checkpoint

    def recording_train(train_step, loader, epoch, args, mixup_fn=None, tb_log=None):
        if seen.get("interrupt_at") == epoch:
            raise KeyboardInterrupt
        stats, lrs = original_train(train_step, loader, epoch, args, mixup_fn, tb_log)
        seen.setdefault(args.output_dir, {})[epoch] = lrs
        return stats, lrs

    def copying_save(path, model, train_step, epoch, *rest):
        original_save(path, model, train_step, epoch, *rest)
        if path.endswith("checkpoint-last.ckpt"):
            shutil.copy(path, path.replace(".ckpt", f"-epoch{epoch}.ckpt"))

    monkeypatch.setattr(engine_finetune_mindspore, "train_one_epoch", recording_train)
    monkeypatch.setattr(train_checkpoint, "save_checkpoint", copying_save)
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    assert main_finetune_mindspore.run(small_argv(data, whole)) == 0
    seen["interrupt_at"] = 1
    with pytest.raises(KeyboardInterrupt):
        main_finetune_mindspore.run(small_argv(data, broken))
    seen["interrupt_at"] = None
    last = os.path.join(broken, "t", "checkpoint-last.ckpt")
    assert main_finetune_mindspore.run(small_argv(data, broken, extra=["--resume", last])) == 0

    assert sorted(seen[broken]) == [0, 1, 2]
    for epoch in (1, 2):
        assert seen[broken][epoch] == seen[whole][epoch]  # the same lr at every iteration
    at_whole = read_checkpoint(os.path.join(whole, "t", "checkpoint-last-epoch1.ckpt"))
    at_resumed = read_checkpoint(last.replace(".ckpt", "-epoch1.ckpt"))
    assert at_whole.epoch == at_resumed.epoch == 1
    state_whole, state_resumed = at_whole.state, at_resumed.state
    assert set(state_whole) == set(state_resumed) and "optimizer.step" in state_whole
    for name, array in state_whole.items():
        np.testing.assert_allclose(state_resumed[name], array, rtol=1e-5, atol=1e-9, err_msg=name)
    epochs_logged = [json.loads(line)["epoch"] for line in open(os.path.join(broken, "t", "log.txt"))]
    assert epochs_logged == [0, 1, 2]


@pytest.mark.parametrize("damage,message", [
    (lambda root: shutil.rmtree(os.path.join(root, "val")), "val: split folder not found"),
    (lambda root: [os.remove(os.path.join(root, "train", "b", f))
                   for f in os.listdir(os.path.join(root, "train", "b"))],
     "class 'b' has no images"),
    (lambda root: os.rename(os.path.join(root, "test", "c"), os.path.join(root, "test", "d")),
     "class folders differ between train"),
    (lambda root: [open(os.path.join(root, "val", "a", "0.png"), "wb").write(b"not a png"),
                   open(os.path.join(root, "test", "b", "2.png"), "wb").write(b"")],
     "2 unreadable image file(s):"),
])
def test_data_errors_are_caught_before_training(tmp_path, capsys, damage, message):
    data = make_dataset(tmp_path / "data")
    damage(data)
    assert main_finetune_mindspore.run(small_argv(data, str(tmp_path / "out"))) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "out" / "t" / "checkpoint-last.ckpt")


def test_an_image_that_cannot_be_decoded_stops_the_run_in_one_line_naming_it(tmp_path, capsys):
    """Start-up reads headers only: a PNG cut after its header is found when it is decoded (or up front with
    --check_images), never trained on with a wrong label."""
    data = make_dataset(tmp_path / "data")
    cut = os.path.join(data, "train", "b", "3.png")
    with open(cut, "r+b") as fh:
        fh.truncate(60)
    assert main_finetune_mindspore.run(small_argv(data, str(tmp_path / "out"), epochs=2)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {cut}: cannot be decoded") and "\n" not in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "out" / "t" / "checkpoint-last.ckpt")
    assert main_finetune_mindspore.run(small_argv(data, str(tmp_path / "out2"), extra=["--check_images"])) == 1
    assert capsys.readouterr().err.strip() == f"error: 1 unreadable image file(s): {cut}"


def test_nb_classes_must_match_the_folders(tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    argv = small_argv(data, str(tmp_path / "out"))
    argv[argv.index("--nb_classes") + 1] = "5"
    assert main_finetune_mindspore.run(argv) == 1
    assert "--nb_classes 5 does not match the 3 class folders" in capsys.readouterr().err


def test_a_resume_checkpoint_that_does_not_fit_is_refused(tmp_path):
    data = make_dataset(tmp_path / "data")
    assert main_finetune_mindspore.run(small_argv(data, str(tmp_path / "out"), epochs=2)) == 0
    ckpt = str(tmp_path / "out" / "t" / "checkpoint-last.ckpt")
    # our training checkpoint is also a clean --finetune source: optimizer state is not "unexpected"
    import models_vit_mindspore
    report = load_pretrained_weights(models_vit_mindspore.create_model("vit_tiny_patch16", img_size=32, num_classes=3),
                                     ckpt)
    assert report.missing == report.unexpected == report.reinitialized == [] and len(report.loaded) == 152
    argv = small_argv(data, str(tmp_path / "other"), epochs=2, extra=["--resume", ckpt])
    argv[argv.index("vit_tiny_patch16")] = "vit_small_patch16"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "main_finetune_mindspore.py"), *argv],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 1
    assert "does not fit this model" in done.stderr and "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "other" / "t" / "checkpoint-last.ckpt")


def test_linear_probe_trains_only_the_head(tmp_path):
    data = make_dataset(tmp_path / "data")
    start = tmp_path / "start"
    assert main_finetune_mindspore.run(small_argv(data, str(start), epochs=2)) == 0
    first = os.path.join(start, "t", "checkpoint-last.ckpt")
    out = tmp_path / "lp"
    assert main_finetune_mindspore.run(small_argv(data, str(out), epochs=2,
                                                  extra=["--adaptation", "lp", "--finetune", first])) == 0
    before = read_checkpoint(first).weights
    last = read_checkpoint(os.path.join(out, "t", "checkpoint-last.ckpt"))
    after, state = last.weights, last.state
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    assert changed == ["head.bias", "head.weight"]
    assert sorted(k for k in state if k.startswith("optimizer.exp_avg.")) == [
        "optimizer.exp_avg.head.bias", "optimizer.exp_avg.head.weight"]


def test_a_second_run_reuses_the_compile_cache_and_gives_the_same_results(tmp_path):
    """Two processes, same command: the second loads the graphs the first compiled (no new cache files, none
    rewritten) and writes the same metrics; other graph-shaping flags get a directory of their own."""
    data = make_dataset(tmp_path / "data")
    cache = tmp_path / "compile"
    env = dict(os.environ, RETFOUND_MS_COMPILE_CACHE="off")  # the flag below must win over the environment

    def train(out, extra=()):
        argv = small_argv(data, str(tmp_path / out), epochs=2, extra=["--compile_cache_dir", str(cache), *extra])
        done = subprocess.run([sys.executable, os.path.join(ROOT, "main_finetune_mindspore.py"), *argv],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return re.search(r"compile cache: (\S+)", done.stdout).group(1)

    where = train("first")
    files = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert any(str(p).endswith(".mindir") for p in files), f"no compiled graph was cached: {sorted(files)}"
    assert train("second") == where
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == files
    for name in ("metrics_val.csv", "metrics_test.csv", "predictions_test.csv"):
        first = (tmp_path / "first" / "t" / name).read_text()
        assert (tmp_path / "second" / "t" / name).read_text() == first, name
    assert train("other", extra=["--drop_path", "0.1"]) != where


@pytest.mark.parametrize("level", ["O1", "O2", "O3"])
def test_mixed_precision_trains_evaluates_and_resumes_across_levels(tmp_path, level):
    """Train at `level`; the checkpoint holds the PyTorch names; --eval --resume at `level` gives the final test
    metrics again; --resume under O0 continues the run (and, for O2, --eval under O2 reads an O0 checkpoint)."""
    import models_vit_mindspore
    data = make_dataset(tmp_path / "data")
    trained = tmp_path / "trained"
    assert main_finetune_mindspore.run(small_argv(data, str(trained), epochs=2, extra=[
        "--amp_level", level, "--drop_path", "0.1"])) == 0  # drop path in float16 too
    best, last = trained / "t" / "checkpoint-best.ckpt", trained / "t" / "checkpoint-last.ckpt"
    saved = read_checkpoint(str(best))
    weights, state = saved.weights, saved.state
    names = {n for n, _ in models_vit_mindspore.create_model("vit_tiny_patch16", img_size=32,
                                                            num_classes=3).parameters_and_names()}
    assert set(weights) == names and all(a.dtype == np.float32 for a in weights.values())
    scale = float(state["loss_scale.scale"].reshape(()))
    assert scale > 0 and np.log2(scale) == int(np.log2(scale))  # GradScaler's scale: powers of two

    evaluated = tmp_path / "evaluated"
    assert main_finetune_mindspore.run(small_argv(data, str(evaluated), extra=[
        "--eval", "--resume", str(best), "--amp_level", level])) == 0
    assert read_metrics(evaluated / "t" / "metrics_test.csv") == read_metrics(trained / "t" / "metrics_test.csv")

    resumed = tmp_path / "resumed"
    shutil.copytree(trained, resumed)
    assert main_finetune_mindspore.run(small_argv(data, str(resumed), epochs=3, extra=[
        "--resume", str(resumed / "t" / "checkpoint-last.ckpt"), "--amp_level", "O0"])) == 0
    assert [json.loads(line)["epoch"] for line in open(resumed / "t" / "log.txt")] == [0, 1, 2]
    continued = read_checkpoint(str(resumed / "t" / "checkpoint-last.ckpt"))
    assert continued.epoch == 2 and set(continued.state) == set(read_checkpoint(str(last)).state)

    if level == "O2":
        back = tmp_path / "back"
        assert main_finetune_mindspore.run(small_argv(data, str(back), extra=[
            "--eval", "--resume", str(resumed / "t" / "checkpoint-last.ckpt"), "--amp_level", "O2"])) == 0
        assert len(read_metrics(back / "t" / "metrics_test.csv")) == 1


def test_a_run_leaves_the_working_directory_as_it_was(tmp_path):
    """MindSpore's AMP rewrite wrote rewritten_network/*.py beside every O1 run, and compile errors rank_*/:
    nothing may land in the directory the user runs from."""
    data = make_dataset(tmp_path / "data")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MS_OM_PATH", "MS_COMPILER_CACHE_PATH")}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "main_finetune_mindspore.py"),
                           *small_argv(data, str(tmp_path / "out"), epochs=2, extra=["--amp_level", "O1"])],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.listdir(cwd) == []
    assert (tmp_path / "out" / "t" / "checkpoint-best.ckpt").exists()


# Every flag of current upstream main_finetune.py (rmaphoh/RETFound, 2025; RETFound_MAE's are a subset), with its
# default there. Read from upstream's get_args_parser.
UPSTREAM_FLAGS = {
    "batch_size": 128, "epochs": 50, "accum_iter": 1, "model": "vit_large_patch16", "model_arch": "dinov3_vits16",
    "input_size": 256, "drop_path": 0.2, "global_pool": True, "clip_grad": None, "weight_decay": 0.05, "lr": None,
    "blr": 5e-3, "layer_decay": 0.65, "min_lr": 1e-6, "warmup_epochs": 10, "color_jitter": None,
    "aa": "rand-m9-mstd0.5-inc1", "smoothing": 0.1, "reprob": 0.25, "remode": "pixel", "recount": 1,
    "resplit": False, "mixup": 0.0, "cutmix": 0.0, "cutmix_minmax": None, "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5, "mixup_mode": "batch", "finetune": "", "task": "", "adaptation": "finetune",
    "data_path": "./data/", "nb_classes": 8, "output_dir": "./output_dir", "log_dir": "./output_logs",
    "dataratio": "1.0", "stratified": False, "device": "cuda", "seed": 0, "resume": "", "start_epoch": 0,
    "eval": False, "dist_eval": False, "num_workers": 10, "pin_mem": True, "world_size": 1, "local_rank": -1,
    "dist_on_itp": False, "dist_url": "env://", "savemodel": True, "norm": "IMAGENET", "enhance": False,
    "datasets_seed": 2026,
}
# Where our default differs, and why (README "Where we deliberately differ"):
# --model: upstream's 'vit_large_patch16' is not a model it defines (its default run stops with a KeyError);
# --device: upstream's 'cuda' stops on a machine without one; ours is the device MindSpore runs on (same on GPU).
# --input_size: None is 256 (upstream's), or 224 for DINOv2 models, which upstream builds at 224 whatever the flag.
OUR_DEFAULTS = {"model": "RETFound_mae", "device": None, "input_size": None}
UPSTREAM_SWITCHES = ["--cls_token", "--resplit", "--stratified", "--eval", "--dist_eval", "--pin_mem", "--dist_on_itp",
                     "--savemodel", "--enhance", "--global_pool"]


def test_every_upstream_flag_is_accepted_with_upstreams_default():
    parser = main_finetune_mindspore.get_args_parser()
    defaults = vars(parser.parse_args([]))
    for flag, default in UPSTREAM_FLAGS.items():
        assert flag in defaults, f"--{flag} missing"
        assert defaults[flag] == OUR_DEFAULTS.get(flag, default), f"--{flag}: default {defaults[flag]!r}"
    for switch in UPSTREAM_SWITCHES:
        parser.parse_args([switch])
    assert parser.parse_args(["--cls_token"]).global_pool is False


def test_the_upstream_readme_command_line_is_accepted():
    """upstream README's train.sh line (paths aside) parses and passes our checks."""
    argv = shlex.split("--model RETFound_dinov2 --model_arch retfound_dinov2 --finetune RETFound_dinov2_meh "
                       "--savemodel --global_pool --batch_size 24 --world_size 1 --epochs 50 --nb_classes 5 "
                       "--data_path ./IDRiD --input_size 224 --task RETFound_dinov2_meh-IDRiD --adaptation finetune "
                       "--dataratio 0.5 --stratified --norm IMAGENET --enhance --datasets_seed 7")
    args = main_finetune_mindspore.get_args_parser().parse_args(argv)
    main_finetune_mindspore.check_args(args)
    assert (args.model_arch, args.dataratio, args.stratified) == ("retfound_dinov2", "0.5", True)


@pytest.mark.parametrize("ratio", ["0", "1.5", "0.5,0.25", "half"])
def test_a_dataratio_outside_0_1_is_refused_in_one_line(tmp_path, capsys, ratio):
    data = make_dataset(tmp_path / "data")
    assert main_finetune_mindspore.run(small_argv(data, str(tmp_path / "out"), extra=["--dataratio", ratio])) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--dataratio '{ratio}'" in err[0]


def test_warmup_longer_than_the_run_trains_in_warmup(tmp_path):
    """upstream runs --epochs 2 --warmup_epochs 10: the lr never leaves warm-up."""
    data = make_dataset(tmp_path / "data")
    argv = small_argv(data, str(tmp_path / "out"), epochs=2)
    argv[argv.index("--warmup_epochs") + 1] = "10"
    assert main_finetune_mindspore.run(argv) == 0
    log = [json.loads(line) for line in open(tmp_path / "out" / "t" / "log.txt")]
    lr = 0.02 * 4 / 256
    steps = 24 // 4
    for row in log:  # the mean lr of the epoch, all in warm-up: lr * e / 10
        expected = np.mean([lr * (it / steps + row["epoch"]) / 10 for it in range(steps)])
        assert row["train_lr"] == pytest.approx(expected, rel=1e-9)


def test_a_model_with_default_weights_starts_from_them_without_finetune(tmp_path, hub, monkeypatch, capsys):
    """RETFound_dinov2 starts from LVD-142M as upstream's timm.create_model(pretrained=True); here the same path
    for a tiny model given default weights on the loopback hub (ViT-L is too slow for this test)."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    import models_vit_mindspore
    from tests.torch_reference import create_reference, randomize_
    weights = randomize_(create_reference("vit_tiny_patch16", img_size=48, num_classes=0), seed=3).state_dict()
    path = str(tmp_path / "model.safetensors")
    save_file({k: v.contiguous() for k, v in weights.items() if isinstance(v, torch.Tensor)}, path)
    hub.add("timm/tiny_test.lvd", "model.safetensors", path)
    monkeypatch.setitem(models_vit_mindspore.DEFAULT_PRETRAINED, "vit_tiny_patch16",
                        "timm/tiny_test.lvd/model.safetensors")
    data = make_dataset(tmp_path / "data")
    assert main_finetune_mindspore.run(small_argv(data, str(tmp_path / "out"), epochs=1)) == 0
    assert hub.gets() == 1
    output = "".join(capsys.readouterr())
    assert "vit_tiny_patch16 without --finetune: starting from timm/tiny_test.lvd/model.safetensors" in output
    assert re.search(r"loaded \d+ tensors from timm/tiny_test.lvd/model.safetensors", output)
    assert "interpolated: pos_embed (1, 10, 192)->(1, 5, 192)" in output


def test_dinov2_family_trains_as_upstreams_command_line_and_evaluates(tmp_path, hub):
    """--model Dinov2 --model_arch dinov2_vits14 (LVD-142M weights from the loopback hub), linear probe, then
    --eval --resume of its checkpoint."""
    pytest.importorskip("timm")
    from tests import checkpoint_layouts
    repo, filename = "timm/vit_small_patch14_dinov2.lvd142m", "model.safetensors"
    checkpoint_layouts.timm_dinov2_lvd142m(str(tmp_path / filename), depth=None, name="dinov2_vits14")
    hub.add(repo, filename, str(tmp_path / filename))
    data = make_dataset(tmp_path / "data")
    argv = small_argv(data, str(tmp_path / "out"), epochs=1, extra=["--model", "Dinov2", "--model_arch",
                                                                     "dinov2_vits14", "--adaptation", "lp"])
    argv[argv.index("--input_size") + 1] = "28"
    assert main_finetune_mindspore.run(argv) == 0
    best = tmp_path / "out" / "t" / "checkpoint-best.ckpt"
    assert read_checkpoint(str(best)).meta["model"] == "dinov2_vits14"
    code = main_finetune_mindspore.run(["--eval", "--resume", str(best), "--model", "Dinov2", "--model_arch",
                                        "dinov2_vits14", "--input_size", "28", "--nb_classes", "3", "--data_path",
                                        data, "--output_dir", str(tmp_path / "eval"), "--task", "e",
                                        "--log_dir", "", "--batch_size", "4"])
    assert code == 0
    assert read_metrics(tmp_path / "eval" / "e" / "metrics_test.csv") == \
        read_metrics(tmp_path / "out" / "t" / "metrics_test.csv")


def test_dinov3_family_fine_tunes_from_a_meta_checkpoint_and_predicts_with_heatmaps(tmp_path):
    """--model Dinov3 --model_arch dinov3_vits16 --finetune <Meta .pth>, then predict with heat maps on the
    checkpoint (storage tokens sit between the class token and the patches)."""
    pytest.importorskip("torch")
    import predict_mindspore
    from tests import checkpoint_layouts
    meta = str(tmp_path / "dinov3_vits16_pretrain.pth")
    checkpoint_layouts.meta_dinov3(meta, "dinov3_vits16")
    data = make_dataset(tmp_path / "data")
    argv = small_argv(data, str(tmp_path / "out"), epochs=1, extra=["--model", "Dinov3", "--model_arch",
                                                                     "dinov3_vits16", "--finetune", meta])
    assert main_finetune_mindspore.run(argv) == 0
    best = str(tmp_path / "out" / "t" / "checkpoint-best.ckpt")
    assert read_checkpoint(best).meta["model"] == "dinov3_vits16"
    maps = tmp_path / "maps"
    assert predict_mindspore.run(["--resume", best, "--data_path", os.path.join(data, "test"), "--output_dir",
                                  str(tmp_path / "pred"), "--heatmaps", str(maps)]) == 0
    assert len(os.listdir(maps)) == 9
    rows = open(tmp_path / "pred" / "predictions.csv").read().splitlines()
    assert len(rows) == 10


def test_dinov3_rotary_coordinates_are_rescaled_in_training_only():
    """Meta's DINOv3 rescales RoPE coordinates by a random factor in [1/2, 2] in training (per block)."""
    import mindspore as ms

    import models_vit_mindspore
    ms.set_context(mode=ms.PYNATIVE_MODE)
    model = models_vit_mindspore.create_model("dinov3_vits16", img_size=32, num_classes=3, depth=2)
    for blk in model.blocks:  # LayerScale at 1 (not 1e-5) so attention, where RoPE acts, shows in the features
        blk.ls1.gamma.set_data(ms.Tensor(np.ones(384, np.float32)))
    images = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    model.set_train(False)
    np.testing.assert_array_equal(model(images).asnumpy(), model(images).asnumpy())
    column = 384 // 6 // 4 - 1  # the longest period: an angle small enough for arcsin
    sin_eval = model.rope_embed()[0].asnumpy()[0, column]
    model.set_train(True)
    scales = []
    for _ in range(20):
        scales.append(np.arcsin(model.rope_embed()[0].asnumpy()[0, column]) / np.arcsin(sin_eval))
    assert 0.5 - 1e-4 <= min(scales) < max(scales) <= 2.0 + 1e-4
    first, second = model.forward_features(images).asnumpy(), model.forward_features(images).asnumpy()
    assert np.abs(first - second).max() > 1e-3


def _one_line_error(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


def test_cut_or_incomplete_checkpoints_are_refused_by_every_reader(tmp_path, capsys):
    """--resume, --eval and --finetune refuse a .ckpt cut short (kill during a save, interrupted copy) and a
    training checkpoint without the optimizer state the run needs, in one line, before anything is overwritten."""
    from util_mindspore.ckpt_format import save_arrays_ckpt
    data = make_dataset(tmp_path / "data")
    out = str(tmp_path / "out")
    assert main_finetune_mindspore.run(small_argv(data, out, epochs=1)) == 0
    last = os.path.join(out, "t", "checkpoint-last.ckpt")
    before = open(last, "rb").read()
    cut = str(tmp_path / "cut.ckpt")
    with open(cut, "wb") as fh:
        fh.write(before[:len(before) // 3])
    capsys.readouterr()
    for extra in (["--resume", cut], ["--finetune", cut]):
        assert main_finetune_mindspore.run(small_argv(data, out, epochs=2, extra=extra)) == 1
        assert f"{cut}: incomplete checkpoint: no end marker" in _one_line_error(capsys)
    assert main_finetune_mindspore.run(["--eval", "--resume", cut, "--model", "vit_tiny_patch16", "--data_path", data,
                                        "--nb_classes", "3", "--input_size", "32", "--output_dir", out,
                                        "--task", "t"]) == 1
    assert "no end marker" in _one_line_error(capsys)

    checkpoint = read_checkpoint(last)
    partial_state = {k: v for k, v in list(checkpoint.state.items())[::2]}
    weights_and_half = str(tmp_path / "half_state.ckpt")
    save_arrays_ckpt({**checkpoint.weights, **partial_state}, weights_and_half,
                     append_dict={"epoch": 0, "best_score": 0.5, "meta": json.dumps(checkpoint.meta)})
    assert main_finetune_mindspore.run(small_argv(data, out, epochs=2, extra=["--resume", weights_and_half])) == 1
    message = _one_line_error(capsys)
    assert "cannot continue this run: the checkpoint lacks" in message and "--finetune" in message
    assert open(last, "rb").read() == before  # nothing overwritten


def test_a_failed_run_leaves_no_empty_task_folder(tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "out"
    assert main_finetune_mindspore.run(small_argv(data, str(out), extra=["--nb_classes", "4"])) == 1
    assert not (out / "t").exists()


def test_names_that_are_not_utf8_train_and_are_written_escaped_and_stale_temporaries_go(tmp_path):
    """Linux names are bytes: a class folder and image names that are not UTF-8 train like any other, and the
    CSVs and pictures show their undecodable bytes as backslash escapes (README)."""
    data = make_dataset(tmp_path / "data")
    root = os.fsencode(data)
    for split in (b"train", b"val", b"test"):
        os.rename(os.path.join(root, split, b"c"), os.path.join(root, split, b"cl\xe9"))  # latin-1, not UTF-8
        os.rename(os.path.join(root, split, b"a", b"0.png"), os.path.join(root, split, b"a", b"\xff\xfe.png"))
    out = tmp_path / "out"
    (out / "t").mkdir(parents=True)  # and temporary files a crashed run left: the next run removes them
    for name in ("checkpoint-last.partial.ckpt", "metrics_val.csv.4242.partial", "log.txt.4242.partial"):
        (out / "t" / name).write_bytes(b"torn")
    assert main_finetune_mindspore.run(small_argv(data, str(out), epochs=1)) == 0
    assert not [f for f in os.listdir(out / "t") if "partial" in f]
    for mode in ("val", "test"):
        text = open(out / "t" / f"predictions_{mode}.csv", encoding="utf-8").read()
        assert "\\xff\\xfe.png" in text and "prob_cl\\xe9" in text
    assert (out / "t" / "confusion_matrix_test.jpg").stat().st_size > 0
    assert read_checkpoint(str(out / "t" / "checkpoint-best.ckpt")).class_names == ["a", "b", "cl\\xe9"]
