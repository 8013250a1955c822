"""Run a trained RETFound on new images: predictions, embeddings, patient / eye-level groups, heat maps, a report.

    python predict_mindspore.py --resume output_dir/IDRiD_ft/checkpoint-best.ckpt --data_path new_photos/
    python predict_mindspore.py --resume checkpoint-best.pth --data_path list.csv          # an upstream checkpoint
    python predict_mindspore.py --resume RETFound_mae_meh --data_path photos/ --embeddings  # a published encoder
    python predict_mindspore.py --resume export/RETFound_mae.onnx --data_path photos/     # onnxruntime

--data_path is a folder (searched recursively, any layout; `<class>/` sub-folders named as the model's classes
add the label and correctness of each image), one image, or a CSV with a `path` column (and optionally `label`).
Writes <output_dir>/predictions.csv (and with --embeddings embeddings.npy, embeddings.json and upstream's
Feature.csv; with --group_by predictions_by_group.csv; with --report report.html; with --heatmaps DIR a picture
per image), then prints a summary. Unreadable images are listed, counted and skipped.
"""
if __name__ == "__main__":  # first, before MindSpore is imported: signals and MindSpore's log (util_mindspore/cli.py)
    from util_mindspore import cli as _cli

    _cli.prepare_process()

import argparse
import collections
import itertools
import logging
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

# MindSpore is imported only where the MindSpore runtime (or an export for OpenVINO) needs it: predicting from an
# exported file runs without it (util_mindspore/inference_runtimes.py)
from util_mindspore import distributed, interrupts, run_lock
from util_mindspore.atomic_files import remove_stale_temporaries
from util_mindspore.cli import run_main
from util_mindspore.errors import ArgumentError
from util_mindspore.file_names import output_path, printable
from util_mindspore.image_sources import ImageItem, decode, list_images
from util_mindspore.inference_runtimes import OnnxRuntime, OpenVinoRuntime, Runtime, softmax
from util_mindspore.logs import setup_logging
from util_mindspore.model_registry import resolve_model_name
from util_mindspore.prediction_outputs import PredictionWriter
from util_mindspore.progress import Progress
from util_mindspore.report import ReportRow, write_report
from util_mindspore.run_options import add_compute_options, check_ranges, model_choices, new_parser
from util_mindspore.transforms import EvalTransform, NotebookEmbeddingTransform, Transform

if TYPE_CHECKING:
    from models_vit_mindspore import TrainedModel
    from util_mindspore.mindspore_runtime import MindSporeRuntime

logger = logging.getLogger("retfound")
ENTRY_SCRIPT = False


