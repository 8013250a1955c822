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
import itertools
import logging
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

import models_vit_mindspore
from util_mindspore import device, distributed, heatmaps
from util_mindspore.compute_policy import policy_for
from util_mindspore.errors import exit_code
from util_mindspore.image_sources import decode, list_images
from util_mindspore.inference_runtimes import MindSporeRuntime, OnnxRuntime, softmax
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
    parser.add_argument("--model_arch", default=None, help="the size of --model Dinov2 (dinov2_vitb14...)")
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
        try:
            re.compile(args.group_by)
        except re.error as exc:
            raise ValueError(f"--group_by {args.group_by}: not a regular expression ({exc})") from None


def build_runtime(args):
    """Device and (under msrun) the process group first, then the model: MindSpore or onnxruntime."""
    onnx = args.resume.lower().endswith(".onnx")
    if not onnx:
        device.configure(args)
    distributed.init_distributed_mode(args)  # under msrun each rank predicts its share; rank 0 writes
    setup_logging(args.rank)
    if onnx:
        return OnnxRuntime(args, args.embeddings)
    return MindSporeRuntime(args, policy_for(args.amp_level, args.amp_dtype, args.device), args.embeddings)


def decoded_batches(items, transforms, batch_size, workers):
    """(items, {transform name: stacked images}, errors) per batch, decoded by threads one batch ahead of the model:
    at most two batches of images are held at a time."""
    chunks = iter([items[i:i + batch_size] for i in range(0, len(items), batch_size)])
    with ThreadPoolExecutor(workers) as pool:
        def submit(chunk):
            return chunk, [pool.submit(decode, item, transforms) for item in chunk]

        pending = collections.deque(submit(chunk) for chunk in itertools.islice(chunks, 2))
        while pending:
            chunk, futures = pending.popleft()
            results = [f.result() for f in futures]
            pending.extend(submit(following) for following in itertools.islice(chunks, 1))
            errors = [error for _, error in results]
            stacked = {name: np.stack([arrays[name] for arrays, _ in results if arrays is not None])
                       for name in transforms} if any(e is None for e in errors) else None
            yield chunk, stacked, errors


def heatmap_file(folder, item):
    return os.path.join(folder, os.path.splitext(item.name)[0].replace(os.sep, "__") + ".png")


def draw_heatmaps(args, runtime, transform, good_items, images, probs):
    """Rollout and Grad-CAM for a batch's readable images, one PNG each (heatmap_file)."""
    rollout = heatmaps.attention_rollout(runtime.model, images)
    targets = None if args.target_index is None else [args.target_index] * len(images)
    cams, targets = heatmaps.grad_cam(runtime.model, images, targets)
    patches = rollout[:, 0, runtime.model.num_prefix_tokens:]  # the class token's row over the patches
    rollout_maps, cam_maps = heatmaps.to_grid(patches), heatmaps.to_grid(cams)
    for k, item in enumerate(good_items):
        with Image.open(item.path) as img:
            picture = transform.crop(img)
        predicted = int(np.argmax(probs[k]))
        title = (f"{item.name}: {runtime.class_names[predicted]} {probs[k][predicted]:.3f}; "
                 f"Grad-CAM of {runtime.class_names[int(targets[k])]}")
        heatmaps.save_heatmap_figure(heatmap_file(args.heatmaps, item), picture, rollout_maps[k], cam_maps[k], title)


def _shard_rows(args, chunk_index, chunk, logits, embeddings, errors):
    """This rank's rows of one batch as arrays: global image index, readable flag, and the logits and / or
    embeddings the run produces (zeros for an unreadable image)."""
    index = np.array([(chunk_index * args.batch_size + j) * args.world_size + args.rank for j in range(len(chunk))],
                     np.int64)
    ok = np.array([error is None for error in errors], bool)
    rows = {"index": index, "ok": ok.astype(np.int32)}
    for name, values, width in (("logits", logits, args.logits_width),
                                ("embeddings", embeddings, args.embedding_width)):
        if width:
            rows[name] = np.zeros((len(chunk), width), np.float32)
            if values is not None:
                rows[name][ok] = values
    return rows


