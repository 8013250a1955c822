"""Inference of exported files against the frameworks: PyTorch, MindSpore, onnxruntime (ONNX), GraphCell (MindIR),
OpenVINO (IR) in float32 and in bfloat16.

    python benchmarks/bench_export.py                    # ViT-L/16 (RETFound_mae) 224, batch 4, 2 rounds

Exports a random-weight model once with util_mindspore/inference/export.py (dynamic batch, verified as
export_mindspore.py
verifies), then runs bench_vit.py for each runtime in turn (fresh processes, A B C D E F A B C D E F); prints a
Markdown table of median img/s and peak RSS, each against PyTorch's. OpenVINO bfloat16 runs only on CPUs with
bfloat16 arithmetic (elsewhere its row says failed).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from run import bench, machine  # noqa: E402

# (row, bench_vit.py framework, exported format, extra flags)
RUNTIMES = (("torch", "torch", None, ()), ("mindspore", "mindspore", None, ()),
            ("onnxruntime", "onnxruntime", "onnx", ()), ("mindir", "mindir", "mindir", ()),
            ("openvino float32", "openvino", "openvino", ("--precision", "float32")),
            ("openvino bfloat16", "openvino", "openvino", ("--precision", "bfloat16")))


def export_files(args, folder):
    import mindspore as ms

    from util_mindspore.inference import export
    from util_mindspore.models.factory import create_model
    ms.set_context(mode=ms.GRAPH_MODE)
    model = create_model(args.model, img_size=args.input_size, num_classes=5)
    model.set_train(False)
    for fmt in export.FORMATS:
        check = export.export_verified(model, model, fmt, folder, args.model, args.input_size)
        print(f"exported {check.files[0]}: max |diff| {check.max_abs_diff:.2e}", file=sys.stderr, flush=True)
        with open(os.path.join(folder, f"{fmt}.txt"), "w") as fh:
            fh.write(check.files[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="RETFound_mae")
    parser.add_argument("--input_size", default=224, type=int)
    parser.add_argument("--batch_size", default=4, type=int)
    parser.add_argument("--rounds", default=2, type=int)
    parser.add_argument("--steps", default=5, type=int)
    parser.add_argument("--warmup", default=10, type=int, help="untimed steps after the first (see bench_vit.py)")
    parser.add_argument("--export_to", default=None, help=argparse.SUPPRESS)  # the child process that exports
    args = parser.parse_args()
    if args.export_to:
        export_files(args, args.export_to)
        return
    folder = tempfile.mkdtemp(prefix="retfound_bench_export_")
    # in a child process: a benchmark process inherits its parent's peak RSS (ru_maxrss survives fork and exec)
    subprocess.run([sys.executable, __file__, "--model", args.model, "--input_size", str(args.input_size),
                    "--export_to", folder], check=True)
    files = {}
    for fmt in ("mindir", "onnx", "openvino"):
        with open(os.path.join(folder, f"{fmt}.txt")) as fh:
            files[fmt] = os.path.join(folder, fh.read())
    compile_cache = os.path.join(folder, "compile")
    results = {}
    for _ in range(args.rounds):
        for row, framework, fmt, flags in RUNTIMES:
            extra = ["--exported", files[fmt], *flags] if fmt else []
            out = bench(framework, "infer", args.batch_size, args, compile_cache, extra)
            results.setdefault(row, []).append(out)
            print(json.dumps(out), file=sys.stderr, flush=True)
    print(f"Machine: {machine()}\n")
    print(f"Model: {args.model} at {args.input_size} px, float32, inference batch {args.batch_size}, {args.rounds} "
          f"rounds of {args.steps} timed steps after {1 + args.warmup} untimed ones\n")
    print("| runtime | img/s | speed vs PyTorch | peak RSS | RSS vs PyTorch |")
    print("|---|---|---|---|---|")
    medians = {}
    for runtime, *_ in RUNTIMES:
        runs = [r for r in results[runtime] if "error" not in r]
        if runs:
            medians[runtime] = {k: statistics.median(r[k] for r in runs) for k in ("img_per_s", "peak_rss_mb")}
    torch = medians.get("torch")
    for runtime, *_ in RUNTIMES:
        m = medians.get(runtime)
        if m is None or torch is None:
            print(f"| {runtime} | failed: {results[runtime][-1].get('error')} | | | |")
            continue
        print(f"| {runtime} | {m['img_per_s']:.3f} | {m['img_per_s'] / torch['img_per_s']:.2f}x | "
              f"{m['peak_rss_mb'] / 1024:.1f} GB | {m['peak_rss_mb'] / torch['peak_rss_mb']:.2f}x |")


if __name__ == "__main__":
    main()