def get_args_parser() -> argparse.ArgumentParser:
    """predict_mindspore.py's flags, grouped (data, model, runtime, outputs, device)."""
    parser = new_parser(__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data")
    data.add_argument("--data_path", required=True, help="a folder of images, one image, or a .csv with `path`")
    data.add_argument("--batch_size", default=16, type=int, help="images per forward pass")
    data.add_argument("--num_workers", default=4, type=int, help="image decoding threads")

    model = parser.add_argument_group("model (what the checkpoint does not say)")
    model.add_argument("--resume", required=True,
                       help="our .ckpt, an upstream checkpoint-best.pth (any family), an MAE pre-training checkpoint "
                            "or a published name (with --embeddings), or an .onnx file from export_mindspore.py")
    model.add_argument("--model", default=None, metavar="MODEL",
                       help=f"default: the checkpoint's; {model_choices()}")
    model.add_argument("--model_arch", default=None, help="the size of --model Dinov2 / Dinov3")
    model.add_argument("--nb_classes", default=None, type=int, help="default: the checkpoint head's classes")
    model.add_argument("--input_size", default=None, type=int,
                       help="default: the checkpoint's (a fine-tuned checkpoint refuses another)")
    model.add_argument("--global_pool", action="store_true", default=None,
                       help="pool the mean of the patch tokens (default: what the checkpoint holds; for a published "
                            "MAE encoder latent_feature.ipynb's global pool)")
    model.add_argument("--cls_token", action="store_false", dest="global_pool",
                       help="use the class token instead of the mean of the patch tokens")
    model.add_argument("--weights_cache_dir", default=None,
                       help="cache of converted weights (and of checkpoints exported for --runtime openvino)")

    runtimes = parser.add_argument_group("runtime")
    runtimes.add_argument("--runtime", default="auto", choices=["auto", "mindspore", "onnxruntime", "openvino"],
                          help="auto: onnxruntime for an .onnx file, OpenVINO for an .xml, else MindSpore; openvino "
                               "with a checkpoint exports it once (verified, cached)")
    runtimes.add_argument("--precision", default="float32", choices=["float32", "bfloat16"],
                          help="OpenVINO's inference precision: bfloat16 only when asked, on CPUs that have it (the "
                               "summary says how far it moved the results from float32)")
    runtimes.add_argument("--precision_sample", default=64, type=int,
                          help="with --precision bfloat16: images also run in float32 to measure the difference")

    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--output_dir", default="./predict_output",
                         help="where predictions.csv and the other outputs go")
    outputs.add_argument("--embeddings", action="store_true",
                         help="also write embeddings.npy, embeddings.json and Feature.csv (the vector upstream's "
                              "latent_feature.ipynb extracts; embeddings.json says which)")
    outputs.add_argument("--embedding_preprocessing", default="eval", choices=["eval", "notebook"],
                         help="eval: the evaluation transform; notebook: latent_feature.ipynb's resize and per-image "
                              "standardisation (a second forward pass when there are also predictions)")
    outputs.add_argument("--group_by", default=None,
                         help="regular expression whose first group names an image's patient / eye in its path: mean "
                              "probabilities per group go to predictions_by_group.csv")
    outputs.add_argument("--heatmaps", default=None, metavar="DIR",
                         help="write per image its picture with attention rollout and Grad-CAM into DIR (the "
                              "input's relative path, .png added)")
    outputs.add_argument("--target", default=None,
                         help="class (name or index) whose Grad-CAM --heatmaps draws (default: the predicted one)")
    outputs.add_argument("--report", action="store_true",
                         help="write <output_dir>/report.html: summary, classes, metrics when labelled, gallery")
    outputs.add_argument("--report_max_images", default=500, type=int, help="gallery size (most confident first)")
    add_compute_options(parser)
    return parser


RANGES = [("batch_size", 1, None, True), ("num_workers", 1, None, True), ("nb_classes", 1, None, True),
          ("input_size", 1, None, True), ("report_max_images", 0, None, True), ("precision_sample", 1, None, True)]


def check_args(args: argparse.Namespace) -> None:
    """Flags within their meaning and a --group_by that compiles, or one line naming the flag."""
    check_ranges(args, RANGES)
    if args.group_by:
        try:
            re.compile(args.group_by)
        except re.error as exc:
            raise ArgumentError(f"--group_by {args.group_by}: not a regular expression ({exc})") from None


def runtime_kind(args: argparse.Namespace) -> str:
    """--runtime, with auto chosen by what --resume is."""
    if args.runtime != "auto":
        return args.runtime
    resume = args.resume.lower()
    return "onnxruntime" if resume.endswith(".onnx") else "openvino" if resume.endswith(".xml") else "mindspore"


def build_runtime(args: argparse.Namespace) -> Runtime:
    """Device and (under msrun) the process group first, then the model: MindSpore, onnxruntime or OpenVINO."""
    kind = runtime_kind(args)
    exported = args.resume.lower().endswith((".onnx", ".xml"))
    if args.precision != "float32" and kind != "openvino":
        raise ArgumentError(f"--precision {args.precision} is OpenVINO's (--runtime openvino); MindSpore's reduced "
                            "precision is --amp_level / --amp_dtype")
    if kind == "mindspore" and exported:
        raise ArgumentError(f"--runtime mindspore needs a checkpoint, not the exported {args.resume}")
    if kind == "onnxruntime" and not args.resume.lower().endswith(".onnx"):
        raise ArgumentError(f"--runtime onnxruntime runs an .onnx file (export_mindspore.py --format onnx), not "
                            f"{args.resume}")
    if kind == "mindspore":
        from util_mindspore import device
        device.keep_mindspore_files_in(os.path.join(args.output_dir, "mindspore"))
        args.device, args.amp_level = device.configure(args)
    args.distributed, args.rank, args.world_size = distributed.init_distributed_mode()
    setup_logging(args.rank)

    def load() -> "TrainedModel":
        import models_vit_mindspore
        return models_vit_mindspore.load_trained_model(
            args.resume, args.model, args.nb_classes, args.input_size, args.global_pool,
            with_head=None if args.embeddings and kind == "mindspore" else not args.embeddings,
            cache_dir=args.weights_cache_dir)
    if kind == "onnxruntime":
        return OnnxRuntime(args.resume, args.embeddings, args.input_size, args.batch_size)
    if kind == "openvino":
        path, sidecar = args.resume, None
        if not exported:
            from util_mindspore.export_cache import openvino_export
            settings = {k: getattr(args, k) for k in ("model", "nb_classes", "input_size", "global_pool", "embeddings")}
            path, sidecar = openvino_export(args.resume, settings, load, args.weights_cache_dir)
        return OpenVinoRuntime(path, args.embeddings, args.input_size, args.batch_size, args.precision,
                               args.precision_sample, sidecar)
    from util_mindspore.compute_policy import policy_for
    from util_mindspore.mindspore_runtime import MindSporeRuntime
    return MindSporeRuntime(load(), policy_for(args.amp_level, args.amp_dtype, args.device), args.batch_size,
                            args.embeddings)