def predict(args, runtime, items, writer, report_rows):
    """Batches of this rank's images (every world_size-th, from its rank); rank 0 writes every row in input order.

    Under msrun every rank runs the same number of batches (empty ones at the end), so that each batch's rows can
    be gathered: they cover one contiguous run of the input, written as it arrives.
    """
    transforms = {"eval": EvalTransform(runtime.input_size)}
    if args.embeddings and args.embedding_preprocessing == "notebook":
        transforms["notebook"] = NotebookEmbeddingTransform(runtime.input_size)
    args.logits_width, args.embedding_width = len(runtime.class_names or []), runtime.embedding_dim or 0
    mine = items[args.rank::args.world_size]
    rounds = -(-len(items) // (args.batch_size * args.world_size))
    batches = decoded_batches(mine, transforms, args.batch_size, args.num_workers)
    main = distributed.is_main_process(args)
    progress = tqdm(total=len(items), desc="Predict", unit="img", file=sys.stdout, disable=None if main else True)
    for i in range(rounds):
        chunk, stacked, errors = next(batches, ([], None, []))
        logits = embeddings = None
        if stacked is not None:
            logits, embeddings = runtime(stacked["eval"])
            if "notebook" in stacked:
                _, embeddings = runtime(stacked["notebook"])
            if args.heatmaps:  # each rank draws its own images' maps
                good = [item for item, error in zip(chunk, errors) if not error]
                draw_heatmaps(args, runtime, transforms["eval"], good, stacked["eval"], softmax(logits))
        rows = _shard_rows(args, i, chunk, logits, embeddings, errors)
        local_errors = {int(k): e for k, e in zip(rows["index"], errors) if e}
        if args.distributed:
            rows = {name: distributed.all_gather_rows(part, args) for name, part in rows.items()}
        if not main:
            continue
        index, ok = rows["index"], rows["ok"]
        probs = softmax(rows["logits"]) if "logits" in rows else None
        for k in np.argsort(index, kind="stable"):
            item = items[int(index[k])]
            if not ok[k]:
                # another rank's unreadable image: its reason is found again here (a failed open is quick)
                error = local_errors.get(int(index[k])) or decode(item, transforms)[1] or "unreadable"
                writer.add(item, error=error)
                if report_rows is not None:
                    report_rows.append(ReportRow(item.name, item.path, None, item.label, error, None))
                continue
            row_probs = None if probs is None else probs[k]
            writer.add(item, row_probs, rows["embeddings"][k] if "embeddings" in rows else None)
            if report_rows is not None:
                heat = heatmap_file(args.heatmaps, item) if args.heatmaps else None
                report_rows.append(ReportRow(item.name, item.path, row_probs, item.label, None, heat))
        progress.update(len(index))
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
    if args.model:
        args.model = models_vit_mindspore.resolve_model_name(args.model, args.model_arch)
    check_args(args)
    runtime = build_runtime(args)
    check_runtime(args, runtime)
    items = list_images(args.data_path, runtime.class_names)
    os.makedirs(args.output_dir, exist_ok=True)
    if args.heatmaps:
        os.makedirs(args.heatmaps, exist_ok=True)
    labelled = any(item.label is not None for item in items)
    writer = None
    if distributed.is_main_process(args):
        writer = PredictionWriter(args.output_dir, len(items), runtime.class_names, labelled,
                                  runtime.embedding_dim, args.group_by)
    report_rows = [] if args.report else None
    try:
        predict(args, runtime, items, writer, report_rows)
    except BaseException:
        if writer:
            writer.close(keep=False)
        raise
    if writer:
        writer.close(keep=True)
        if args.report:
            write_report(os.path.join(args.output_dir, "report.html"), report_rows, runtime.class_names,
                         runtime.description, args.report_max_images)
        print_summary(args, runtime, writer)
    return 0


def run(argv: Optional[List[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    return exit_code(main, args)

if __name__ == "__main__":
    sys.exit(run())
