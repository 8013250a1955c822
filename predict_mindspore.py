"""Run a trained RETFound on new images: predictions, embeddings, patient / eye-level groups.

    python predict_mindspore.py --resume output_dir/IDRiD_ft/checkpoint-best.ckpt --data_path new_photos/
    python predict_mindspore.py --resume checkpoint-best.pth --model RETFound_mae --data_path list.csv
    python predict_mindspore.py --resume RETFound_mae_meh --data_path photos/ --embeddings      # encoder only
    python predict_mindspore.py --resume export/RETFound_mae.onnx --data_path photos/          # onnxruntime

--data_path is a folder (searched recursively, any layout; `<class>/` sub-folders named as the model's classes
add the label and correctness of each image), one image, or a CSV with a `path` column (and optionally `label`).
Writes <output_dir>/predictions.csv (and with --embeddings embeddings.npy and upstream's Feature.csv; with
--group_by predictions_by_group.csv; with --report report.html; with --heatmaps DIR a picture per image), then
prints a summary. Unreadable images are listed, counted and skipped.
"""
import argparse
import collections
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from util_mindspore import device, heatmaps
from util_mindspore.compute_policy import policy_for
from util_mindspore.image_sources import decode, list_images
from util_mindspore.inference_runtimes import MindSporeRuntime, OnnxRuntime
from util_mindspore.logs import setup_logging
from util_mindspore.prediction_outputs import PredictionWriter
from util_mindspore.report import ReportRow, write_report
from util_mindspore.transforms import EvalTransform, NotebookEmbeddingTransform

logger = logging.getLogger("retfound")


def get_args_parser():
    parser = argparse.ArgumentParser("RETFound prediction on new images (MindSpore)")
    parser.add_argument("--resume", required=True,
                        help="our .ckpt, an upstream checkpoint-best.pth, a published name (with --embeddings), or "
                             "an .onnx file from export_mindspore.py")
    parser.add_argument("--data_path", required=True, help="a folder of images, one image, or a .csv with `path`")
    parser.add_argument("--output_dir", default="./predict_output")
    parser.add_argument("--model", default=None, help="registered model (default: the checkpoint's, else RETFound_mae)")
    parser.add_argument("--nb_classes", default=None, type=int, help="default: the checkpoint head's classes")
    parser.add_argument("--input_size", default=None, type=int, help="default: the checkpoint's")
    parser.add_argument("--global_pool", action="store_true", default=None)
    parser.add_argument("--cls_token", action="store_false", dest="global_pool",
                        help="class token instead of global pool (default: what the checkpoint holds)")
    parser.add_argument("--batch_size", default=16, type=int)
    parser.add_argument("--num_workers", default=4, type=int, help="image decoding threads")
    parser.add_argument("--embeddings", action="store_true",
                        help="also write embeddings.npy and Feature.csv (upstream latent_feature.ipynb's vector)")
    parser.add_argument("--embedding_preprocessing", default="eval", choices=["eval", "notebook"],
                        help="eval: the evaluation transform; notebook: latent_feature.ipynb's resize and per-image "
                             "standardisation (a second forward pass when there are also predictions)")
    parser.add_argument("--group_by", default=None,
                        help="regular expression whose first group names an image's patient / eye in its path: "
                             "mean probabilities per group go to predictions_by_group.csv")
    parser.add_argument("--heatmaps", default=None, metavar="DIR",
                        help="write per image its picture with attention rollout and Grad-CAM overlays into DIR")
    parser.add_argument("--target", default=None,
                        help="class (name or index) whose Grad-CAM --heatmaps draws (default: the predicted one)")
    parser.add_argument("--report", action="store_true",
                        help="write <output_dir>/report.html: summary, classes, metrics when labelled, gallery")
    parser.add_argument("--report_max_images", default=500, type=int, help="gallery size (most confident first)")
    parser.add_argument("--device", default=None, help="CPU, GPU (cuda, cuda:N) or Ascend (npu, npu:N)")
    parser.add_argument("--amp_level", default="auto", choices=["O0", "O1", "O2", "O3", "auto"])
    parser.add_argument("--amp_dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--mode", default="graph", choices=["graph", "pynative"])
    parser.add_argument("--jit_level", default=None, choices=["O0", "O1", "O2"])
    parser.add_argument("--weights_cache_dir", default=None, help="cache of converted weights")
    return parser