Batch = Tuple[List[ImageItem], Optional[Dict[str, np.ndarray]], List[Optional[str]]]  # items, images, errors


def decoded_batches(items: Sequence[ImageItem], transforms: Dict[str, Transform], batch_size: int,
                    workers: int) -> Iterator[Batch]:
    """(items, {transform name: stacked images}, errors) per batch, decoded by threads one batch ahead of the model:
    at most two batches of images are held at a time."""
    chunks = iter([items[i:i + batch_size] for i in range(0, len(items), batch_size)])
    with ThreadPoolExecutor(workers) as pool:
        def submit(chunk: List[ImageItem]) -> Tuple[List[ImageItem], list]:
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


def heatmap_file(folder: str, item: ImageItem) -> str:
    """The heat map of an image: its relative path mirrored under `folder`, `.png` added (file_names.output_path)."""
    return output_path(folder, item.name, ".png")


def draw_heatmaps(args: argparse.Namespace, runtime: "MindSporeRuntime", transform: EvalTransform,
                  good_items: List[ImageItem], images: np.ndarray, probs: np.ndarray,
                  target_index: Optional[int]) -> None:
    """Rollout and Grad-CAM for a batch's readable images, one PNG each (heatmap_file)."""
    from util_mindspore import heatmaps
    rollout = heatmaps.attention_rollout(runtime.model, images)
    targets = None if target_index is None else [target_index] * len(images)
    cams, targets = heatmaps.grad_cam(runtime.model, images, targets)
    patches = rollout[:, 0, runtime.model.num_prefix_tokens:]  # the class token's row over the patches
    rollout_maps, cam_maps = heatmaps.to_grid(patches), heatmaps.to_grid(cams)
    for k, item in enumerate(good_items):
        with Image.open(item.path) as img:
            picture = transform.crop(img)
        predicted = int(np.argmax(probs[k]))
        title = (f"{printable(item.name)}: predicted {printable(runtime.class_names[predicted])} "
                 f"{probs[k][predicted]:.3f}; Grad-CAM of {printable(runtime.class_names[int(targets[k])])}")
        path = heatmap_file(args.heatmaps, item)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        heatmaps.save_heatmap_figure(path, picture, rollout_maps[k], cam_maps[k], title)


def _shard_rows(args: argparse.Namespace, chunk_index: int, chunk: List[ImageItem], logits: Optional[np.ndarray],
                embeddings: Optional[np.ndarray], errors: List[Optional[str]],
                widths: Dict[str, int]) -> Dict[str, np.ndarray]:
    """This rank's rows of one batch as arrays: global image index, readable flag, and the logits and / or
    embeddings the run produces (zeros for an unreadable image)."""
    index = np.array([(chunk_index * args.batch_size + j) * args.world_size + args.rank for j in range(len(chunk))],
                     np.int64)
    ok = np.array([error is None for error in errors], bool)
    rows = {"index": index, "ok": ok.astype(np.int32)}
    for name, values in (("logits", logits), ("embeddings", embeddings)):
        if widths[name]:
            rows[name] = np.zeros((len(chunk), widths[name]), np.float32)
            if values is not None:
                rows[name][ok] = values
    return rows


