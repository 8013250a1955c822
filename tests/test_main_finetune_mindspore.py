"""The fine-tuning command line end to end: outputs, evaluation, resume, the flags upstream has, bad input; most on
the session's one training run (conftest.trained_task), the README's quickstart in the slow set."""
import csv
import hashlib
import json
import os
import re
import shlex
import shutil

import numpy as np
import pytest

import main_finetune_mindspore
import models_vit_mindspore
from tests.helpers import (
    ROOT,
    TINY,
    assert_picture,
    make_dataset,
    one_line_error,
    read_metrics,
    read_tensorboard_scalars,
    script,
    small_argv,
)
from util_mindspore.checkpoints.train_checkpoint import read_checkpoint
from util_mindspore.evaluation import metrics as metrics_lib
from util_mindspore.training import classification as engine_finetune


def digests(folder):
    return {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, name))}


def sklearn_metrics(labels, probs):
    """upstream engine_finetune.evaluate's scikit-learn calls, written out here (not our compute_metrics)."""
    from sklearn import metrics as sk
    c = probs.shape[1]
    preds = probs.argmax(axis=1)
    t, p = np.eye(c)[labels], np.eye(c)[preds]
    return {"accuracy": sk.accuracy_score(labels, preds),
            "f1": sk.f1_score(t, p, zero_division=0, average="macro"),
            "roc_auc": sk.roc_auc_score(t, probs, multi_class="ovr", average="macro"),
            "hamming": sk.hamming_loss(t, p), "jaccard": sk.jaccard_score(t, p, average="macro"),
            "precision": sk.precision_score(t, p, zero_division=0, average="macro"),
            "recall": sk.recall_score(t, p, zero_division=0, average="macro"),
            "average_precision": sk.average_precision_score(t, probs, average="macro"),
            "kappa": sk.cohen_kappa_score(labels, preds)}


def test_a_training_run_writes_upstreams_outputs_and_a_lean_best_checkpoint(trained_task):
    task, argv = trained_task
    for name in ("log.txt", "metrics_val.csv", "metrics_test.csv", "metrics_test_ci.csv", "predictions_val.csv",
                 "predictions_test.csv", "confusion_matrix_test.jpg", "confusion_matrix_test.pdf",
                 "roc_curves_test.png", "roc_curves_test.pdf", "training_curves.png", "training_curves.pdf",
                 "checkpoint-best.ckpt", "checkpoint-last.ckpt", "args.json"):
        assert os.path.getsize(os.path.join(task, name)) > 0, name
        if name.endswith((".jpg", ".png", ".pdf")):
            assert_picture(os.path.join(task, name))
    assert [json.loads(line)["epoch"] for line in open(os.path.join(task, "log.txt"))] == [0, 1]
    assert len(read_metrics(os.path.join(task, "metrics_val.csv"))) == 2
    assert len(read_metrics(os.path.join(task, "metrics_test.csv"))) == 1
    best, last = (read_checkpoint(os.path.join(task, f"checkpoint-{k}.ckpt")) for k in ("best", "last"))
    assert best.meta["kind"] == "best" and best.state == {} and best.class_names == ["a", "b", "c"]
    assert last.meta["kind"] == "last" and {"optimizer.step", "loss_scale.scale"} <= set(last.state)
    weights = sum(a.nbytes for a in last.weights.values())
    # best: the weights (+ its metadata); last: weights, two Adam moments, a step and the loss scaler
    assert abs(os.path.getsize(os.path.join(task, "checkpoint-best.ckpt")) - weights) < 0.01 * weights + 20000
    assert abs(os.path.getsize(os.path.join(task, "checkpoint-last.ckpt")) - 3 * weights) < 0.01 * weights + 40000
    assert json.load(open(os.path.join(task, "args.json")))["model"] == TINY