def check_args(args):
    if args.batch_size < 1 or args.num_workers < 1:
        raise ValueError(f"--batch_size and --num_workers must be at least 1 (got {args.batch_size}, "
                         f"{args.num_workers})")
    if args.group_by:
        import re
        try:
            re.compile(args.group_by)
        except re.error as exc:
            raise ValueError(f"--group_by {args.group_by}: not a regular expression ({exc})") from None


def build_runtime(args):
    if args.resume.lower().endswith(".onnx"):
        return OnnxRuntime(args, args.embeddings)
    device.configure(args)
    return MindSporeRuntime(args, policy_for(args.amp_level, args.amp_dtype, args.device), args.embeddings)


def decoded_batches(items, transforms, batch_size, workers):
    """(items, {transform name: stacked images}, errors) per batch, decoded by threads one batch ahead of the model:
    at most two batches of images are held at a time."""
    def load(item):
        arrays, error = {}, None
        for name, transform in transforms.items():
            arrays[name], error = decode(item, transform)
            if error:
                return None, error
        return arrays, None

    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        for chunk in chunks[:2]:
            pending.append((chunk, [pool.submit(load, item) for item in chunk]))
        next_chunk = 2
        while pending:
            chunk, futures = pending.popleft()
            results = [f.result() for f in futures]
            if next_chunk < len(chunks):
                pending.append((chunks[next_chunk], [pool.submit(load, item) for item in chunks[next_chunk]]))
                next_chunk += 1
            errors = [error for _, error in results]
            stacked = {name: np.stack([arrays[name] for arrays, _ in results if arrays is not None])
                       for name in transforms} if any(e is None for e in errors) else None
            yield chunk, stacked, errors


def heatmap_file(folder, item):
    return os.path.join(folder, os.path.splitext(item.name)[0].replace(os.sep, "__") + ".png")


def draw_heatmaps(args, runtime, transform, good_items, images, probs):
    """Rollout and Grad-CAM for a batch's readable images; returns the PNG written for each."""
    rollout = heatmaps.attention_rollout(runtime.model, images)
    targets = None if args.target_index is None else [args.target_index] * len(images)
    cams, targets = heatmaps.grad_cam(runtime.model, images, targets)
    rollout_maps, cam_maps = heatmaps.to_grid(rollout[:, 0, 1:]), heatmaps.to_grid(cams)
    written = []
    for k, item in enumerate(good_items):
        with Image.open(item.path) as img:
            picture = transform.crop(img)
        predicted = int(np.argmax(probs[k]))
        title = (f"{item.name}: {runtime.class_names[predicted]} {probs[k][predicted]:.3f}; "
                 f"Grad-CAM of {runtime.class_names[int(targets[k])]}")
        path = heatmap_file(args.heatmaps, item)
        heatmaps.save_heatmap_figure(path, picture, rollout_maps[k], cam_maps[k], title)
        written.append(path)
    return written


def predict(args, runtime, items, writer, report_rows):
    transforms = {"eval": EvalTransform(runtime.input_size)}
    if args.embeddings and args.embedding_preprocessing == "notebook":
        transforms["notebook"] = NotebookEmbeddingTransform(runtime.input_size)
    progress = tqdm(total=len(items), desc="Predict", unit="img", file=sys.stdout, disable=None)
    for chunk, stacked, errors in decoded_batches(items, transforms, args.batch_size, args.num_workers):
        probs = embeddings = None
        good = [item for item, error in zip(chunk, errors) if not error]
        heat = [None] * len(good)
        if stacked is not None:
            probs, embeddings = runtime(stacked["eval"])
            if "notebook" in stacked:
                _, embeddings = runtime(stacked["notebook"])
            if args.heatmaps:
                heat = draw_heatmaps(args, runtime, transforms["eval"], good, stacked["eval"], probs)
        k = 0
        for item, error in zip(chunk, errors):
            if error:
                writer.add(item, error=error)
                if report_rows is not None:
                    report_rows.append(ReportRow(item.name, item.path, None, item.label, error, None))
                continue
            writer.add(item, None if probs is None else probs[k], None if embeddings is None else embeddings[k])
            if report_rows is not None:
                report_rows.append(ReportRow(item.name, item.path, probs[k], item.label, None, heat[k]))
            k += 1
        progress.update(len(chunk))
    progress.close()


