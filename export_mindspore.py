"""Export a fine-tuned RETFound (or its encoder) to MindIR and ONNX, each file verified by reloading it.

    python export_mindspore.py --resume output_dir/IDRiD_ft/checkpoint-best.ckpt --output_dir export
    python export_mindspore.py --resume checkpoint-best.pth --model RETFound_mae --format onnx --batch 8
    python export_mindspore.py --resume RETFound_mae_meh --embeddings --name retfound_mae_encoder

Writes <output_dir>/<name>.mindir and/or <name>.onnx and <name>.json: what a deployer needs to feed the file
(input shape, preprocessing, class names) and how it was verified. The model's settings (model, classes,
input size, pooling) come from the checkpoint where it has them; flags given must agree with it.
"""
import argparse
import json
import os
import shutil
import sys
from typing import List, Optional

import mindspore as ms

import models_vit_mindspore
from util_mindspore import export
from util_mindspore.atomic_files import atomic_write
from util_mindspore.compute_policy import AMP_LEVELS
from util_mindspore.errors import exit_code
from util_mindspore.logs import setup_logging
from util_mindspore.trained_model import load_trained_model
from util_mindspore.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_resize_size

SIDECAR_VERSION = 1


def get_args_parser():
    parser = argparse.ArgumentParser("Export RETFound to MindIR / ONNX (MindSpore)")
    parser.add_argument("--resume", required=True,
                        help="our .ckpt, an upstream checkpoint-best.pth, or a published name (with --embeddings)")
    parser.add_argument("--model", default=None, help="registered model (default: the checkpoint's, else RETFound_mae)")
    parser.add_argument("--model_arch", default=None, help="the size of --model Dinov2 (dinov2_vitb14...)")
    parser.add_argument("--nb_classes", default=None, type=int, help="default: the checkpoint head's classes")
    parser.add_argument("--input_size", default=None, type=int,
                        help="default: the checkpoint's (from its arguments, else its position-embedding grid)")
    parser.add_argument("--global_pool", action="store_true", default=None)
    parser.add_argument("--cls_token", action="store_false", dest="global_pool",
                        help="class token instead of global pool (default: what the checkpoint holds)")
    parser.add_argument("--format", default="mindir,onnx", help="comma-separated: mindir, onnx")
    parser.add_argument("--output_dir", default="./export")
    parser.add_argument("--name", default=None, help="file name stem (default: the model name, +_embeddings)")
    parser.add_argument("--batch", default="dynamic", help="'dynamic' (free batch dimension) or a fixed batch size")
    parser.add_argument("--embeddings", action="store_true",
                        help="export the encoder: its output is the embedding upstream's latent_feature.ipynb extracts")
    parser.add_argument("--amp_level", default="O0", choices=AMP_LEVELS,
                        help="O0: float32; O1-O3: float16 as in util_mindspore/compute_policy.py")
    parser.add_argument("--weights_cache_dir", default=None, help="cache of converted weights")
    return parser


def parse_formats(value):
    formats = [f.strip().lower() for f in value.split(",") if f.strip()]
    unknown = [f for f in formats if f not in export.FORMATS]
    if not formats or unknown:
        raise export.ExportError(f"--format {value}: use mindir, onnx or mindir,onnx")
    return list(dict.fromkeys(formats))


def parse_batch(value):
    if value == "dynamic":
        return None
    if not value.isdigit() or int(value) < 1:
        raise export.ExportError(f"--batch {value}: use 'dynamic' or a batch size of at least 1")
    return int(value)


def prepare_output_dir(path):
    """Create --output_dir and prove it takes a file, before minutes of export."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise export.ExportError(f"--output_dir {path} is not writable: {exc.strerror or exc}") from None


def sidecar(args, trained, formats, files, checks, batch, output_dim):
    reduced = args.amp_level != "O0"
    output_dtype = checks[formats[0]].output_dtype
    return {
        "format_version": SIDECAR_VERSION,
        "files": files,
        "model": trained.name, "source": args.resume, "global_pool": trained.global_pool,
        "output": {"kind": "embedding" if args.embeddings else "logits", "shape": ["batch", output_dim],
                   "dtype": output_dtype,
                   "class_names": trained.class_names,
                   "meaning": ("the embedding upstream's latent_feature.ipynb extracts" if args.embeddings else
                               "logits; softmax over them gives the class probabilities")},
        "input": {"shape": ["batch" if batch is None else batch, 3, trained.input_size, trained.input_size],
                  "dtype": "float32", "layout": "NCHW", "channels": "RGB"},
        "preprocessing": {
            "decode": "PIL Image.open(path).convert('RGB')",
            "resize_shorter_side": eval_resize_size(trained.input_size), "interpolation": "bicubic",
            "center_crop": trained.input_size, "scale": "1/255", "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD)},
        "precision": {"amp_level": args.amp_level, "reduced_dtype": "float16" if reduced else None},
        "verification": {fmt: checks[fmt].as_dict() for fmt in formats},
    }


def main(args):
    if args.model:
        args.model = models_vit_mindspore.resolve_model_name(args.model, args.model_arch)
    formats = parse_formats(args.format)
    batch = parse_batch(args.batch)
    if "onnx" in formats:
        export.check_onnx_available()
    if ms.get_context("device_target") != "CPU":  # the files run anywhere; exporting and checking need no accelerator
        ms.set_device("CPU")
    prepare_output_dir(args.output_dir)
    trained = load_trained_model(args.resume, args.model, args.nb_classes, args.input_size, args.global_pool,
                                 with_head=not args.embeddings, cache_dir=args.weights_cache_dir)
    model = trained.model
    net = export.EmbeddingNet(model) if args.embeddings else model
    name = args.name or (trained.name + ("_embeddings" if args.embeddings else ""))
    output_dim = model.num_features if args.embeddings else model.num_classes
    files, checks, done = {}, {}, []
    try:
        for fmt in formats:
            checks[fmt] = check = export.export_verified(net, model, fmt, args.output_dir, name, trained.input_size,
                                                         batch, args.amp_level)
            files[fmt] = check.files[0]
            done.extend(os.path.join(args.output_dir, f) for f in check.files)
            print(f"{fmt}: {os.path.join(args.output_dir, files[fmt])} reproduces the MindSpore model: max |diff| "
                  f"{check.max_abs_diff:.2e} <= {check.tolerance:.0e} at batch sizes "
                  f"{', '.join(map(str, check.batch_sizes))}")
        json_path = os.path.join(args.output_dir, f"{name}.json")
        with atomic_write(json_path, encoding="utf-8") as fh:
            json.dump(sidecar(args, trained, formats, files, checks, batch, output_dim), fh, indent=2)
    except BaseException:
        for path in done:  # all verified or none kept: a deployer never finds half an export
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        raise
    print(f"preprocessing and classes: {json_path}")
    return 0


def run(argv: Optional[List[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    return exit_code(main, args)

if __name__ == "__main__":
    sys.exit(run())
