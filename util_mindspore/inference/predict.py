"""Prediction over many images (what predict_mindspore.py runs): decoding threads one batch ahead of the model,
each rank its share under msrun, rank 0 writing every row in input order, heat maps per image, the summary."""
import argparse
import collections
import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from util_mindspore.data.image_sources import ImageItem, decode
from util_mindspore.data.transforms import EvalTransform, NotebookEmbeddingTransform, Transform
from util_mindspore.evaluation.probabilities import softmax
from util_mindspore.evaluation.report import ReportRow
from util_mindspore.files.names import output_path, printable
from util_mindspore.inference.outputs import PredictionWriter
from util_mindspore.inference.runtime_loader import Runtime
from util_mindspore.process import distributed, interrupts
from util_mindspore.process.progress import Progress

if TYPE_CHECKING:
    from util_mindspore.inference.mindspore_runtime import MindSporeRuntime


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
    from util_mindspore.inference import heatmaps
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


class Timing:
    """When the prediction loop started, ended its first batch (which holds MindSpore's compilation) and ended: the
    summary's speed line, which benchmarks/bench_predict.py reads."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first_batch: Optional[float] = None
        self.first_images = 0
        self.ended: Optional[float] = None

    def batch_done(self, images: int) -> None:
        if self.first_batch is None:
            self.first_batch, self.first_images = time.perf_counter(), images

    def line(self, images: int) -> str:
        total = (self.ended or time.perf_counter()) - self.started
        after = images - self.first_images
        steady = after / (self.ended - self.first_batch) if after and self.ended and self.ended > self.first_batch \
            else float("nan")
        return (f"speed: {steady:.3f} img/s after the first batch (which holds the model's compilation); {images} "
                f"images in {total:.1f} s")


def predict(args: argparse.Namespace, runtime: Runtime, items: List[ImageItem], writer: Optional[PredictionWriter],
            report_rows: Optional[List[ReportRow]], target_index: Optional[int],
            timing: Optional[Timing] = None) -> None:
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
            if timing is not None:
                timing.batch_done(len(rows["index"]))
            interrupts.check(lambda signum: distributed.all_reduce_max(signum, args))
    finally:
        progress.close()
        batches.close()
        if timing is not None:
            timing.ended = time.perf_counter()


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


def summary_lines(args: argparse.Namespace, runtime: Runtime, writer: PredictionWriter,
                  timing: Optional[Timing] = None) -> List[str]:
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
    if timing is not None:
        lines.append(timing.line(s["images"]))
    written = [f for f, on in (("predictions.csv", runtime.class_names), ("embeddings.npy", args.embeddings),
                               ("embeddings.json", args.embeddings), ("Feature.csv", args.embeddings),
                               ("predictions_by_group.csv", args.group_by), ("report.html", args.report)) if on]
    where = [os.path.join(args.output_dir, f) for f in written] + ([f"heat maps in {args.heatmaps}"]
                                                                    if args.heatmaps else [])
    lines.append(f"wrote {', '.join(where)}")
    return lines


def embedding_metadata(args: argparse.Namespace, runtime: Runtime) -> Dict[str, object]:
    """embeddings.json: which vector the rows are, from which checkpoint, pooling, size and preprocessing."""
    spec = getattr(runtime, "trained", None)
    return {"model": getattr(spec, "name", None), "source": args.resume,
            "vector": getattr(spec, "embedding", None) or runtime.embedding_description,
            "global_pool": getattr(spec, "global_pool", None), "input_size": runtime.input_size,
            "preprocessing": args.embedding_preprocessing}


