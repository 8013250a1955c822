"""Export a fine-tuned RETFound (or its encoder) to MindIR, ONNX and OpenVINO IR, each file verified by reloading it.

    python export_mindspore.py --resume output_dir/IDRiD_ft/checkpoint-best.ckpt --output_dir export
    python export_mindspore.py --resume checkpoint-best.pth --format onnx --batch 8
    python export_mindspore.py --resume RETFound_mae_meh --embeddings --name retfound_mae_encoder
    python export_mindspore.py --resume checkpoint-best.ckpt --format openvino     # IR for OpenVINO on CPU servers

Writes <output_dir>/<name>.mindir, <name>.onnx and/or <name>.xml + <name>.bin, and <name>.json: what a deployer
needs to feed the files (input shape, preprocessing, class names; util_mindspore/inference/deployment.py reads
it) and how they were verified. The model's settings (model, classes, input size, pooling) come from the checkpoint
where it has them; flags given must agree with it.
"""
if __name__ == "__main__":  # first, before MindSpore is imported: signals, MindSpore's log (cli/startup.py)
    from util_mindspore.cli import startup as _startup

    _startup.prepare_process()

import argparse
import json
import os
import shutil
import sys
from typing import List, Optional

import mindspore as ms

import models_vit_mindspore
from util_mindspore.cli.options import add_compute_options, model_choices, new_parser
from util_mindspore.cli.startup import run_main
from util_mindspore.files.atomic import atomic_write, remove_stale_temporaries
from util_mindspore.inference import export
from util_mindspore.process import interrupts, run_lock
from util_mindspore.registry import resolve_model_name

ENTRY_SCRIPT = False


def get_args_parser() -> argparse.ArgumentParser:
    """export_mindspore.py's flags, grouped (model, outputs, precision)."""
    parser = new_parser(__doc__.split("\n\n")[0])
    model = parser.add_argument_group("model (what the checkpoint does not say)")
    model.add_argument("--resume", required=True,
                       help="our .ckpt, an upstream checkpoint-best.pth (any family), an MAE pre-training checkpoint, "
                            "or a published name (with --embeddings)")
    model.add_argument("--model", default=None, metavar="MODEL", help=f"default: the checkpoint's; {model_choices()}")
    model.add_argument("--model_arch", default=None, help="the size of --model Dinov2 / Dinov3")
    model.add_argument("--nb_classes", default=None, type=int, help="default: the checkpoint head's classes")
    model.add_argument("--input_size", default=None, type=int,
                       help="default: the checkpoint's (from its arguments, else its position-embedding grid)")
    model.add_argument("--global_pool", action="store_true", default=None,
                       help="pool the mean of the patch tokens (default: what the checkpoint holds)")
    model.add_argument("--cls_token", action="store_false", dest="global_pool",
                       help="use the class token instead of the mean of the patch tokens")
    model.add_argument("--embeddings", action="store_true",
                       help="export the encoder: its output is the embedding upstream's latent_feature.ipynb extracts")
    model.add_argument("--weights_cache_dir", default=None, help="cache of converted weights")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--format", default="mindir,onnx",
                         help="comma-separated: mindir, onnx, openvino (OpenVINO IR .xml + .bin)")
    outputs.add_argument("--output_dir", default="./export", help="where the files go")
    outputs.add_argument("--name", default=None, help="file name stem (default: the model name, +_embeddings)")
    outputs.add_argument("--batch", default="dynamic", help="'dynamic' (a free batch dimension) or a fixed batch size")
    add_compute_options(parser, flags=("amp_level", "amp_dtype"), amp_default="O0")
    return parser


def parse_formats(value: str) -> List[str]:
    """--format as a list of known formats, each once, in the order given."""
    formats = [f.strip().lower() for f in value.split(",") if f.strip()]
    unknown = [f for f in formats if f not in export.FORMATS]
    if not formats or unknown:
        raise export.ExportError(f"--format {value}: use any of {', '.join(export.FORMATS)}, comma-separated")
    return list(dict.fromkeys(formats))