def predict(args: argparse.Namespace, runtime: Runtime, items: List[ImageItem], writer: Optional[PredictionWriter],
            report_rows: Optional[List[ReportRow]], target_index: Optional[int]) -> None:
    """Batches of this rank's images (every world_size-th, from its rank); rank 0 writes every row in input order.

    Under msrun every rank runs the same number of batches (empty ones at the end), so that each batch's rows can
    be gathered: they cover one contiguous run of the input, written as it arrives. After each batch is a safe
    point for SIGINT / SIGTERM (every rank stops at the same batch).
    """
    transforms = {"eval": EvalTransform(runtime.input_size)}
    if args.embeddings and args.embedding_preprocessing == "notebook":
        transforms["notebook"] = NotebookEmbeddingTransform(runtime.input_size)
    widths = {"logits": len(runtime.class_names or []), "embeddings": runtime.embedding_dim or 0}
    mine = items[args.rank::args.world_size]
    if getattr(runtime, "wants_sample", False):  # OpenVINO bfloat16: its float32 sample first (one model at a time)
        sample = decoded_batches(mine[:args.precision_sample], {"eval": transforms["eval"]}, args.batch_size,
                                 args.num_workers)
        runtime.measure_precision(stacked["eval"] for _, stacked, _ in sample if stacked is not None)
    rounds = -(-len(items) // (args.batch_size * args.world_size))
    batches = decoded_batches(mine, transforms, args.batch_size, args.num_workers)
    main = distributed.is_main_process(args)
    progress = Progress(len(items), "Predict", main, unit="img", print_freq=max(1, len(items) // 10))
    try:
        for i in range(rounds):
            chunk, stacked, errors = next(batches, ([], None, []))
            logits = embeddings = None
            if stacked is not None:
                logits, embeddings = runtime(stacked["eval"])
                if "notebook" in stacked:
                    _, embeddings = runtime(stacked["notebook"])
                if args.heatmaps:  # each rank draws its own images' maps
                    good = [item for item, error in zip(chunk, errors) if not error]
                    draw_heatmaps(args, runtime, transforms["eval"], good, stacked["eval"], softmax(logits),
                                  target_index)
            rows = _shard_rows(args, i, chunk, logits, embeddings, errors, widths)
            local_errors = {int(k): e for k, e in zip(rows["index"], errors) if e}
            if args.distributed:
                rows = {name: distributed.all_gather_rows(part, args) for name, part in rows.items()}
            if main:
                _write_rows(args, items, rows, local_errors, transforms, writer, report_rows)
                progress.update(len(rows["index"]))
            interrupts.check(lambda signum: distributed.all_reduce_max(signum, args))
    finally:
        progress.close()
        batches.close()


def _write_rows(args: argparse.Namespace, items: List[ImageItem], rows: Dict[str, np.ndarray],
                local_errors: Dict[int, str], transforms: Dict[str, Transform], writer: PredictionWriter,
                report_rows: Optional[List[ReportRow]]) -> None:
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


def summary_lines(args: argparse.Namespace, runtime: Runtime, writer: PredictionWriter) -> List[str]:
    """The printed summary: counts, unreadable images, classes, accuracy, bfloat16's effect, groups, files."""
    s = writer.summary
    readable = s["images"] - len(s["unreadable"])
    lines = [f"{s['images']} images: {readable} processed by {runtime.description}, {len(s['unreadable'])} "
             "unreadable (skipped)"]
    if s["unreadable"]:
        more = f" (+{len(s['unreadable']) - 5} more, see predictions.csv)" if len(s["unreadable"]) > 5 else ""
        lines.append(f"unreadable: {'; '.join(s['unreadable'][:5])}{more}")
    if runtime.class_names:
        counts = ", ".join(f"{printable(c)}: {s['per_class'].get(c, 0)}" for c in runtime.class_names)
        lines.append(f"predicted classes: {counts}")
    if s["labelled"]:
        lines.append(f"accuracy on {s['labelled']} labelled images: {s['correct'] / s['labelled']:.4f}")
    check = getattr(runtime, "precision_check", lambda: None)()
    if check:
        lines.append(check)
    if args.group_by:
        ungrouped = s["ungrouped"]
        lines.append(f"--group_by: {len(writer.groups)} groups; {len(ungrouped)} images matched no group"
                     + (f" ({'; '.join(ungrouped[:5])}{' ...' if len(ungrouped) > 5 else ''})" if ungrouped else ""))
    written = [f for f, on in (("predictions.csv", runtime.class_names), ("embeddings.npy", args.embeddings),
                               ("embeddings.json", args.embeddings), ("Feature.csv", args.embeddings),
                               ("predictions_by_group.csv", args.group_by), ("report.html", args.report)) if on]
    where = [os.path.join(args.output_dir, f) for f in written] + ([f"heat maps in {args.heatmaps}"]
                                                                    if args.heatmaps else [])
    lines.append(f"wrote {', '.join(where)}")
    return lines


def check_runtime(args: argparse.Namespace, runtime: Runtime) -> Optional[int]:
    """What the chosen model can do against what was asked; returns --target as a class index (or None)."""
    needs_head = [flag for flag, on in (("--heatmaps", args.heatmaps), ("--report", args.report),
                                        ("--group_by", args.group_by), ("--target", args.target)) if on]
    if not runtime.class_names and (not args.embeddings or needs_head):
        wanted = ", ".join(needs_head) or "predictions"
        raise ArgumentError(f"{args.resume} has no classifier head: {wanted} need one (embeddings alone: "
                            "--embeddings)")
    if args.heatmaps and runtime.engine != "MindSpore":
        raise ArgumentError("--heatmaps needs the model in MindSpore: --resume a checkpoint, not an exported file")
    if args.target is None:
        return None
    names = runtime.class_names
    if args.target in names:
        return names.index(args.target)
    if args.target.isdigit() and int(args.target) < len(names):
        return int(args.target)
    raise ArgumentError(f"--target {args.target}: not a class of this model ({', '.join(names)})")


def embedding_metadata(args: argparse.Namespace, runtime: Runtime) -> Dict[str, object]:
    """embeddings.json: which vector the rows are, from which checkpoint, pooling, size and preprocessing."""
    spec = getattr(runtime, "trained", None)
    return {"model": getattr(spec, "name", None), "source": args.resume,
            "vector": getattr(spec, "embedding", None) or runtime.embedding_description,
            "global_pool": getattr(spec, "global_pool", None), "input_size": runtime.input_size,
            "preprocessing": args.embedding_preprocessing}


def main(args: argparse.Namespace) -> int:
    """Predict on --data_path and write the outputs; the exit code."""
    check_args(args)
    if args.model:
        args.model = resolve_model_name(args.model, args.model_arch)
    runtime = build_runtime(args)
    target_index = check_runtime(args, runtime)
    items = list_images(args.data_path, runtime.class_names)
    labelled = any(item.label is not None for item in items)
    with run_lock.hold_for_run(args.output_dir, "prediction", args):
        writer = None
        if distributed.is_main_process(args):
            for folder in filter(None, (args.output_dir, args.heatmaps)):
                remove_stale_temporaries(folder)
            writer = PredictionWriter(args.output_dir, len(items), runtime.class_names, labelled,
                                      runtime.embedding_dim, args.group_by,
                                      embedding_metadata(args, runtime) if args.embeddings else None)
        if args.heatmaps:
            os.makedirs(args.heatmaps, exist_ok=True)
        report_rows = [] if args.report else None
        try:
            predict(args, runtime, items, writer, report_rows, target_index)
        except BaseException:
            if writer:
                writer.close(keep=False)
            raise
        if not writer:
            return 0
        writer.close(keep=True)
        lines = summary_lines(args, runtime, writer)
        if args.report:
            write_report(os.path.join(args.output_dir, "report.html"), report_rows, runtime.class_names,
                         runtime.description, args.report_max_images, notes=lines[1:-1])
    print("\n".join(lines))
    return 0


def run(argv: Optional[List[str]] = None) -> int:
    """Entry point: predictions for --data_path written to --output_dir; one line and exit 1 for bad input; SIGINT /
    SIGTERM stop after the batch under way with exit 130 / 143, leaving no partial file.

    Args:
        argv: the command line's arguments (default: sys.argv[1:]).

    Returns:
        The exit code.
    """
    args = get_args_parser().parse_args(argv)
    return run_main(main, args, [args.output_dir, args.heatmaps], lambda signum: (
        f"stopped by {interrupts.signal_name(signum)}: the tables are written whole at the end, so none was written "
        "(heat maps drawn so far are kept); run the command again"))


if __name__ == "__main__":
    ENTRY_SCRIPT = True
    sys.exit(run())
