"""Convert a RETFound checkpoint to MindSpore once, load it into a model, and run one forward pass.

    python convert_weights_example.py --finetune RETFound_mae_meh
    python convert_weights_example.py --finetune RETFound_dinov2_meh --model RETFound_dinov2
    python convert_weights_example.py --finetune /path/to/checkpoint-best.pth --nb_classes 5

The converted .ckpt is cached (see --cache_dir); later runs and training reuse it without downloading.
"""
if __name__ == "__main__":  # first, before MindSpore is imported: MindSpore's log (cli/startup.py)
    from util_mindspore.cli import startup as _startup

    _startup.prepare_process(signals=False)

import argparse
import sys
from typing import List, Optional

import mindspore as ms
import numpy as np

from util_mindspore.checkpoints.conversion import download_and_convert_weights
from util_mindspore.checkpoints.train_checkpoint import read_checkpoint
from util_mindspore.checkpoints.trained_model import model_of_checkpoint
from util_mindspore.cli.options import input_size_help, model_choices, new_parser
from util_mindspore.cli.startup import run_main
from util_mindspore.models.factory import create_model, num_params
from util_mindspore.models.weights import load_pretrained_weights
from util_mindspore.registry import get_config, published_weights, resolve_model_name


def get_args_parser() -> argparse.ArgumentParser:
    """The weights to convert and the model to load them into."""
    parser = new_parser(__doc__.split("\n\n")[0])
    source = parser.add_argument_group("weights")
    source.add_argument("--finetune", required=True,
                        help="published name (e.g. RETFound_mae_meh), org/repo[/file] on the hub, or a local file")
    source.add_argument("--cache_dir", default=None,
                        help="where converted .ckpt files live (default $RETFOUND_MS_CACHE or "
                             "~/.cache/retfound_mindspore)")
    source.add_argument("--token", default=None,
                        help="HuggingFace token (default: HF_TOKEN or `huggingface-cli login`)")
    source.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    source.add_argument("--force", action="store_true", help="convert again even when the cache is valid")
    model = parser.add_argument_group("model to load them into")
    model.add_argument("--model", default=None, metavar="MODEL",
                       help=f"default: the published name's model, else the one the checkpoint's shapes fit; "
                            f"{model_choices()}")
    model.add_argument("--model_arch", default=None, help="the size of --model Dinov2 / Dinov3")
    model.add_argument("--nb_classes", default=5, type=int, help="classes of the new head")
    model.add_argument("--input_size", default=None, type=int, help=input_size_help())
    model.add_argument("--global_pool", action="store_true", default=None, help="classify the mean of patch tokens")
    model.add_argument("--cls_token", action="store_false", dest="global_pool", help="classify the class token")
    return parser


def main(args: argparse.Namespace) -> int:
    """Convert (or find in the cache), pick the model, load, one forward."""
    path = download_and_convert_weights(args.finetune, args.cache_dir, token=args.token, revision=args.revision,
                                        force=args.force)
    model_name = resolve_model_name(args.model, args.model_arch) if args.model else \
        published_weights().get(args.finetune) or model_of_checkpoint(read_checkpoint(path).weights, args.finetune)
    config = get_config(model_name)
    args.input_size = args.input_size or config.default_input_size
    model = create_model(model_name, img_size=args.input_size, num_classes=args.nb_classes,
                         global_pool=args.global_pool if config.global_pool is not None else None)
    report = load_pretrained_weights(model, path)  # the .ckpt just made: no second hub request
    model.set_train(False)
    batch = np.random.default_rng(0).standard_normal((2, 3, args.input_size, args.input_size)).astype(np.float32)
    logits = model(ms.Tensor(batch))
    print(f"converted checkpoint: {path}")
    print(f"model: {model_name} ({num_params(model) / 1e6:.2f} M parameters)")
    print(f"load report: {report}")
    finite = bool(np.isfinite(logits.asnumpy()).all())
    print(f"forward on a random batch: logits {tuple(logits.shape)}, finite: {finite}")
    return 0


def run(argv: Optional[List[str]] = None) -> int:
    """Entry point: convert, load and run once; one line and exit 1 for bad input, a full or read-only disk."""
    return run_main(main, get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(run())
