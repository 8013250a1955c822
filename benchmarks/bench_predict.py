"""Prediction on a folder of fundus-sized JPEGs: predict_mindspore.py's code path with each of its runtimes
(MindSpore, onnxruntime, OpenVINO float32 and bfloat16) against upstream's model in torch with upstream's
evaluation pipeline (torchvision ImageFolder + its eval transform + DataLoader), alternately.

    python benchmarks/bench_predict.py                          # RETFound_mae (ViT-L) 224, 64 images, 2 rounds
    python benchmarks/bench_predict.py --model vit_tiny_patch16 --images 32 --rounds 1 --runtimes torch,mindspore

All read the same files with the same preprocessing (shorter side to 256, bicubic, centre 224 crop, ImageNet
normalisation) with 2 decoding workers and batch 16, and predict class probabilities. onnxruntime and OpenVINO run
the files export_mindspore.py writes (exported once, before the rounds, as predict's cache does once per model);
OpenVINO bfloat16 also runs its first batch in float32 to report how far it moved the results, as predict does.
Reported: images per second after the first batch (which holds MindSpore's graph compilation), the whole loop's
time, and peak RSS. A second table runs the tiny model over 200 and 2,000 small images: predict's peak RSS must not
grow with the count.
"""
import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from run import machine  # noqa: E402

NUM_CLASSES = 5
# row: (predict's --runtime, the exported file it reads or None for the checkpoint, --precision)
RUNTIMES = {"mindspore": ("mindspore", None, "float32"), "onnxruntime": ("onnxruntime", "onnx", "float32"),
            "openvino float32": ("openvino", "xml", "float32"), "openvino bfloat16": ("openvino", "xml", "bfloat16")}