def parse_batch(value: str) -> Optional[int]:
    """--batch: None for a free batch dimension, else the fixed size."""
    if value == "dynamic":
        return None
    if not value.isdigit() or int(value) < 1:
        raise export.ExportError(f"--batch {value}: use 'dynamic' or a batch size of at least 1")
    return int(value)


def prepare_output_dir(path: str) -> None:
    """Create --output_dir and prove it takes a file, before minutes of export."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}.partial")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise export.ExportError(f"--output_dir {path} is not writable: {exc.strerror or exc}") from exc


def export_files(args: argparse.Namespace, trained: models_vit_mindspore.TrainedModel, formats: List[str],
                 batch: Optional[int], name: str) -> str:
    """Every format, verified, then the .json; all kept or none (a deployer never finds half an export).

    Args:
        args: the export's arguments (output_dir, embeddings, amp_level, amp_dtype, resume).
        trained: the model and the settings its checkpoint gave.
        formats: mindir, onnx, openvino.
        batch: a fixed batch size, or None for a free batch dimension.
        name: the files' stem.

    Returns:
        The path of the .json written beside the files.
    """
    model = trained.model
    net = export.EmbeddingNet(model) if args.embeddings else model
    output_dim = model.num_features if args.embeddings else model.num_classes
    files, checks, done = {}, {}, []
    try:
        for fmt in formats:
            checks[fmt] = check = export.export_verified(net, model, fmt, args.output_dir, name, trained.input_size,
                                                         batch, args.amp_level, args.amp_dtype)
            files[fmt] = check.files[0]
            done.extend(os.path.join(args.output_dir, f) for f in check.files)
            print(f"{fmt}: {os.path.join(args.output_dir, files[fmt])} reproduces the MindSpore model: max |diff| "
                  f"{check.max_abs_diff:.2e} <= {check.tolerance:.0e} at batch sizes "
                  f"{', '.join(map(str, check.batch_sizes))}", flush=True)
            interrupts.check()  # a safe point between formats
        json_path = os.path.join(args.output_dir, f"{name}.json")
        with atomic_write(json_path, encoding="utf-8") as fh:
            json.dump(export.describe(trained, args.resume, files, checks, batch, output_dim, args.embeddings,
                                      args.amp_level, args.amp_dtype), fh, indent=2)
    except BaseException:
        for path in done:
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        raise
    return json_path


def main(args: argparse.Namespace) -> int:
    """Load the checkpoint, export and verify every format; the exit code."""
    if args.model:
        args.model = resolve_model_name(args.model, args.model_arch)
    formats = parse_formats(args.format)
    batch = parse_batch(args.batch)
    for fmt in formats:
        export.check_format_available(fmt)
    if ms.get_context("device_target") != "CPU":  # the files run anywhere; exporting and checking need no accelerator
        ms.set_device("CPU")
    trained = models_vit_mindspore.load_trained_model(args.resume, args.model, args.nb_classes, args.input_size,
                                                      args.global_pool, with_head=not args.embeddings,
                                                      cache_dir=args.weights_cache_dir)
    name = args.name or (trained.name + ("_embeddings" if args.embeddings else ""))
    prepare_output_dir(args.output_dir)
    with run_lock.hold(args.output_dir, "export"):
        remove_stale_temporaries(args.output_dir)
        json_path = export_files(args, trained, formats, batch, name)
    print(f"preprocessing and classes: {json_path}")
    return 0


def run(argv: Optional[List[str]] = None) -> int:
    """Entry point: the verified files in --output_dir; one line and exit 1 for bad input; SIGINT / SIGTERM stop
    between formats (a second one at once) with exit 130 / 143, keeping no file of the run.

    Args:
        argv: the command line's arguments (default: sys.argv[1:]).

    Returns:
        The exit code.
    """
    args = get_args_parser().parse_args(argv)
    return run_main(main, args, [args.output_dir], lambda signum: f"stopped by {interrupts.signal_name(signum)}: "
                    "no file of this export was kept; run the command again")


if __name__ == "__main__":
    ENTRY_SCRIPT = True
    sys.exit(run())
