"""Run bench_vit.py for both frameworks alternately (A B A B, fresh processes); print a Markdown table.

    python benchmarks/run.py                      # ViT-L/16 224: train batch 2, inference batch 4, MAE batch 8
    python benchmarks/run.py --rounds 3 --model vit_base_patch16 --work train,infer
    python benchmarks/run.py --work pretrain      # one MAE pre-training step (mae_vit_large_patch16) only

Medians are pooled over rounds. MindSpore's first step includes graph compilation: all rounds share one fresh
compile cache, so round 1 compiles ("cold") and later rounds load the cache ("cached", as a second run of the
same command does). "to first step" is model build + first step.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = {"train": 2, "infer": 4, "pretrain": 8}  # work: batch size


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/meminfo") as fh:
            mem_gb = int(fh.readline().split()[1]) / 2 ** 20
    except OSError:
        mem_gb = float("nan")
    import mindspore
    versions = f"MindSpore {mindspore.__version__}"
    try:
        import torch
        versions += f", torch {torch.__version__}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GiB RAM, Python {platform.python_version()}, {versions}"


def bench(framework, mode, batch, args, compile_cache, extra=()):
    model = getattr(args, "pretrain_model", None) if mode == "pretrain" else args.model
    command = [sys.executable, os.path.join(HERE, "bench_vit.py"), "--framework", framework, "--mode", mode,
               "--batch_size", str(batch), "--model", model, "--input_size", str(args.input_size),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--compile_cache_dir", compile_cache,
               *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="RETFound_mae")
    parser.add_argument("--input_size", default=224, type=int)
    parser.add_argument("--pretrain_model", default="mae_vit_large_patch16", help="the MAE of the pretrain work")
    parser.add_argument("--work", default="train,infer,pretrain", help="comma-separated: train, infer, pretrain")
    parser.add_argument("--rounds", default=2, type=int)
    parser.add_argument("--steps", default=5, type=int)
    parser.add_argument("--warmup", default=10, type=int, help="untimed steps after the first (see bench_vit.py)")
    args = parser.parse_args()
    workloads = [(work, WORKLOADS[work]) for work in args.work.split(",")]
    results = {}
    compile_cache = tempfile.mkdtemp(prefix="retfound_bench_compile_")
    for _ in range(args.rounds):
        for mode, batch in workloads:
            for framework in ("torch", "mindspore"):
                out = bench(framework, mode, batch, args, compile_cache)
                results.setdefault((mode, batch, framework), []).append(out)
                print(json.dumps(out), file=sys.stderr, flush=True)
    print(f"Machine: {machine()}\n")
    print(f"Model: {args.model} (pretrain: {args.pretrain_model}) at {args.input_size} px, float32, {args.rounds} "
          f"rounds of {args.steps} timed steps after {1 + args.warmup} untimed ones\n")
    print("| work | PyTorch img/s | MindSpore img/s | speed ratio | PyTorch peak RSS | MindSpore peak RSS | RSS ratio "
          "| first step torch / ms cold / ms cached | ms to first step cold / cached |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, batch in workloads:
        row = {}
        for framework in ("torch", "mindspore"):
            runs = [r for r in results[(mode, batch, framework)] if "error" not in r]
            if not runs:
                row[framework] = None
                continue
            row[framework] = {k: statistics.median(r[k] for r in runs)
                              for k in ("img_per_s", "peak_rss_mb", "first_step_s")}
            cold, cached = runs[0], runs[1:] or [{"first_step_s": float("nan"), "build_s": float("nan")}]
            row[framework]["cold"] = cold["first_step_s"]
            row[framework]["cached"] = statistics.median(r["first_step_s"] for r in cached)
            row[framework]["to_cold"] = cold["first_step_s"] + cold["build_s"]
            row[framework]["to_cached"] = statistics.median(r["first_step_s"] + r["build_s"] for r in cached)
        t, m = row["torch"], row["mindspore"]
        if t is None or m is None:
            print(f"| {mode} batch {batch} | {t and t['img_per_s']} | {m and m['img_per_s']} | failed | | | | | |")
            continue
        print(f"| {mode} batch {batch} | {t['img_per_s']:.3f} | {m['img_per_s']:.3f} | "
              f"{m['img_per_s'] / t['img_per_s']:.2f}x | {t['peak_rss_mb'] / 1024:.1f} GB | "
              f"{m['peak_rss_mb'] / 1024:.1f} GB | {m['peak_rss_mb'] / t['peak_rss_mb']:.2f}x | "
              f"{t['first_step_s']:.0f} s / {m['cold']:.0f} s / {m['cached']:.0f} s | "
              f"{m['to_cold']:.0f} s / {m['to_cached']:.0f} s |")


if __name__ == "__main__":
    main()