def make_images(folder, count, size, seed=0):
    """Fundus-like JPEGs: a bright disc with noise on black, `size` wide, 4:3."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size, size * 3 // 4
    yy, xx = np.mgrid[0:h, 0:w]
    disc = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) < (0.45 * h) ** 2
    for i in range(count):
        pixels = (rng.random((h, w, 3)) * 40 + np.array([150, 70, 30])) * disc[..., None]
        Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
    return folder


def make_checkpoint(path, model_name, input_size):
    import mindspore as ms

    from util_mindspore.checkpoints.train_checkpoint import save_checkpoint
    from util_mindspore.models.factory import create_model
    ms.set_context(mode=ms.GRAPH_MODE)
    model = create_model(model_name, img_size=input_size, num_classes=NUM_CLASSES)
    args = argparse.Namespace(model=model_name, input_size=input_size, global_pool=True, nb_classes=NUM_CLASSES)
    save_checkpoint(path, model, None, 0, 0.0, [f"grade_{i}" for i in range(NUM_CLASSES)], args)


def export_files(checkpoint, folder):
    """The checkpoint as ONNX and OpenVINO IR, through export_mindspore.py (verified as a user's export is)."""
    subprocess.run([sys.executable, os.path.join(ROOT, "export_mindspore.py"), "--resume", checkpoint, "--format",
                    "onnx,openvino", "--output_dir", folder, "--name", "model"], check=True)


def run_predict(args):
    """predict_mindspore.py as a user runs it, with the row's runtime: its summary's speed line is the steady rate
    (after the first batch, which holds compilation); its peak RSS is the child's own (wait4)."""
    kind, exported, precision = RUNTIMES[args.runtime]
    resume = os.path.splitext(args.checkpoint)[0] + f".{exported}" if exported else args.checkpoint
    command = [sys.executable, os.path.join(ROOT, "predict_mindspore.py"), "--resume", resume, "--data_path",
               args.data, "--output_dir", args.out, "--batch_size", str(args.batch_size), "--num_workers",
               str(args.workers), "--runtime", kind, "--precision", precision, "--precision_sample",
               str(args.batch_size)] + (["--device", "CPU"] if kind == "mindspore" else [])
    done = subprocess.run(command, capture_output=True, text=True)
    out, err = done.stdout, done.stderr
    if done.returncode:
        raise SystemExit(err.strip().splitlines()[-1] if err.strip() else f"predict exited {done.returncode}")
    speed = re.search(r"speed: ([\d.nan]+) img/s .*; (\d+) images in ([\d.]+) s", out)
    check = [line for line in out.splitlines() if line.startswith("bfloat16 against float32")]
    return {"images": int(speed.group(2)), "img_per_s": float(speed.group(1)), "loop_s": float(speed.group(3)),
            "precision_check": check[-1] if check else None}


def run_torch(args):
    """Upstream's evaluation pipeline (util/datasets.py build_transform, eval) and model, with softmax."""
    import torch
    from torchvision import datasets, transforms

    from util_mindspore.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_resize_size
    from util_mindspore.reference.torch_models import create_reference
    torch.set_num_threads(os.cpu_count())
    model = create_reference(args.model, img_size=args.input_size, num_classes=NUM_CLASSES).eval()
    transform = transforms.Compose([
        transforms.Resize(eval_resize_size(args.input_size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(args.input_size), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = datasets.ImageFolder(os.path.dirname(args.data), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    first = None
    started = time.perf_counter()
    with torch.no_grad():
        for images, _ in loader:
            torch.softmax(model(images), dim=1).numpy()
            first = first or time.perf_counter()
    return len(dataset), started, first, time.perf_counter()


def child(args):
    """One measurement in a fresh process: torch in this process, predict in its own child (the only child, so
    RUSAGE_CHILDREN's peak is predict's)."""
    if args.runtime != "torch":
        result = run_predict(args)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        check = result.pop("precision_check")
        if check:
            print(check, file=sys.stderr)
        print(json.dumps({"runtime": args.runtime, **result, "peak_rss_mb": round(peak / 1024)}))
        return
    count, started, first, ended = run_torch(args)
    steady = (count - min(count, args.batch_size)) / (ended - first) if ended > first else float("nan")
    print(json.dumps({"runtime": args.runtime, "images": count, "img_per_s": round(steady, 3),
                      "loop_s": round(ended - started, 1),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


def bench(runtime, args, data, checkpoint, out, model=None, input_size=None):
    command = [sys.executable, __file__, "--child", runtime, "--data", data, "--checkpoint", checkpoint, "--out", out,
               "--model", model or args.model, "--input_size", str(input_size or args.input_size),
               "--batch_size", str(args.batch_size), "--workers", str(args.workers)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        return {"runtime": runtime, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    check = [line for line in done.stderr.splitlines() if line.startswith("bfloat16 against float32")]
    return {**result, "precision_check": check[-1]} if check else result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="RETFound_mae")
    parser.add_argument("--input_size", default=224, type=int)
    parser.add_argument("--images", default=64, type=int)
    parser.add_argument("--image_px", default=2000, type=int, help="width of the JPEGs (4:3)")
    parser.add_argument("--batch_size", default=16, type=int)
    parser.add_argument("--workers", default=2, type=int)
    parser.add_argument("--rounds", default=2, type=int)
    parser.add_argument("--runtimes", default=",".join(["torch", *RUNTIMES]),
                        help="comma-separated rows: torch, " + ", ".join(RUNTIMES))
    parser.add_argument("--child", default=None, choices=["torch", *RUNTIMES], help=argparse.SUPPRESS)
    parser.add_argument("--runtime", default=None, help=argparse.SUPPRESS)
    for hidden in ("--data", "--checkpoint", "--out"):
        parser.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.runtime = args.child
        child(args)
        return
    work = tempfile.mkdtemp(prefix="retfound_bench_predict_")
    data = make_images(os.path.join(work, "photos", "all"), args.images, args.image_px)
    checkpoint = os.path.join(work, "model.ckpt")
    subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = [{ROOT!r}, {HERE!r}]; import bench_predict; "
                    f"bench_predict.make_checkpoint({checkpoint!r}, {args.model!r}, {args.input_size})"], check=True)
    rows = args.runtimes.split(",")
    if any(RUNTIMES.get(row, (None, None))[1] for row in rows):
        export_files(checkpoint, work)
    results = {}
    for _ in range(args.rounds):
        for runtime in rows:
            out = bench(runtime, args, data, checkpoint, os.path.join(work, "out"))
            results.setdefault(runtime, []).append(out)
            print(json.dumps(out), file=sys.stderr, flush=True)
    # memory against the number of images: the tiny model over few and many small images
    tiny = os.path.join(work, "tiny.ckpt")
    subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = [{ROOT!r}, {HERE!r}]; import bench_predict; "
                    f"bench_predict.make_checkpoint({tiny!r}, 'vit_tiny_patch16', 64)"], check=True)
    memory = {}
    for count in (200, 2000):
        small = make_images(os.path.join(work, f"small{count}", "all"), count, 96, seed=count)
        memory[count] = bench("mindspore", args, small, tiny, os.path.join(work, f"out{count}"),
                              model="vit_tiny_patch16", input_size=64)
        print(json.dumps(memory[count]), file=sys.stderr, flush=True)
    print(f"Machine: {machine()}\n")
    print(f"{args.model} at {args.input_size} px, float32, {args.images} JPEGs of {args.image_px} px, batch "
          f"{args.batch_size}, {args.workers} decoding workers, {args.rounds} rounds\n")
    print("| runtime | img/s after the first batch | speed vs PyTorch | loop time | peak RSS | RSS vs PyTorch |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for runtime in rows:
        runs = [r for r in results[runtime] if "error" not in r]
        if not runs:
            print(f"| {runtime} | failed: {results[runtime][-1]['error']} | | | | |")
            continue
        medians[runtime] = {k: statistics.median(r[k] for r in runs) for k in ("img_per_s", "loop_s", "peak_rss_mb")}
        m, t = medians[runtime], medians.get("torch")
        versus = (f"{m['img_per_s'] / t['img_per_s']:.2f}x", f"{m['peak_rss_mb'] / t['peak_rss_mb']:.2f}x") \
            if t else ("", "")
        print(f"| {runtime} | {m['img_per_s']:.3f} | {versus[0]} | {m['loop_s']:.0f} s | "
              f"{m['peak_rss_mb'] / 1024:.1f} GB | {versus[1]} |")
    for runtime in rows:
        checks = [r["precision_check"] for r in results[runtime] if "precision_check" in r]
        if checks:
            print(f"\n{runtime}: {checks[-1]}")
    print()
    print("| images (tiny model, 96 px JPEGs) | predict peak RSS |")
    print("|---|---|")
    for count, r in memory.items():
        print(f"| {count} | {r.get('peak_rss_mb', r.get('error'))} MB |")


if __name__ == "__main__":
    main()
