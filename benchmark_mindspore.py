"""Benchmark models x datasets x seeds with one shared set of flags, as the RETFound paper reports results: each
metric's mean over seeds, its standard deviation and 95% confidence interval (Student's t).

    python benchmark_mindspore.py --models RETFound_mae=RETFound_mae_meh,RETFound_dinov2=RETFound_dinov2_meh \\
        --datasets ./APTOS2019,./IDRiD --seeds 0,1,2,3,4 --output_dir benchmark_out -- \\
        --input_size 224 --batch_size 16 --epochs 50 --adaptation finetune

Each run is main_finetune_mindspore.py in a process of its own (or under msrun with --nproc N), writing its usual
folder <output_dir>/<model>-<dataset>-seed<k>/. A finished run is skipped when the command is given again, and an
interrupted one continues from its checkpoint-last.ckpt, so a crash costs at most an epoch. The tables:
<output_dir>/results.csv and results.md (one row per model, dataset and metric), runs.csv (every run).
A model is NAME, NAME=WEIGHTS (--finetune), or Dinov2:dinov2_vitb14 / Dinov3:dinov3_vitl16[=WEIGHTS].
"""
if __name__ == "__main__":  # first: Ctrl-C / SIGTERM stop between runs (util_mindspore/cli/startup.py)
    from util_mindspore.cli import startup as _startup

    _startup.prepare_process(signals=True)

import argparse
import csv
import dataclasses
import json
import os
import socket
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from util_mindspore.cli.options import new_parser
from util_mindspore.cli.startup import exit_code
from util_mindspore.errors import ArgumentError
from util_mindspore.evaluation.metrics import METRIC_COLUMNS
from util_mindspore.files.atomic import atomic_write
from util_mindspore.process import interrupts

ROOT = os.path.dirname(os.path.abspath(__file__))
TRAIN_SCRIPT = os.path.join(ROOT, "main_finetune_mindspore.py")
DONE = "benchmark_run.json"  # written into a run's folder when it finished: the run is then skipped
ENTRY_SCRIPT = False


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser(__doc__.split("\n\n")[0], epilog="Flags after -- go to every run of "
                        "main_finetune_mindspore.py unchanged (not --model, --finetune, --data_path, --seed, --task, "
                        "--output_dir: the benchmark sets those).")
    parser.add_argument("--models", required=True,
                        help="comma-separated: NAME, NAME=WEIGHTS, or FAMILY:ARCH[=WEIGHTS] (Dinov2:dinov2_vitb14)")
    parser.add_argument("--datasets", required=True, help="comma-separated dataset folders (train/ val/ test/)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (the paper's five)")
    parser.add_argument("--output_dir", default="./benchmark_out", help="runs' folders and the result tables")
    parser.add_argument("--nproc", default=1, type=int, help="processes per run: >1 runs each under msrun")
    parser.add_argument("--confidence", default=0.95, type=float, help="confidence of the intervals over seeds")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--verbose", action="store_true", help="show MindSpore's own log in the runs")
    return parser


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    label: str  # as the tables name it
    model: str
    arch: Optional[str]
    weights: Optional[str]

    def flags(self) -> List[str]:
        return ["--model", self.model] + (["--model_arch", self.arch] if self.arch else []) + \
            (["--finetune", self.weights] if self.weights else [])


def parse_models(value: str) -> List[ModelSpec]:
    specs = []
    for text in filter(None, (t.strip() for t in value.split(","))):
        name, _, weights = text.partition("=")
        model, _, arch = name.partition(":")
        label = (arch or model) + (f"={os.path.basename(weights)}" if weights else "")
        specs.append(ModelSpec(label.replace("/", "_"), model, arch or None, weights or None))
    if not specs:
        raise ArgumentError("--models: give at least one model")
    return specs


def parse_list(value: str, flag: str, kind: type = str) -> List[Any]:
    try:
        items = [kind(t.strip()) for t in value.split(",") if t.strip()]
    except ValueError:
        raise ArgumentError(f"{flag} {value}: a comma-separated list of {kind.__name__}s") from None
    if not items:
        raise ArgumentError(f"{flag}: give at least one")
    return items


def class_count(dataset: str) -> int:
    train = os.path.join(dataset, "train")
    if not os.path.isdir(train):
        raise ArgumentError(f"--datasets {dataset}: no train/ folder inside")
    return len([d for d in os.scandir(train) if d.is_dir() and not d.name.startswith(".")])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Run:
    model: ModelSpec
    dataset: str
    seed: int
    task: str
    folder: str

    def done(self) -> bool:
        return os.path.isfile(os.path.join(self.folder, DONE))


def plan(args: argparse.Namespace, shared: Sequence[str]) -> List[Run]:
    runs = []
    for dataset in parse_list(args.datasets, "--datasets"):
        name = os.path.basename(os.path.normpath(dataset))
        for spec in parse_models(args.models):
            for seed in parse_list(args.seeds, "--seeds", int):
                task = f"{spec.label}-{name}-seed{seed}"
                runs.append(Run(spec, dataset, seed, task, os.path.join(args.output_dir, task)))
    return runs


def command(args: argparse.Namespace, run: Run, shared: Sequence[str]) -> List[str]:
    """The run's command: main_finetune_mindspore.py with the shared flags, or msrun around it."""
    flags = [*run.model.flags(), "--data_path", run.dataset, "--seed", str(run.seed), "--task", run.task,
             "--output_dir", args.output_dir, *shared]
    if "--nb_classes" not in shared:
        flags += ["--nb_classes", str(class_count(run.dataset))]
    last = os.path.join(run.folder, "checkpoint-last.ckpt")
    if os.path.isfile(last):  # an interrupted run continues where it stopped
        flags += ["--resume", last]
    if args.verbose:
        flags.append("--verbose")
    if args.nproc > 1:
        return ["msrun", f"--worker_num={args.nproc}", f"--local_worker_num={args.nproc}",
                f"--master_port={free_port()}", f"--log_dir={os.path.join(run.folder, 'msrun_log')}", "--join=True",
                TRAIN_SCRIPT, *flags]
    return [sys.executable, TRAIN_SCRIPT, *flags]