def test_the_test_metrics_get_95_percent_bootstrap_intervals_of_1000_resamples(trained_task):
    """README: metrics_test_ci.csv beside upstream's metrics_test.csv, each metric's value and its 95% interval over
    1,000 resamples of the test images by default."""
    task, _ = trained_task
    values = dict(zip(metrics_lib.METRIC_COLUMNS, read_metrics(os.path.join(task, "metrics_test.csv"))[0]))
    with open(os.path.join(task, "metrics_test_ci.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["metric"] for r in rows] == metrics_lib.METRIC_COLUMNS[1:] + ["score"]  # + checkpoint-best's score
    for row in rows:
        assert (float(row["confidence"]), int(row["resamples"])) == (0.95, 1000), row
        if row["metric"] in values:
            assert float(row["value"]) == pytest.approx(values[row["metric"]], abs=1e-12, nan_ok=True)
        low, high = float(row["ci_low"]), float(row["ci_high"])
        assert np.isnan(low) or low <= high


def test_readme_disk_figures_for_a_vit_large_task():
    """README: checkpoint-best 1.2 GB and checkpoint-last 3.6 GB for RETFound_mae (the weights once, and thrice)."""
    from mindspore.nn.utils import no_init_parameters
    with no_init_parameters():
        model = models_vit_mindspore.create_model("RETFound_mae", img_size=224, num_classes=5)
    weights = 4 * sum(int(np.prod(p.shape)) for _, p in model.parameters_and_names())
    text = open(os.path.join(ROOT, "README_MindSpore.md"), encoding="utf-8").read()
    assert f"checkpoint-best.ckpt` ({weights / 1e9:.1f} GB" in text
    assert f"checkpoint-last.ckpt` ({3 * weights / 1e9:.1f} GB" in text


def test_metrics_csv_equals_upstreams_sklearn_calls_on_the_predictions(trained_task):
    task, _ = trained_task
    paths, labels, probs, class_names = metrics_lib.read_predictions_csv(os.path.join(task, "predictions_test.csv"))
    assert class_names == ["a", "b", "c"] and len(paths) == len(set(paths)) == 9
    written = dict(zip(metrics_lib.METRIC_COLUMNS, read_metrics(os.path.join(task, "metrics_test.csv"))[0]))
    for name, value in sklearn_metrics(labels, probs).items():
        assert written[name] == pytest.approx(value, abs=1e-12), name
    batches = [labels[i:i + 4] for i in range(0, 9, 4)]  # upstream's val_loss: the mean of per-batch mean losses
    per_batch = [np.mean(-np.log(probs[i:i + 4][np.arange(len(b)), b])) for i, b in zip(range(0, 9, 4), batches)]
    assert written["val_loss"] == pytest.approx(np.mean(per_batch), rel=1e-6)


def test_tensorboard_gets_upstreams_tags_at_upstreams_steps_with_the_evaluations_values(trained_task):
    task, argv = trained_task
    pytest.importorskip("tensorboardX")
    args = main_finetune_mindspore.get_args_parser().parse_args(argv)
    scalars = read_tensorboard_scalars(os.path.join(args.log_dir, args.task))
    assert set(scalars) == {"loss/train", "lr", "loss/val"} | {f"perf/{m}" for m in (
        "accuracy", "f1", "roc_auc", "hamming", "jaccard", "precision", "recall", "average_precision", "kappa",
        "score")}
    steps = 24 // 4  # 24 training images, batch 4
    assert [s for s, _ in scalars["lr"]] == [int((it / steps + epoch) * 1000) for epoch in (0, 1)
                                             for it in range(steps)]
    lr = 0.02 * 4 / 256  # warm-up 1 epoch, then the half-cosine to min_lr over the one remaining epoch
    for (_step, value), it in zip(scalars["lr"], range(12)):
        e = it / steps
        expected = lr * e if e < 1 else 1e-6 + (lr - 1e-6) * 0.5 * (1 + np.cos(np.pi * (e - 1) / 1))
        assert value == pytest.approx(expected, rel=1e-6)
    _, labels, probs, _ = metrics_lib.read_predictions_csv(os.path.join(task, "predictions_val.csv"))  # last epoch
    for name, value in sklearn_metrics(labels, probs).items():
        assert scalars[f"perf/{name}"][-1] == (1, pytest.approx(value, abs=1e-6)), name


def test_an_evaluation_writes_its_own_folder_and_never_changes_what_training_wrote(copy_task, dataset, capsys):
    """--eval --resume into the training's own task: eval_checkpoint-best/ holds the evaluation, naming the
    checkpoint; the training's files are untouched; upstream's .pth spelling of the file is accepted with a note."""
    before = digests(copy_task)
    out, task = os.path.dirname(copy_task), os.path.basename(copy_task)
    argv = small_argv(dataset, out, extra=["--eval", "--resume", os.path.join(copy_task, "checkpoint-best.pth")])
    assert main_finetune_mindspore.run(argv) == 0
    printed = capsys.readouterr().out
    assert "checkpoint-best.pth does not exist: reading" in printed and printed.count("loaded ") == 1
    assert digests(copy_task) == before
    folder = os.path.join(copy_task, "eval_checkpoint-best")
    assert read_metrics(os.path.join(folder, "metrics_test.csv")) == read_metrics(
        os.path.join(copy_task, "metrics_test.csv"))
    evaluation = json.load(open(os.path.join(folder, "evaluation.json")))
    assert evaluation["checkpoint"].endswith("checkpoint-best.pth") and evaluation["checkpoint_epoch"] == 1
    assert {"confusion_matrix_test.jpg", "roc_curves_test.png", "metrics_test_ci.csv", "args.json"} <= set(
        os.listdir(folder)) and task == "t"


def test_resume_continues_a_run_exactly_and_a_best_checkpoint_starts_afresh(dataset, tmp_path, monkeypatch, capsys):
    """A 3-epoch run stopped after epoch 1 and continued with --resume checkpoint-last.ckpt equals the same run
    uninterrupted (every lr, the weights and optimizer state, the log); checkpoint-best (weights only) says so in
    one line and starts at epoch 0."""
    seen = {}
    original = engine_finetune.train_one_epoch

    def recording(train_step, loader, epoch, args, mixup_fn=None, tb_log=None):
        if seen.get("stop_at") == epoch:
            raise KeyboardInterrupt  # in this process no signal handler is set up: it propagates, as a kill would
        stats, lrs = original(train_step, loader, epoch, args, mixup_fn, tb_log)
        seen.setdefault(args.output_dir, {})[epoch] = lrs
        return stats, lrs
    monkeypatch.setattr(engine_finetune, "train_one_epoch", recording)
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    assert main_finetune_mindspore.run(small_argv(dataset, whole, epochs=3)) == 0
    seen["stop_at"] = 2
    with pytest.raises(KeyboardInterrupt):
        main_finetune_mindspore.run(small_argv(dataset, broken, epochs=3))
    seen["stop_at"] = None
    capsys.readouterr()
    last = os.path.join(broken, "t", "checkpoint-last.ckpt")
    assert main_finetune_mindspore.run(small_argv(dataset, broken, epochs=3, extra=["--resume", last])) == 0
    assert "Training epochs 2 to 2 of 3 (resumed from" in capsys.readouterr().out
    assert sorted(seen[broken]) == [0, 1, 2] and seen[broken][2] == seen[whole][2]
    a, b = read_checkpoint(os.path.join(whole, "t", "checkpoint-last.ckpt")), read_checkpoint(last)
    assert a.epoch == b.epoch == 2 and set(a.state) == set(b.state) and set(a.weights) == set(b.weights)
    for name, expected in {**a.weights, **a.state}.items():
        np.testing.assert_array_equal({**b.weights, **b.state}[name], expected, err_msg=name)
    assert [json.loads(line)["epoch"] for line in open(os.path.join(broken, "t", "log.txt"))] == [0, 1, 2]

    fresh = tmp_path / "fresh"
    best = os.path.join(broken, "t", "checkpoint-best.ckpt")
    assert main_finetune_mindspore.run(small_argv(dataset, str(fresh), epochs=1, extra=["--resume", best])) == 0
    warning = [line for line in capsys.readouterr().out.splitlines() if "holds weights only" in line]
    assert len(warning) == 1 and "training starts from its weights at epoch 0 with a fresh optimizer" in warning[0]
    assert sorted(seen[str(fresh)]) == [0]


def test_a_run_continued_without_its_optimizer_state_is_refused(copy_task, dataset, capsys):
    last = read_checkpoint(os.path.join(copy_task, "checkpoint-last.ckpt"))
    half = os.path.join(copy_task, "half.ckpt")
    from util_mindspore.checkpoints.ckpt_format import save_arrays_ckpt
    save_arrays_ckpt({**last.weights, **dict(list(last.state.items())[::2])}, half,
                     append_dict={"epoch": 0, "best_score": 0.5, "meta": json.dumps(last.meta)})
    assert main_finetune_mindspore.run(small_argv(dataset, os.path.dirname(copy_task), extra=["--resume", half])) == 1
    message = one_line_error(capsys)
    assert "cannot continue this run: the checkpoint lacks" in message and "--finetune" in message


def test_damaged_or_cut_checkpoints_are_refused_by_every_reader(copy_task, dataset, tmp_path, capsys):
    last = os.path.join(copy_task, "checkpoint-last.ckpt")
    data = open(last, "rb").read()
    cut = str(tmp_path / "cut.ckpt")
    open(cut, "wb").write(data[:len(data) // 3])
    out = str(tmp_path / "out")
    for extra in (["--resume", cut], ["--finetune", cut], ["--eval", "--resume", cut]):
        assert main_finetune_mindspore.run(small_argv(dataset, out, extra=extra)) == 1
        assert f"{cut}: incomplete or damaged checkpoint" in one_line_error(capsys)
    assert not os.path.exists(out)  # a run that failed on its input leaves no folder


def test_an_upstream_pth_as_resume_trains_from_its_weights(dataset, tmp_path, capsys):
    """--resume with upstream's checkpoint-best.pth during training: its weights, a fresh optimizer, epoch 0."""
    pytest.importorskip("torch")
    from util_mindspore.reference import checkpoint_layouts as layouts
    pth = str(tmp_path / "checkpoint-best.pth")
    layouts.upstream_best(pth, "vit_tiny_patch16", img_size=32, depth=2, model=TINY)
    out = str(tmp_path / "out")
    assert main_finetune_mindspore.run(small_argv(dataset, out, epochs=1, extra=["--resume", pth])) == 0
    printed = capsys.readouterr().out
    assert re.search(r"loaded 3\d tensors from .*checkpoint-best\.pth; missing: none", printed)
    assert "holds weights only (no optimizer state): training starts from its weights at epoch 0" in printed


def test_linear_probe_trains_only_the_head(trained_task, dataset, tmp_path):
    start = os.path.join(trained_task[0], "checkpoint-last.ckpt")
    out = str(tmp_path / "lp")
    assert main_finetune_mindspore.run(small_argv(dataset, out, epochs=1, extra=[
        "--adaptation", "lp", "--finetune", start])) == 0
    before, last = read_checkpoint(start).weights, read_checkpoint(os.path.join(out, "t", "checkpoint-last.ckpt"))
    changed = sorted(k for k in before if not np.array_equal(before[k], last.weights[k]))
    assert changed == ["head.bias", "head.weight"]
    assert sorted(k for k in last.state if k.startswith("optimizer.exp_avg.")) == [
        "optimizer.exp_avg.head.bias", "optimizer.exp_avg.head.weight"]


def test_accumulation_pynative_mode_and_mixup_train_end_to_end(dataset, tmp_path):
    """--accum_iter 2 takes an optimizer step every second batch; --mode pynative and --mixup / --cutmix train."""
    out = str(tmp_path / "accum")
    assert main_finetune_mindspore.run(small_argv(dataset, out, epochs=1, extra=[
        "--accum_iter", "2", "--mode", "pynative", "--mixup", "0.8", "--cutmix", "1.0"])) == 0
    last = read_checkpoint(os.path.join(out, "t", "checkpoint-last.ckpt"))
    assert float(last.state["optimizer.step"].reshape(())) == 24 // 4 // 2
    assert json.load(open(os.path.join(out, "t", "args.json")))["accum_iter"] == 2


@pytest.mark.parametrize("damage,message", [
    (lambda root: shutil.rmtree(os.path.join(root, "val")), "val: split folder not found"),
    (lambda root: [os.remove(os.path.join(root, "train", "b", f))
                   for f in os.listdir(os.path.join(root, "train", "b"))], "class 'b' has no images"),
    (lambda root: os.rename(os.path.join(root, "test", "c"), os.path.join(root, "test", "d")),
     "class folders differ between train"),
    (lambda root: [open(os.path.join(root, "val", "a", "0.png"), "wb").write(b"not a png"),
                   open(os.path.join(root, "test", "b", "2.png"), "wb").write(b"")],
     "2 unreadable image file(s):"),
])
def test_data_errors_are_one_line_before_training(tmp_path, capsys, damage, message):
    data = make_dataset(tmp_path / "data")
    damage(data)
    assert main_finetune_mindspore.run(small_argv(data, str(tmp_path / "out"))) == 1
    assert message in one_line_error(capsys)
    assert not os.path.exists(tmp_path / "out")


def test_an_image_that_cannot_be_decoded_stops_the_run_in_one_line_naming_it(tmp_path, capsys):
    """Start-up reads headers only: a PNG cut after its header is found when it is decoded (or up front with
    --check_images), never trained on with a wrong label."""
    data = make_dataset(tmp_path / "data")
    cut = os.path.join(data, "train", "b", "3.png")
    with open(cut, "r+b") as fh:
        fh.truncate(60)
    assert main_finetune_mindspore.run(small_argv(data, str(tmp_path / "out"), epochs=2)) == 1
    assert one_line_error(capsys).startswith(f"error: {cut}: cannot be decoded")
    assert not os.path.exists(tmp_path / "out" / "t" / "checkpoint-last.ckpt")
    assert main_finetune_mindspore.run(small_argv(data, str(tmp_path / "out2"), extra=["--check_images"])) == 1
    assert one_line_error(capsys) == f"error: 1 unreadable image file(s): {cut}"


@pytest.mark.parametrize("flags,message", [
    (["--nb_classes", "5"], "--nb_classes 5 does not match the 3 class folders"),
    (["--lr", "-1"], "--lr -1.0 is outside [0, inf]"),
    (["--blr", "-0.1", "--min_lr", "-1"], "--blr -0.1 is outside [0, inf]; --min_lr -1.0 is outside [0, inf]"),
    (["--drop_path", "1.5"], "--drop_path 1.5 is outside [0, 1)"),
    (["--smoothing", "5"], "--smoothing 5.0 is outside [0, 1)"),
    (["--reprob", "1.2"], "--reprob 1.2 is outside [0, 1]"),
    (["--mixup_prob", "-0.1"], "--mixup_prob -0.1 is outside [0, 1]"),
    (["--epochs", "0"], "--epochs 0 is outside [1, inf]"),
    (["--batch_size", "0"], "--batch_size 0 is outside [1, inf]"),
    (["--input_size", "40"], "--input_size 40 is not a multiple of vit_tiny_patch16_depth2's patch size 16"),
    (["--dataratio", "0.5,0.25"], "--dataratio '0.5,0.25' must be one number in (0, 1]"),
    (["--eval"], "--eval needs --resume <checkpoint>"),
    (["--model", "Dinov2", "--model_arch", "dinov2_vitx14"], "--model Dinov2 --model_arch dinov2_vitx14: choose"),
])
def test_values_outside_their_meaning_are_refused_before_anything_starts(dataset, tmp_path, capsys, flags,
                                                                         message):
    argv = small_argv(dataset, str(tmp_path / "out"))
    for flag, value in zip(flags[::2], flags[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    if flags == ["--eval"]:
        argv += ["--eval"]
    assert main_finetune_mindspore.run(argv) == 1
    assert message in one_line_error(capsys)
    assert not os.path.exists(tmp_path / "out")


def test_a_folder_a_live_run_holds_is_refused_naming_it_and_a_dead_runs_lock_is_taken_over(dataset, tmp_path,
                                                                                           capsys):
    import socket
    import subprocess
    import sys
    out = tmp_path / "out"
    (out / "t").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from util_mindspore.process import run_lock\n"
        "with run_lock.hold(sys.argv[1], 'training'):\n    print('held', flush=True); time.sleep(600)\n"),
        str(out / "t")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main_finetune_mindspore.run(small_argv(dataset, str(out), epochs=1)) == 1
        message = one_line_error(capsys)
        assert f"is in use by another run (training by PID {holder.pid} on {socket.gethostname()}" in message
    finally:
        holder.kill()
        holder.wait()
    (out / "t" / ".retfound.lock").write_text(json.dumps({"what": "training", "pid": 999999, "host": "gone"}))
    assert main_finetune_mindspore.run(small_argv(dataset, str(out), epochs=1)) == 0
    assert "taking over the lock of a run that ended (training by PID 999999 on gone" in capsys.readouterr().out
    assert not (out / "t" / ".retfound.lock").exists()


def test_the_console_shows_the_settings_that_matter_and_the_arguments_go_to_a_file(trained_task):
    """The session run's summary block is in its log (printed once); no Namespace dump; args.json has them all."""
    task, argv = trained_task
    args = json.load(open(os.path.join(task, "args.json")))
    assert {"model", "blr", "lr", "input_size", "device", "amp_level", "world_size"} <= set(args)
    assert args["device"] == "CPU" and args["amp_level"] == "O0" and args["lr"] == pytest.approx(0.02 * 4 / 256)


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


def test_help_is_grouped_with_defaults_and_lists_the_models(capsys):
    with pytest.raises(SystemExit):
        main_finetune_mindspore.get_args_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for group in ("data:", "model:", "training:", "augmentation:", "outputs:", "device and precision:"):
        assert f"\n{group}\n" in text, group
    assert "(default: 128)" in text and "RETFound_dinov2" in text and "Dinov3 (with --model_arch" in text


def test_warmup_longer_than_the_run_trains_in_warmup(dataset, tmp_path):
    """upstream runs --epochs 2 --warmup_epochs 10: the lr never leaves warm-up."""
    argv = small_argv(dataset, str(tmp_path / "out"), epochs=1)
    argv[argv.index("--warmup_epochs") + 1] = "10"
    assert main_finetune_mindspore.run(argv) == 0
    log = [json.loads(line) for line in open(tmp_path / "out" / "t" / "log.txt")]
    lr, steps = 0.02 * 4 / 256, 24 // 4
    assert log[0]["train_lr"] == pytest.approx(np.mean([lr * (it / steps) / 10 for it in range(steps)]), rel=1e-9)


def test_a_model_with_default_weights_starts_from_them_without_finetune(tmp_path, dataset, hub, capsys):
    """RETFound_dinov2 starts from LVD-142M as upstream's timm.create_model(pretrained=True); here the same path
    through a registered 2-block row whose default weights the loopback hub serves."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from util_mindspore import registry as R
    from util_mindspore.reference.torch_models import create_reference, randomize_
    weights = randomize_(create_reference("vit_tiny_patch16", img_size=48, num_classes=0, depth=2), seed=3)
    path = str(tmp_path / "model.safetensors")
    save_file({k: v.contiguous() for k, v in weights.state_dict().items() if isinstance(v, torch.Tensor)}, path)
    hub.add("timm/tiny_test.lvd", "model.safetensors", path)
    R.register(R.get_config(TINY).replace(name="tiny_with_defaults", default_weights=R.WeightsSource(
        "timm/tiny_test.lvd/model.safetensors", "bicubic_antialias", 0.02)))
    try:
        argv = small_argv(dataset, str(tmp_path / "out"), epochs=1)
        argv[argv.index(TINY)] = "tiny_with_defaults"
        assert main_finetune_mindspore.run(argv) == 0
    finally:
        R.unregister("tiny_with_defaults")
    assert hub.gets() == 1
    output = capsys.readouterr().out
    assert "weights    timm/tiny_test.lvd/model.safetensors (the model's default weights, as upstream)" in output
    assert "interpolated: pos_embed (1, 10, 192)->(1, 5, 192)" in output


def test_upstreams_dinov3_checkpoint_best_evaluates_as_the_model_predict_builds_from_it(tmp_path, dataset):
    """upstream's evaluation command on its own --model Dinov3 output (checkpoint-best.pth: Meta's keys, bias_mask
    buffers, no mask_token, a head): --eval --resume gives, image for image, the probabilities of the model
    load_trained_model builds from the file (which test_trained_model holds to upstream's within 1e-4)."""
    pytest.importorskip("torch")
    import mindspore as ms
    from PIL import Image

    from tests.checkpoints.test_trained_model import reduced, softmax
    from util_mindspore.data.transforms import EvalTransform
    from util_mindspore.reference import checkpoint_layouts
    pth = str(tmp_path / "checkpoint-best.pth")
    with reduced("dinov3_vits16") as small:
        checkpoint_layouts.upstream_best_dinov3(pth, "dinov3_vits16", img_size=32, depth=2)
        out = tmp_path / "out"
        assert main_finetune_mindspore.run(small_argv(dataset, str(out), extra=[
            "--model", small, "--eval", "--resume", pth])) == 0
        trained = models_vit_mindspore.load_trained_model(pth, model_name=small)
    paths, _, probs, _ = metrics_lib.read_predictions_csv(out / "t" / "eval_checkpoint-best" / "predictions_test.csv")
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(EvalTransform(32)(image))
    expected = softmax(trained.model(ms.Tensor(np.stack(images))).asnumpy().astype(np.float64))
    assert len(paths) == 9 and np.abs(probs - expected).max() <= 1e-5


@pytest.mark.slow  # DINOv3 checkpoints load, predict and export in the default run (test_trained_model, test_export)
def test_dinov3_fine_tunes_from_a_meta_checkpoint_as_upstreams_command_line(tmp_path, dataset):
    """--model Dinov3 --model_arch dinov3_vits16 --finetune <Meta .pth> at 2 blocks, then --eval --resume."""
    pytest.importorskip("torch")
    from tests.checkpoints.test_trained_model import reduced
    from util_mindspore.reference import checkpoint_layouts
    meta = str(tmp_path / "dinov3_vits16_pretrain.pth")
    with reduced("dinov3_vits16") as small:
        checkpoint_layouts.meta_dinov3(meta, "dinov3_vits16", depth=2)
        argv = small_argv(dataset, str(tmp_path / "out"), epochs=1, extra=["--model", small, "--finetune", meta])
        assert main_finetune_mindspore.run(argv) == 0
        best = str(tmp_path / "out" / "t" / "checkpoint-best.ckpt")
        assert read_checkpoint(best).meta["model"] == small
        assert main_finetune_mindspore.run(small_argv(dataset, str(tmp_path / "out"), extra=[
            "--model", small, "--eval", "--resume", best])) == 0
    assert read_metrics(tmp_path / "out" / "t" / "eval_checkpoint-best" / "metrics_test.csv") == \
        read_metrics(tmp_path / "out" / "t" / "metrics_test.csv")


def test_o2_trains_evaluates_and_resumes_across_levels(dataset, tmp_path):
    """The GPU / Ascend default, O2, on the CPU: the checkpoint holds float32 weights under PyTorch names and a
    GradScaler scale; --eval at O2 gives the final test metrics again; --resume under O0 continues the run."""
    trained = tmp_path / "trained"
    assert main_finetune_mindspore.run(small_argv(dataset, str(trained), epochs=2, extra=[
        "--amp_level", "O2", "--drop_path", "0.1"])) == 0
    last = read_checkpoint(str(trained / "t" / "checkpoint-last.ckpt"))
    assert all(a.dtype == np.float32 for a in last.weights.values())
    scale = float(last.state["loss_scale.scale"].reshape(()))
    assert scale > 0 and np.log2(scale) == int(np.log2(scale))  # GradScaler's scale: powers of two
    assert main_finetune_mindspore.run(small_argv(dataset, str(trained), extra=[
        "--eval", "--resume", str(trained / "t" / "checkpoint-best.ckpt"), "--amp_level", "O2"])) == 0
    assert read_metrics(trained / "t" / "eval_checkpoint-best" / "metrics_test.csv") == \
        read_metrics(trained / "t" / "metrics_test.csv")
    assert main_finetune_mindspore.run(small_argv(dataset, str(trained), epochs=3, extra=[
        "--resume", str(trained / "t" / "checkpoint-last.ckpt"), "--amp_level", "O0"])) == 0
    assert [json.loads(line)["epoch"] for line in open(trained / "t" / "log.txt")] == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("level", ["O1", "O3"])
def test_other_levels_train_and_evaluate(dataset, tmp_path, level):
    out = tmp_path / "out"
    assert main_finetune_mindspore.run(small_argv(dataset, str(out), epochs=1, extra=["--amp_level", level])) == 0
    assert main_finetune_mindspore.run(small_argv(dataset, str(out), extra=[
        "--eval", "--resume", str(out / "t" / "checkpoint-best.ckpt"), "--amp_level", level])) == 0
    assert read_metrics(out / "t" / "eval_checkpoint-best" / "metrics_test.csv") == \
        read_metrics(out / "t" / "metrics_test.csv")


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
    assert main_finetune_mindspore.run(small_argv(str(data), str(out), epochs=1)) == 0
    assert not [f for f in os.listdir(out / "t") if "partial" in f]
    for mode in ("val", "test"):
        text = open(out / "t" / f"predictions_{mode}.csv", encoding="utf-8").read()
        assert "\\xff\\xfe.png" in text and "prob_cl\\xe9" in text
    assert read_checkpoint(str(out / "t" / "checkpoint-best.ckpt")).class_names == ["a", "b", "cl\\xe9"]


def quickstart_argv():
    """The training command of the README Quickstart's first line, as argv (so the README cannot rot)."""
    text = open(os.path.join(ROOT, "README_MindSpore.md"), encoding="utf-8").read()
    section = text.split("## Quickstart", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S).group(1).strip().splitlines()
    assert len(block) == 2, "the Quickstart block has exactly two lines: run, then test"
    return shlex.split(block[0].split("python main_finetune_mindspore.py", 1)[1])


@pytest.mark.slow
def test_the_readme_quickstart_learns_the_sample_data_as_the_readme_says(tmp_path):
    """README: over 90% test accuracy on the bundled sample data, in a fresh process as a user runs it; the console
    shows the settings block, progress, "new best", and none of MindSpore's own warnings."""
    argv = quickstart_argv() + ["--output_dir", str(tmp_path)]
    done = script("main_finetune_mindspore.py", *argv)
    assert done.returncode == 0, done.stderr[-3000:]
    args = main_finetune_mindspore.get_args_parser().parse_args(argv)
    task = tmp_path / args.task
    accuracy = read_metrics(task / "metrics_test.csv")[0][metrics_lib.METRIC_COLUMNS.index("accuracy")]
    assert accuracy >= 0.90, f"test accuracy {accuracy:.3f}"
    console = done.stdout + done.stderr
    for expected in ("model      vit_tiny_patch16", "data       train", "device     CPU, float32", "new best: epoch",
                     f"outputs    {task}/ (every argument in args.json)", "Epoch: [0] [", "left "):
        assert expected in console, expected
    assert "Namespace(" not in console and "[WARNING]" not in console and "hash file" not in console
    assert len(console.splitlines()) < 40 + 6 * args.epochs


@pytest.mark.slow
def test_a_second_run_reuses_the_compile_cache_and_gives_the_same_results(dataset, tmp_path):
    """Two processes, same command: the second loads the graphs the first compiled (no new cache files, none
    rewritten) and writes the same metrics; other graph-shaping flags get a directory of their own."""
    cache = tmp_path / "compile"

    def train(out, extra=()):
        done = script("main_finetune_mindspore.py", *small_argv(dataset, str(tmp_path / out), epochs=2, extra=[
            "--compile_cache_dir", str(cache), *extra]))
        assert done.returncode == 0, done.stderr[-2000:]
        return re.search(r"compile cache (\S+)", done.stdout).group(1)

    where = train("first")
    files = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert any(str(p).endswith(".mindir") for p in files), f"no compiled graph was cached: {sorted(files)}"
    assert train("second") == where
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == files
    for name in ("metrics_val.csv", "metrics_test.csv", "predictions_test.csv"):
        assert (tmp_path / "second" / "t" / name).read_text() == (tmp_path / "first" / "t" / name).read_text(), name
    assert train("other", extra=["--drop_path", "0.1"]) != where


@pytest.mark.slow
def test_a_run_leaves_the_working_directory_as_it_was(dataset, tmp_path):
    """MindSpore's AMP rewrite wrote rewritten_network/*.py beside every O1 run, and compile errors rank_*/:
    nothing may land in the directory the user runs from."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MS_OM_PATH", "MS_COMPILER_CACHE_PATH")}
    done = script("main_finetune_mindspore.py", *small_argv(dataset, str(tmp_path / "out"), epochs=1, extra=[
        "--amp_level", "O1"]), cwd=str(cwd), env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.listdir(cwd) == []
