"""Convert a RETFound checkpoint to MindSpore once, load it into a model, and run one forward pass.

    python convert_weights_example.py --finetune RETFound_mae_meh
    python convert_weights_example.py --finetune RETFound_dinov2_meh --model RETFound_dinov2
    python convert_weights_example.py --finetune /path/to/checkpoint-best.pth --nb_classes 5

The converted .ckpt is cached (see --cache_dir); later runs and training reuse it without downloading.
"""
import argparse
import sys

import mindspore as ms
import numpy as np

import models_vit_mindspore
from util_mindspore.conversion import download_and_convert_weights
from util_mindspore.hub import PUBLISHED
from util_mindspore.logs import setup_logging
from util_mindspore.weights import load_pretrained_weights


def get_args_parser():
    parser = argparse.ArgumentParser("RETFound weight conversion for MindSpore")
    parser.add_argument("--finetune", required=True,
                        help="published name (e.g. RETFound_mae_meh), org/repo[/file] on the hub, or a local file")
    parser.add_argument("--cache_dir", default=None,
                        help="where converted .ckpt files live "
                             "(default $RETFOUND_MS_CACHE or ~/.cache/retfound_mindspore)")
    parser.add_argument("--model", default=None,
                        help="model to load into (default: RETFound_dinov2 for DINOv2 names, else RETFound_mae)")
    parser.add_argument("--model_arch", default=None, help="the size of --model Dinov2 (dinov2_vitb14...)")
    parser.add_argument("--nb_classes", default=5, type=int)
    parser.add_argument("--input_size", default=224, type=int)
    parser.add_argument("--global_pool", action="store_true", default=True)
    parser.add_argument("--cls_token", action="store_false", dest="global_pool")
    parser.add_argument("--token", default=None,
                        help="HuggingFace token (default: HF_TOKEN or `huggingface-cli login`)")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--force", action="store_true", help="convert again even when the cache is valid")
    return parser


def main(args) -> int:
    model_name = models_vit_mindspore.resolve_model_name(args.model, args.model_arch) if args.model else None
    model_name = model_name or ("RETFound_dinov2" if PUBLISHED.get(args.finetune) == "dinov2" else "RETFound_mae")
    model = models_vit_mindspore.create_model(model_name, img_size=args.input_size, num_classes=args.nb_classes,
                                              global_pool=args.global_pool)
    path = download_and_convert_weights(args.finetune, args.cache_dir, token=args.token, revision=args.revision,
                                           force=args.force)
    report = load_pretrained_weights(model, path)  # the .ckpt just made: no second hub request
    model.set_train(False)
    batch = np.random.default_rng(0).standard_normal((2, 3, args.input_size, args.input_size)).astype(np.float32)
    logits = model(ms.Tensor(batch))
    print(f"converted checkpoint: {path}")
    print(f"model: {model_name} ({models_vit_mindspore.num_params(model) / 1e6:.2f} M parameters)")
    print(f"load report: {report}")
    finite = bool(np.isfinite(logits.asnumpy()).all())
    print(f"forward on a random batch: logits {tuple(logits.shape)}, finite: {finite}")
    return 0


if __name__ == "__main__":
    cli_args = get_args_parser().parse_args()
    setup_logging()
    try:
        sys.exit(main(cli_args))
    except (ValueError, KeyError) as exc:  # WeightError is a ValueError; KeyError: unknown --model
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
