"""What an MAE reconstructs of your images: upstream RETFound_visualize.ipynb's four panels (original, masked,
reconstruction, reconstruction with the visible patches pasted back) for any MAE checkpoint.

    python mae_visualize_mindspore.py --resume RETFound_mae_meh --data_path photos/ --output_dir recon/
    python mae_visualize_mindspore.py --resume pretrain_out/checkpoint-49.ckpt --data_path photos/

As the notebook: each image resized to --input_size, /255, ImageNet's mean and std; --mask_ratio of its patches
removed by a seeded random mask. One PNG (and PDF) per image in --output_dir, named from its path.
"""
if __name__ == "__main__":  # first, before MindSpore is imported: MindSpore's log (cli/startup.py)
    from util_mindspore.cli import startup as _startup

    _startup.prepare_process(signals=False)

import argparse
import os
import sys
from typing import List, Optional

import numpy as np
from PIL import Image

from util_mindspore.checkpoints.conversion import checkpoint_file
from util_mindspore.checkpoints.train_checkpoint import read_checkpoint
from util_mindspore.checkpoints.trained_model import model_of_checkpoint
from util_mindspore.cli.options import add_compute_options, check_ranges, input_size_help, new_parser
from util_mindspore.cli.startup import run_main
from util_mindspore.data.image_sources import list_images
from util_mindspore.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from util_mindspore.errors import ArgumentError
from util_mindspore.evaluation import figures
from util_mindspore.files.names import output_path
from util_mindspore.models.factory import create_model
from util_mindspore.process import device
from util_mindspore.registry import get_config, list_models
from util_mindspore.training.pretraining import mask_ratio_problems, reconstruction_panels

MAE_MODELS = list_models(architecture="mae")
ENTRY_SCRIPT = False


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--resume", required=True,
                        help="an MAE checkpoint: a published name (RETFound_mae_meh...), one of our pre-training "
                             "checkpoints, or an MAE .pth")
    parser.add_argument("--data_path", required=True, help="a folder of images (recursive), one image, or a .csv")
    parser.add_argument("--output_dir", default="./reconstructions", help="where the pictures go")
    parser.add_argument("--model", default=None, metavar="MODEL",
                        help="default: the one the checkpoint names or its shapes fit; one of: "
                             f"{', '.join(MAE_MODELS)}")
    parser.add_argument("--input_size", default=None, type=int,
                        help=input_size_help("mae") + "; the notebook's 224")
    parser.add_argument("--mask_ratio", default=0.75, type=float, help="fraction of the patches removed")
    parser.add_argument("--seed", default=2, type=int, help="seed of the masks (the notebook's torch.manual_seed(2))")
    parser.add_argument("--norm_pix", default="auto", choices=["auto", "yes", "no"],
                        help="give each predicted patch the original's mean and variance (a model trained with "
                             "norm_pix_loss predicts standardised patches); auto: what the checkpoint was trained "
                             "with")
    parser.add_argument("--max_images", default=16, type=int, help="at most this many images")
    parser.add_argument("--weights_cache_dir", default=None, help="cache of converted weights")
    add_compute_options(parser, flags=("device", "mode"))
    return parser


def notebook_input(path: str, size: int) -> np.ndarray:
    """RETFound_visualize.ipynb's input: resized to size x size (bicubic), /255, ImageNet-normalised, CHW."""
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC), np.float64) / 255.0
    return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).astype(np.float32)


def main(args: argparse.Namespace) -> int:
    check_ranges(args, [("input_size", 1, None, True), ("mask_ratio", 0, 1, False), ("max_images", 1, None, True)])
    args.amp_level, args.amp_dtype = "O0", "float16"  # float32 reconstructions
    device.configure(args)
    checkpoint_path = checkpoint_file(args.resume, args.weights_cache_dir)
    checkpoint = read_checkpoint(checkpoint_path)
    meta = checkpoint.meta
    trained_args = {**meta.get("source_args", {}), **meta.get("args", {})}
    named = [n for n in (meta.get("model"), trained_args.get("model")) if n in MAE_MODELS]
    name = args.model or (named[0] if named else model_of_checkpoint(checkpoint.weights, args.resume, "mae"))
    if name not in MAE_MODELS:
        raise ArgumentError(f"--model {name}: choose an MAE model: {', '.join(MAE_MODELS)}")
    norm_pix = bool(trained_args.get("norm_pix_loss", False)) if args.norm_pix == "auto" else args.norm_pix == "yes"
    config = get_config(name)
    args.input_size = args.input_size or config.default_input_size
    problems = mask_ratio_problems(args.mask_ratio, args.input_size, config.patch_size)
    if args.input_size % config.patch_size:
        problems.append(f"--input_size {args.input_size} is not a multiple of the patch size {config.patch_size}")
    if problems:
        raise ArgumentError("; ".join(problems))
    model = create_model(name, pretrained=checkpoint_path, img_size=args.input_size,
                         weights_cache_dir=args.weights_cache_dir)
    items = list_images(args.data_path)[:args.max_images]
    os.makedirs(args.output_dir, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for item in items:
        image = notebook_input(item.path, args.input_size)[None]
        noise = rng.random((1, model.num_patches), dtype=np.float32)
        panels = reconstruction_panels(model, image, args.mask_ratio, noise, norm_pix)
        path = output_path(args.output_dir, item.name, ".png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        figures.save_reconstructions(path, panels, [item.name],
                                     f"{name} from {args.resume}, mask ratio {args.mask_ratio}"
                                     + (" (patches given the original's mean and variance)" if norm_pix else ""))
    print(f"{len(items)} reconstructions in {args.output_dir}")
    return 0


def run(argv: Optional[List[str]] = None) -> int:
    """Entry point: the reconstructions in --output_dir; one line and exit 1 for bad input."""
    args = get_args_parser().parse_args(argv)
    return run_main(main, args, [args.output_dir])


if __name__ == "__main__":
    ENTRY_SCRIPT = True
    sys.exit(run())
