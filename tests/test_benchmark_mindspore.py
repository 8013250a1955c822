"""The benchmark command: the runs it plans, what it skips or resumes, and the result tables with each metric's
mean, standard deviation and Student's t interval over seeds."""
import csv
import json
import os

import numpy as np
import pytest

import benchmark_mindspore as B
from tests.helpers import TINY, one_line_error
from util_mindspore.evaluation.metrics import METRIC_COLUMNS


def fake_finished_run(folder, values):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics_test.csv"), "w", newline="") as fh:
        csv.writer(fh).writerows([METRIC_COLUMNS, [values.get(m, 0.5) for m in METRIC_COLUMNS]])
    open(os.path.join(folder, B.DONE), "w").write("{}")


def test_the_plan_skips_finished_runs_resumes_interrupted_ones_and_sets_each_runs_flags(dataset, tmp_path, capsys):
    out = str(tmp_path / "bench")
    fake_finished_run(os.path.join(out, f"{TINY}-data0-seed0"), {"accuracy": 0.8})
    interrupted = os.path.join(out, f"{TINY}-data0-seed1")
    os.makedirs(interrupted)
    open(os.path.join(interrupted, "checkpoint-last.ckpt"), "wb").close()
    argv = ["--models", f"{TINY},Dinov2:dinov2_vits14=weights.pth", "--datasets", dataset, "--seeds", "0,1",
            "--output_dir", out, "--dry_run", "--", "--epochs", "2", "--input_size", "32"]
    assert B.run(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"[1/4] {TINY}-data0-seed0: finished earlier, skipped"
    assert f"--resume {interrupted}/checkpoint-last.ckpt" in printed[1] and "--seed 1" in printed[1]
    assert "--nb_classes 3" in printed[1] and "--epochs 2 --input_size 32" in printed[1]
    assert "--model Dinov2 --model_arch dinov2_vits14 --finetune weights.pth" in printed[2]
    assert "--task dinov2_vits14=weights.pth-data0-seed0" in printed[2]


def test_flags_the_benchmark_sets_are_refused_after_the_separator(dataset, tmp_path, capsys):
    assert B.run(["--models", TINY, "--datasets", dataset, "--", "--seed", "3"]) == 1
    assert "after --: --seed are set by the benchmark for each run" in one_line_error(capsys)


def test_the_tables_give_mean_std_and_students_t_interval_over_seeds(dataset, tmp_path):
    from scipy import stats
    out = str(tmp_path / "bench")
    accuracies = [0.70, 0.74, 0.78, 0.72, 0.76]
    for seed, accuracy in enumerate(accuracies):
        fake_finished_run(os.path.join(out, f"{TINY}-data0-seed{seed}"), {"accuracy": accuracy})
    args = B.get_args_parser().parse_args(["--models", TINY, "--datasets", dataset, "--seeds", "0,1,2,3,4",
                                           "--output_dir", out])
    assert B.write_tables(args, B.plan(args, [])) == 5
    rows = {r["metric"]: r for r in csv.DictReader(open(os.path.join(out, "results.csv")))}
    mean, std = np.mean(accuracies), np.std(accuracies, ddof=1)
    half = stats.t.ppf(0.975, 4) * std / np.sqrt(5)
    row = rows["accuracy"]
    assert float(row["mean"]) == pytest.approx(mean) and float(row["std"]) == pytest.approx(std)
    assert (float(row["ci_low"]), float(row["ci_high"])) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert row["seeds"] == "5" and row["values"] == "0.7 0.74 0.78 0.72 0.76"
    table = open(os.path.join(out, "results.md")).read()
    assert f"| {TINY} | data0 | 5 | {mean:.4f} ± {std:.4f} [{mean - half:.4f}, {mean + half:.4f}]" in table
    runs = list(csv.DictReader(open(os.path.join(out, "runs.csv"))))
    assert len(runs) == 5 and {r["status"] for r in runs} == {"done"}


@pytest.mark.slow
def test_a_small_benchmark_runs_each_seed_in_its_own_process_and_a_second_call_skips_them(dataset, tmp_path):
    from tests.helpers import script
    out = str(tmp_path / "bench")
    argv = ["--models", TINY, "--datasets", dataset, "--seeds", "0,1", "--output_dir", out, "--",
            "--input_size", "32", "--batch_size", "4", "--epochs", "1", "--warmup_epochs", "1", "--log_dir", "",
            "--bootstrap", "50"]
    done = script("benchmark_mindspore.py", *argv)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 of 2 runs finished" in done.stdout
    for seed in (0, 1):
        folder = os.path.join(out, f"{TINY}-data0-seed{seed}")
        assert json.load(open(os.path.join(folder, "args.json")))["seed"] == seed
        assert os.path.exists(os.path.join(folder, B.DONE))
    again = script("benchmark_mindspore.py", *argv)
    assert again.returncode == 0 and again.stdout.count("finished earlier, skipped") == 2
    assert "| vit_tiny_patch16_depth2 | data0 | 2 |" in open(os.path.join(out, "results.md")).read()
