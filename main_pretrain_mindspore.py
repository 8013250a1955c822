"""MAE pre-training on your own unlabelled images (upstream main_pretrain.py's command line and recipe, MindSpore).

    python main_pretrain_mindspore.py --data_path ./unlabelled --pretrained RETFound_mae_meh --epochs 50 \\
        --batch_size 64 --blr 1.5e-4 --norm_pix_loss --output_dir ./pretrain_out     (continue RETFound's)
    msrun --worker_num=8 --local_worker_num=8 main_pretrain_mindspore.py ...             (data parallel)

--data_path is any folder of images (searched recursively; upstream's `<data_path>/train/<class>/` too). Outputs in
--output_dir: checkpoint-<epoch>.ckpt every --save_every epochs and at the end (each a valid --finetune for
main_finetune_mindspore.py, and --resume for predict / export --embeddings), log.txt (train_loss, train_lr, epoch),
reconstructions/epoch_<N>.png (what the model reconstructs of a few fixed images), args.json.
"""
if __name__ == "__main__":  # first, before MindSpore is imported: signals, MindSpore's log (cli/startup.py)
    from util_mindspore.cli import startup as _startup

    _startup.prepare_process()

import argparse
import datetime
import json
import logging
import os
import sys
import time
from typing import List, Optional

import mindspore as ms

from util_mindspore.cli.options import (
    add_compute_options,
    add_distributed_options,
    check_ranges,
    input_size_help,
    new_parser,
)
from util_mindspore.cli.startup import run_main
from util_mindspore.data.datasets import Loader
from util_mindspore.errors import ArgumentError
from util_mindspore.files.atomic import atomic_write, remove_stale_temporaries
from util_mindspore.models.compute_policy import policy_for
from util_mindspore.models.factory import num_params
from util_mindspore.process import distributed, interrupts, run_lock
from util_mindspore.process.run_start import start_run
from util_mindspore.registry import get_config, list_models
from util_mindspore.training import pretraining as pt
from util_mindspore.training.run_state import RunState, stopped_message
from util_mindspore.training.tensorboard_log import TensorBoardLog
from util_mindspore.training.train_step import effective_batch_size, scale_lr

logger = logging.getLogger("retfound")
ENTRY_SCRIPT = False
MAE_MODELS = list_models(architecture="mae")


def get_args_parser() -> argparse.ArgumentParser:
    """Upstream main_pretrain.py's flags and ours, grouped."""
    parser = new_parser(__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data")
    data.add_argument("--data_path", default="./data/", help="a folder of unlabelled images, any layout (recursive)")
    data.add_argument("--num_workers", default=10, type=int, help="image decoding threads")
    data.add_argument("--check_images", action="store_true", help="decode every image before training")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="mae_vit_large_patch16", metavar="MODEL",
                       help=f"one of: {', '.join(MAE_MODELS)}")
    model.add_argument("--input_size", default=None, type=int, help=input_size_help("mae"))
    model.add_argument("--mask_ratio", default=0.75, type=float, help="fraction of the patches removed")
    model.add_argument("--norm_pix_loss", action="store_true",
                       help="targets: each patch standardised by its own mean and variance")
    model.add_argument("--pretrained", default="",
                       help="start from an MAE checkpoint (encoder and decoder), a fresh optimizer: a published name "
                            "(RETFound_mae_meh, _natureCFP, _natureOCT, _shanghai), org/repo[/file] or a file")
    model.add_argument("--weights_cache_dir", default=None, help="cache of converted weights")
    training = parser.add_argument_group("training")
    training.add_argument("--batch_size", default=64, type=int,
                          help="batch size per process (effective: batch_size x accum_iter x processes)")
    training.add_argument("--epochs", default=400, type=int, help="training epochs")
    training.add_argument("--accum_iter", default=1, type=int, help="accumulate gradients over this many batches")
    training.add_argument("--weight_decay", type=float, default=0.05, help="AdamW's weight decay")
    training.add_argument("--lr", type=float, default=None, help="absolute lr (default: blr x effective batch / 256)")
    training.add_argument("--blr", type=float, default=1e-3, help="base learning rate")
    training.add_argument("--min_lr", type=float, default=0.0, help="the cosine schedule's floor")
    training.add_argument("--warmup_epochs", type=int, default=40, help="epochs of linear lr warm-up")
    training.add_argument("--seed", default=0, type=int, help="seed of weights, shuffles, crops and masks")
    training.add_argument("--resume", default="", help="continue one of our pre-training runs (checkpoint-<N>.ckpt)")
    training.add_argument("--start_epoch", default=0, type=int, help="first epoch of a fresh run")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--output_dir", default="./output_dir", help="checkpoints, log.txt, reconstructions")
    outputs.add_argument("--log_dir", default="./output_dir", help="TensorBoard scalars ('' turns them off)")
    outputs.add_argument("--save_every", default=50, type=int,
                         help="save checkpoint-<epoch>.ckpt every this many epochs (and after the last), as upstream")
    outputs.add_argument("--visualize", default=4, type=int,
                         help="images whose reconstruction is drawn after each epoch (0: none)")
    add_compute_options(parser)
    add_distributed_options(parser)
    return parser