def test_metrics(run: Run) -> Dict[str, float]:
    """The run's test metrics (the last row of its metrics_test.csv)."""
    with open(os.path.join(run.folder, "metrics_test.csv"), newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return dict(zip(rows[0], (float(v) for v in rows[-1])))


def summarise(values: Sequence[float], confidence: float) -> Tuple[float, float, float, float]:
    """(mean, standard deviation, CI low, CI high) over seeds: Student's t interval; one seed has no interval."""
    from scipy import stats
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return (np.nan,) * 4
    mean = float(values.mean())
    if len(values) < 2:
        return mean, np.nan, np.nan, np.nan
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * std / np.sqrt(len(values))
    return mean, std, mean - half, mean + half


def write_tables(args: argparse.Namespace, runs: Sequence[Run]) -> int:
    """results.csv, results.md and runs.csv from every finished run."""
    finished = [r for r in runs if r.done()]
    by_cell: Dict[tuple, List[dict]] = {}
    for run in finished:
        by_cell.setdefault((run.model.label, os.path.basename(os.path.normpath(run.dataset))), []).append(
            dict(test_metrics(run), seed=run.seed))
    metrics = [m for m in METRIC_COLUMNS if m != "val_loss"]
    rows = [["model", "dataset", "metric", "seeds", "mean", "std", "ci_low", "ci_high", "confidence", "values"]]
    markdown = [f"Test metrics over seeds: mean ± std [{args.confidence:.0%} CI, Student's t].", "",
                "| model | dataset | seeds | " + " | ".join(metrics) + " |",
                "|" + "---|" * (3 + len(metrics))]
    for (model, dataset), results in sorted(by_cell.items()):
        cells = []
        for metric in metrics:
            values = [r[metric] for r in results]
            mean, std, low, high = summarise(values, args.confidence)
            rows.append([model, dataset, metric, len(values), mean, std, low, high, args.confidence,
                         " ".join(repr(v) for v in values)])
            cells.append(f"{mean:.4f} ± {std:.4f} [{low:.4f}, {high:.4f}]" if np.isfinite(std) else f"{mean:.4f}")
        markdown.append(f"| {model} | {dataset} | {len(results)} | " + " | ".join(cells) + " |")
    os.makedirs(args.output_dir, exist_ok=True)
    with atomic_write(os.path.join(args.output_dir, "results.csv"), newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    with atomic_write(os.path.join(args.output_dir, "results.md"), encoding="utf-8") as fh:
        fh.write("\n".join(markdown) + "\n")
    with atomic_write(os.path.join(args.output_dir, "runs.csv"), newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "dataset", "seed", "status", "folder"] + metrics)
        for run in runs:
            values = test_metrics(run) if run.done() else {}
            writer.writerow([run.model.label, run.dataset, run.seed, "done" if run.done() else "not done",
                             run.folder] + [values.get(m, "") for m in metrics])
    return len(finished)


def main(args: argparse.Namespace, shared: Sequence[str]) -> int:
    if args.nproc < 1 or not 0 < args.confidence < 1:
        raise ArgumentError("--nproc must be at least 1 and --confidence in (0, 1)")
    reserved = [f for f in ("--model", "--model_arch", "--finetune", "--data_path", "--seed", "--task",
                            "--output_dir", "--resume", "--eval") if f in shared]
    if reserved:
        raise ArgumentError(f"after --: {', '.join(reserved)} are set by the benchmark for each run")
    runs = plan(args, shared)
    for i, run in enumerate(runs, 1):
        cmd = command(args, run, shared)
        if run.done():
            print(f"[{i}/{len(runs)}] {run.task}: finished earlier, skipped", flush=True)
            continue
        print(f"[{i}/{len(runs)}] {run.task}: {' '.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        code = subprocess.run(cmd, cwd=ROOT, preexec_fn=interrupts.unblock_signals).returncode
        interrupts.check()
        if code in (130, 143) or code < 0:
            raise interrupts.StopRequested(interrupts.signal.SIGINT if code in (130, -2) else interrupts.signal.SIGTERM)
        if code != 0:
            print(f"[{i}/{len(runs)}] {run.task}: failed (exit {code}); see {run.folder}; going on", flush=True)
            continue
        with atomic_write(os.path.join(run.folder, DONE), encoding="utf-8") as fh:
            json.dump({"command": cmd, "seed": run.seed, "model": dataclasses.asdict(run.model),
                       "dataset": run.dataset}, fh, indent=1)
    finished = write_tables(args, runs)
    print(f"{finished} of {len(runs)} runs finished; tables: {os.path.join(args.output_dir, 'results.md')}, "
          f"results.csv, runs.csv")
    return 0 if finished == len(runs) or args.dry_run else 1


def run(argv: Optional[List[str]] = None) -> int:
    """Entry point: `benchmark_mindspore.py [benchmark flags] -- [main_finetune_mindspore.py flags]`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    shared = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    args = get_args_parser().parse_args(own)
    return exit_code(lambda a: main(a, shared), args, stop_message=lambda signum: (
        f"stopped by {interrupts.signal_name(signum)}: run the same command again to go on (finished runs are "
        "skipped, an interrupted one continues from its checkpoint-last.ckpt)"))


if __name__ == "__main__":
    ENTRY_SCRIPT = True
    sys.exit(run())
