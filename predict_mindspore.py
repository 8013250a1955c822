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
if __name__ == "__main__":  # first, before MindSpore is imported: signals, MindSpore's log (cli/startup.py)
    from util_mindspore.cli import startup as _startup

    _startup.prepare_process()

import argparse
import logging
import os
import re
import sys
from typing import List, Optional

# MindSpore is imported only where the MindSpore runtime (or an export for OpenVINO) needs it: predicting from an
# exported file runs without it (util_mindspore/inference/runtimes.py)
from util_mindspore.cli.options import add_compute_options, check_ranges, model_choices, new_parser
from util_mindspore.cli.startup import run_main
from util_mindspore.data.image_sources import list_images
from util_mindspore.errors import ArgumentError
from util_mindspore.evaluation.report import write_report
from util_mindspore.files.atomic import remove_stale_temporaries
from util_mindspore.inference.outputs import PredictionWriter
from util_mindspore.inference.predict import Timing, embedding_metadata, predict, summary_lines
from util_mindspore.inference.runtime_loader import build_runtime, check_runtime
from util_mindspore.process import distributed, interrupts, run_lock
from util_mindspore.registry import resolve_model_name

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
            raise ArgumentError(f"--group_by {args.group_by}: not a regular expression ({exc})") from exc


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
        timing = Timing()
        try:
            predict(args, runtime, items, writer, report_rows, target_index, timing)
        except BaseException:
            if writer:
                writer.close(keep=False)
            raise
        if not writer:
            return 0
        writer.close(keep=True)
        lines = summary_lines(args, runtime, writer, timing)
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