RANGES = [("batch_size", 1, None, True), ("epochs", 1, None, True), ("accum_iter", 1, None, True),
          ("input_size", 1, None, True), ("mask_ratio", 0, 1, False), ("weight_decay", 0, None, True),
          ("lr", 0, None, True), ("blr", 0, None, True), ("min_lr", 0, None, True), ("warmup_epochs", 0, None, True),
          ("start_epoch", 0, None, True), ("save_every", 1, None, True), ("visualize", 0, None, True),
          ("num_workers", 0, None, True)]


def check_args(args: argparse.Namespace) -> None:
    """Every flag within its meaning, in one line naming the flags at fault; the input size from the model's row."""
    check_ranges(args, RANGES)
    if args.model not in MAE_MODELS:
        raise ArgumentError(f"--model {args.model}: choose an MAE model: {', '.join(MAE_MODELS)}")
    config = get_config(args.model)
    if args.input_size is None:
        args.input_size = config.default_input_size
    problems = pt.mask_ratio_problems(args.mask_ratio, args.input_size, config.patch_size)
    if args.input_size % config.patch_size:
        problems.append(f"--input_size {args.input_size} is not a multiple of the patch size {config.patch_size}")
    if args.pretrained and args.resume:
        problems.append("--pretrained and --resume: give one (--resume continues a run, --pretrained starts one)")
    if problems:
        raise ArgumentError("; ".join(problems))


def main(args: argparse.Namespace, state: RunState) -> int:
    """Check the flags, start the process (device, ranks, seeds), take the output folder, pre-train."""
    check_args(args)
    start_run(args, os.path.join(args.output_dir, "mindspore"))
    scale_lr(args)
    with run_lock.hold_for_run(args.output_dir, "pre-training", args):
        if distributed.is_main_process(args):
            remove_stale_temporaries(args.output_dir)
        return pretrain(args, state)


def pretrain(args: argparse.Namespace, state: RunState) -> int:
    """The data, the model, what --resume brings; then the epochs, each with its log row, checkpoint when due and
    reconstructions."""
    dataset = pt.build_dataset(args)
    loader = Loader(dataset, args.batch_size, train=True, num_workers=args.num_workers, seed=args.seed,
                    rank=args.rank, world_size=args.world_size)
    model = pt.build_model(args)
    train_step = pt.build_mae_step(model, args)
    if args.resume:
        state.__dict__.update(pt.resume(args, train_step).__dict__)
    if state.start_epoch >= args.epochs:
        logger.info("Nothing to train: %s already reached epoch %d of %d", args.resume, state.start_epoch,
                    args.epochs)
        return 0
    main_process = distributed.is_main_process(args)
    policy = policy_for(args.amp_level, args.amp_dtype, args.device)
    samples = pt.fixed_images(dataset, args.visualize, args.input_size) if args.visualize and main_process else None
    logger.info("RETFound MAE pre-training (MindSpore %s)\nmodel      %s: %s; %.1fM trainable parameters; %d px; "
                "mask ratio %g; %s targets\nweights    %s\ndata       %s: %d images\ndevice     %s, %s, %s mode\n"
                "training   epochs %d to %d, batch %d x %d accumulation x %d processes = %d, lr %.3g (blr %g)\n"
                "outputs    %s/ (every argument in args.json)", ms.__version__, args.model, model.config.summary,
                num_params(model) / 1e6, args.input_size, args.mask_ratio,
                "per-patch normalised" if args.norm_pix_loss else "pixel", args.pretrained or args.resume or
                "random initialisation (upstream's)", dataset.root, len(dataset), args.device,
                "float32" if args.amp_level == "O0" else f"{args.amp_dtype} (--amp_level {args.amp_level})",
                args.mode, state.start_epoch, args.epochs - 1, args.batch_size, args.accum_iter, args.world_size,
                effective_batch_size(args), args.lr, args.blr, args.output_dir)
    tb_log = TensorBoardLog(args, folder=args.log_dir, loss_tag="train_loss", resumed_at=state.start_epoch)
    if main_process:
        with atomic_write(os.path.join(args.output_dir, "args.json"), encoding="utf-8") as fh:
            json.dump(vars(args), fh, indent=1, default=str)
    started = time.time()
    try:
        for epoch in range(state.start_epoch, args.epochs):
            stats = pt.train_one_epoch(train_step, loader, epoch, args, model.num_patches, tb_log)
            if main_process:
                pt.save_epoch(args, model, train_step, epoch, stats, state)
                if samples is not None:
                    pt.draw_reconstructions(args, model, samples[0], samples[1], epoch, policy)
            interrupts.check(lambda signum: distributed.all_reduce_max(signum, args))
    finally:
        tb_log.close()
    logger.info("Training time %s", datetime.timedelta(seconds=int(time.time() - started)))
    return 0


def run(argv: Optional[List[str]] = None) -> int:
    """Entry point: upstream main_pretrain.py's flags in, checkpoints and logs out; one line and exit 1 for bad
    input; SIGINT / SIGTERM stop after the step under way with exit 130 / 143.

    Args:
        argv: the command line's arguments (default: sys.argv[1:]).

    Returns:
        The exit code.
    """
    args = get_args_parser().parse_args(argv)
    state = RunState(args.start_epoch)
    return run_main(lambda parsed: main(parsed, state), args, [args.output_dir],
                    lambda signum: stopped_message(state, signum, args.resume))


if __name__ == "__main__":
    ENTRY_SCRIPT = True
    sys.exit(run())