def print_summary(args, runtime, writer):
    s = writer.summary
    readable = s["images"] - len(s["unreadable"])
    print(f"{s['images']} images: {readable} processed by {runtime.description}, {len(s['unreadable'])} unreadable "
          "(skipped)")
    if s["unreadable"]:
        shown = s["unreadable"][:5]
        more = f" (+{len(s['unreadable']) - 5} more, see predictions.csv)" if len(s["unreadable"]) > 5 else ""
        print(f"unreadable: {'; '.join(shown)}{more}")
    if runtime.class_names:
        counts = ", ".join(f"{c}: {s['per_class'].get(c, 0)}" for c in runtime.class_names)
        print(f"predicted classes: {counts}")
    if s["labelled"]:
        print(f"accuracy on {s['labelled']} labelled images: {s['correct'] / s['labelled']:.4f}")
    written = [f for f, on in (("predictions.csv", runtime.class_names), ("embeddings.npy", args.embeddings),
                               ("Feature.csv", args.embeddings),
                               ("predictions_by_group.csv", args.group_by), ("report.html", args.report)) if on]
    if args.heatmaps:
        written.append(f"heat maps in {args.heatmaps}")
    print(f"wrote {', '.join(f if f.startswith('heat') else os.path.join(args.output_dir, f) for f in written)}")


def check_runtime(args, runtime):
    """What the chosen model can do against what was asked; resolves --target to a class index."""
    needs_head = [flag for flag, on in (("--heatmaps", args.heatmaps), ("--report", args.report),
                                        ("--group_by", args.group_by), ("--target", args.target)) if on]
    if not runtime.class_names:
        if not args.embeddings or needs_head:
            wanted = ", ".join(needs_head) or "predictions"
            raise ValueError(f"{args.resume} has no classifier head: {wanted} need one (embeddings alone: "
                             "--embeddings)")
    if args.heatmaps and not isinstance(runtime, MindSporeRuntime):
        raise ValueError("--heatmaps needs the model in MindSpore: --resume a checkpoint, not an .onnx file")
    args.target_index = None
    if args.target is not None:
        names = runtime.class_names
        if args.target in names:
            args.target_index = names.index(args.target)
        elif args.target.isdigit() and int(args.target) < len(names):
            args.target_index = int(args.target)
        else:
            raise ValueError(f"--target {args.target}: not a class of this model ({', '.join(names)})")


def main(args):
    check_args(args)
    runtime = build_runtime(args)
    check_runtime(args, runtime)
    items = list_images(args.data_path, runtime.class_names)
    os.makedirs(args.output_dir, exist_ok=True)
    if args.heatmaps:
        os.makedirs(args.heatmaps, exist_ok=True)
    labelled = any(item.label is not None for item in items)
    writer = PredictionWriter(args.output_dir, len(items), runtime.class_names, labelled,
                              runtime.embedding_dim, args.group_by)
    report_rows = [] if args.report else None
    try:
        predict(args, runtime, items, writer, report_rows)
    except BaseException:
        writer.close(keep=False)
        raise
    writer.close(keep=True)
    if args.report:
        write_report(os.path.join(args.output_dir, "report.html"), report_rows, runtime.class_names,
                     runtime.description, args.report_max_images)
    print_summary(args, runtime, writer)
    return 0


def run(argv: Optional[List[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    try:
        return main(args)
    except (ValueError, KeyError) as exc:  # DataError, WeightError, DeviceError are ValueErrors
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.filename or args.output_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run())
