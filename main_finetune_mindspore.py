"""Fine-tune and evaluate RETFound with MindSpore: upstream main_finetune.py's command line and outputs.

    python main_finetune_mindspore.py --model RETFound_mae --finetune RETFound_mae_meh \\
        --data_path ./IDRiD --nb_classes 5 --input_size 224 --batch_size 16 --epochs 100 --task IDRiD_ft
    python main_finetune_mindspore.py --eval --resume output_dir/IDRiD_ft/checkpoint-best.ckpt ...   (evaluate)
    msrun --worker_num=2 --local_worker_num=2 main_finetune_mindspore.py ...                         (data parallel)

Outputs in <output_dir>/<task>/: log.txt, metrics_{val,test}.csv, metrics_test_ci.csv, predictions_{val,test}.csv,
confusion_matrix_test.{jpg,pdf}, roc_curves_test.{png,pdf}, training_curves.{png,pdf}, checkpoint-best.ckpt (the
model), checkpoint-last.ckpt (the run's whole state), args.json. --eval writes into <task>/eval_<checkpoint>/.
"""
if __name__ == "__main__":  # first, before MindSpore is imported: signals, MindSpore's log (cli/startup.py)
    from util_mindspore.cli import startup as _startup

    _startup.prepare_process()

import argparse
import datetime
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
    model_choices,
    new_parser,
)
from util_mindspore.cli.startup import run_main
from util_mindspore.data.datasets import build_datasets
from util_mindspore.errors import ArgumentError
from util_mindspore.evaluation import metrics as metrics_lib
from util_mindspore.files.atomic import remove_stale_temporaries
from util_mindspore.files.names import printable
from util_mindspore.process import compile_cache, distributed, run_lock
from util_mindspore.process.run_start import start_run
from util_mindspore.registry import get_config, resolve_model_name
from util_mindspore.training import finetuning as ft
from util_mindspore.training.run_state import RunState, stopped_message
from util_mindspore.training.train_step import scale_lr

logger = logging.getLogger("retfound")
ENTRY_SCRIPT = False  # set when run as a script or console entry point: a fresh process may use the compile cache


def get_args_parser() -> argparse.ArgumentParser:
    """Upstream main_finetune.py's flags (every one, with its default) and ours, grouped."""
    parser = new_parser(__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data")
    data.add_argument("--data_path", default="./data/", type=str, help="dataset folder: train/ val/ test/ inside, a "
                      "folder per class in each")
    data.add_argument("--nb_classes", default=8, type=int, help="number of classes (the class folders)")
    data.add_argument("--dataratio", type=str, default="1.0",
                      help="train on this fraction of the training split, in (0, 1]: the same images as upstream "
                           "for the same --seed")
    data.add_argument("--stratified", action="store_true",
                      help="with --dataratio: keep the fraction within every class (class proportions kept)")
    data.add_argument("--num_workers", default=10, type=int, help="image decoding threads")
    data.add_argument("--check_images", action="store_true",
                      help="decode every image before training (start-up reads headers only; an image that cannot "
                           "be decoded otherwise stops the run when it is reached)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default="RETFound_mae", type=str, metavar="MODEL", help=model_choices())
    model.add_argument("--model_arch", default="dinov3_vits16", type=str, metavar="ARCH",
                       help="the size of --model Dinov2 / Dinov3 (dinov2_vitb14, dinov3_vitl16, ...); other models "
                            "ignore it, as upstream")
    model.add_argument("--input_size", default=None, type=int, help=input_size_help())
    model.add_argument("--drop_path", type=float, default=0.2, metavar="PCT", help="stochastic depth rate")
    model.add_argument("--global_pool", action="store_true", help="classify the mean of the patch tokens")
    parser.set_defaults(global_pool=True)
    model.add_argument("--cls_token", action="store_false", dest="global_pool",
                       help="classify the class token instead of the mean of the patch tokens")
    model.add_argument("--finetune", default="", type=str,
                       help="pre-trained weights: a published name (RETFound_mae_meh...), org/repo[/file], or a file")
    model.add_argument("--adaptation", default="finetune", choices=["finetune", "lp"],
                       help="finetune: train everything; lp: linear probe, only `head` trains")
    model.add_argument("--weights_cache_dir", default=None,
                       help="cache of converted weights (default $RETFOUND_MS_CACHE or ~/.cache/retfound_mindspore)")

    training = parser.add_argument_group("training")
    training.add_argument("--batch_size", default=128, type=int,
                          help="batch size per process (effective: batch_size x accum_iter x processes)")
    training.add_argument("--epochs", default=50, type=int, help="training epochs")
    training.add_argument("--accum_iter", default=1, type=int,
                          help="accumulate gradients over this many batches (a larger effective batch in less memory)")
    training.add_argument("--lr", type=float, default=None, metavar="LR",
                          help="absolute learning rate (default: blr x effective batch size / 256)")
    training.add_argument("--blr", type=float, default=5e-3, metavar="LR",
                          help="base learning rate: absolute lr = blr x effective batch size / 256")
    training.add_argument("--layer_decay", type=float, default=0.65, help="layer-wise lr decay (BEiT)")
    training.add_argument("--min_lr", type=float, default=1e-6, metavar="LR", help="the cosine schedule's floor")
    training.add_argument("--warmup_epochs", type=int, default=10, metavar="N", help="epochs of linear lr warm-up")
    training.add_argument("--weight_decay", type=float, default=0.05, help="AdamW's decoupled weight decay")
    training.add_argument("--clip_grad", type=float, default=None, metavar="NORM",
                          help="clip the gradients' global norm (default: no clipping)")
    training.add_argument("--seed", default=0, type=int, help="seed of weights, shuffles and augmentation")
    training.add_argument("--resume", default="",
                          help="with --eval: the checkpoint to evaluate; else the run to continue "
                               "(checkpoint-last.ckpt; a weights-only checkpoint starts afresh from its weights)")
    training.add_argument("--start_epoch", default=0, type=int, metavar="N", help="first epoch of a fresh run")
    training.add_argument("--eval", action="store_true", help="evaluate --resume on the test split only")
    training.add_argument("--dist_eval", action="store_true", default=False,
                          help="under msrun: each process evaluates its slice, metrics computed once")

    augmentation = parser.add_argument_group("augmentation")
    augmentation.add_argument("--aa", type=str, default="rand-m9-mstd0.5-inc1", metavar="NAME",
                              help="timm auto-augment policy: rand-..., augmix-..., original, originalr, v0, v0r, 3a; "
                                   "'' (or 'none') turns it off")
    augmentation.add_argument("--color_jitter", type=float, default=None, metavar="PCT",
                              help="brightness / contrast / saturation jitter, applied only when --aa is ''")
    augmentation.add_argument("--smoothing", type=float, default=0.1,
                              help="label smoothing (applied inside mixup / cutmix, as upstream)")
    augmentation.add_argument("--reprob", type=float, default=0.25, metavar="PCT", help="random erasing probability")
    augmentation.add_argument("--remode", type=str, default="pixel", help="random erasing fill: const, rand, pixel")
    augmentation.add_argument("--recount", type=int, default=1, help="random erasing: up to this many boxes")
    augmentation.add_argument("--resplit", action="store_true", default=False,
                              help="accepted, unused (as upstream)")
    augmentation.add_argument("--mixup", type=float, default=0, help="mixup alpha, mixup enabled if > 0")
    augmentation.add_argument("--cutmix", type=float, default=0, help="cutmix alpha, cutmix enabled if > 0")
    augmentation.add_argument("--cutmix_minmax", type=float, nargs="+", default=None,
                              help="cutmix min / max box ratio (overrides alpha, enables cutmix)")
    augmentation.add_argument("--mixup_prob", type=float, default=1.0,
                              help="probability of mixup or cutmix when either is enabled")
    augmentation.add_argument("--mixup_switch_prob", type=float, default=0.5,
                              help="probability of cutmix instead of mixup when both are enabled")
    augmentation.add_argument("--mixup_mode", type=str, default="batch", help="batch, pair or elem")

    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--output_dir", default="./output_dir", help="folder of every task's outputs")
    outputs.add_argument("--task", default="", type=str, help="this run's sub-folder of --output_dir")
    outputs.add_argument("--log_dir", default="./output_logs",
                         help="TensorBoard scalars go to <log_dir>/<task> (pip install -e \".[tensorboard]\"); '' "
                              "turns them off")
    outputs.add_argument("--bootstrap", default=metrics_lib.BOOTSTRAP_RESAMPLES, type=int,
                         help="resamples of the test images for each metric's 95%% confidence interval "
                              "(metrics_test_ci.csv); 0 turns them off")
    outputs.add_argument("--savemodel", action="store_true", default=True,
                         help="save checkpoints (always on: upstream's flag defaults to True too)")
    outputs.add_argument("--compile_cache_dir", default=None,
                         help="where compiled graphs are kept so the same command does not recompile (default "
                              "$RETFOUND_MS_COMPILE_CACHE or <weights cache>/compile; 'off' turns it off)")

    add_compute_options(parser)
    add_distributed_options(parser)
    unused = parser.add_argument_group("parsed and unused by upstream too (accepted so its commands run unchanged)")
    unused.add_argument("--norm", default="IMAGENET", type=str, help="accepted, unused (as upstream)")
    unused.add_argument("--enhance", action="store_true", default=False, help="accepted, unused (as upstream)")
    unused.add_argument("--datasets_seed", default=2026, type=int, help="accepted, unused (as upstream)")
    return parser


# (flag, low, high, high included): values outside are refused before anything starts
RANGES = [("batch_size", 1, None, True), ("epochs", 1, None, True), ("accum_iter", 1, None, True),
          ("input_size", 1, None, True), ("nb_classes", 1, None, True), ("warmup_epochs", 0, None, True),
          ("lr", 0, None, True), ("blr", 0, None, True), ("min_lr", 0, None, True), ("weight_decay", 0, None, True),
          ("layer_decay", 0, None, True), ("clip_grad", 0, None, True), ("drop_path", 0, 1, False),
          ("smoothing", 0, 1, False), ("reprob", 0, 1, True), ("recount", 1, None, True), ("mixup", 0, None, True),
          ("cutmix", 0, None, True), ("cutmix_minmax", 0, 1, True), ("mixup_prob", 0, 1, True),
          ("mixup_switch_prob", 0, 1, True), ("color_jitter", 0, None, True), ("num_workers", 0, None, True),
          ("bootstrap", 0, None, True), ("start_epoch", 0, None, True)]


def check_args(args: argparse.Namespace) -> None:
    """Every flag within its meaning, in one line naming the flags at fault."""
    check_ranges(args, RANGES)
    problems = []
    try:
        ratio = float(args.dataratio)
    except ValueError:
        ratio = None
    if ratio is None or not 0.0 < ratio <= 1.0:
        # upstream's float() crashes on a list and silently trains on everything outside (0, 1)
        problems.append(f"--dataratio '{args.dataratio}' must be one number in (0, 1] (for a sweep, run once per "
                        "ratio)")
    if args.eval and not args.resume:
        problems.append("--eval needs --resume <checkpoint> (the model to evaluate)")
    config = get_config(resolve_model_name(args.model, args.model_arch))
    if args.input_size is not None and args.input_size % config.patch_size:
        problems.append(f"--input_size {args.input_size} is not a multiple of {config.name}'s patch size "
                        f"{config.patch_size}")
    if problems:
        raise ArgumentError("; ".join(problems))


def main(args: argparse.Namespace, state: RunState) -> int:
    """Check the flags, start the process (device, ranks, seeds), take the task folder, run the task."""
    check_args(args)
    ft.resolve_settings(args)
    start_run(args, os.path.join(ft.task_dir(args), "mindspore"))
    scale_lr(args)
    with run_lock.hold_for_run(ft.task_dir(args), "evaluation" if args.eval else "training", args):
        if distributed.is_main_process(args):
            remove_stale_temporaries(ft.task_dir(args), lambda name: logger.info(
                "removing %s, left by an interrupted run", printable(name)))
        return run_task(args, state)


def run_task(args: argparse.Namespace, state: RunState) -> int:
    """The data, the model, what --resume brings; then --eval's test, or the epochs and the final test."""
    datasets = build_datasets(args, ["test"] if args.eval else ["train", "val", "test"])
    class_names = datasets["test"].classes
    cache = ft.use_compile_cache(args, datasets, fresh_process=ENTRY_SCRIPT)
    model, start = ft.build_model(args)
    train_step = None if args.eval else ft.build_classifier_step(model, args)
    out_dir = ft.evaluation_dir(args) if args.eval else ft.task_dir(args)
    logger.info("RETFound %s (MindSpore %s)\n%s", "evaluation" if args.eval else "fine-tuning", ms.__version__,
                ft.settings_summary(args, datasets, model, start, cache))
    resumed, checkpoint = ft.load_resume(args, model, train_step) if args.resume else (None, None)
    if resumed is not None:
        state.__dict__.update(resumed.__dict__)
        if state.start_epoch >= args.epochs:  # the resumed run trained every epoch already
            if ft.tested(ft.task_dir(args)):
                logger.info("%s already finished: it trained %d of %d epochs and its final test is in %s; nothing to "
                            "do", args.resume, state.start_epoch, args.epochs, ft.task_dir(args))
                return 0
            compile_cache.disable_compile_cache()  # only the test's graph, in another order than the cache holds
    if distributed.is_main_process(args):  # the input is good: from here on the run writes
        os.makedirs(out_dir, exist_ok=True)
        ft.write_json(os.path.join(out_dir, "args.json"), vars(args))
    test_loader = ft.eval_loader(datasets["test"], args)
    if args.eval:
        ft.evaluate_resumed(args, model, test_loader, class_names, checkpoint, len(datasets["test"]))
        return 0
    started = time.time()
    ft.train(args, model, train_step, datasets, class_names, state)
    ft.evaluate_best_on_test(args, model, test_loader, class_names)
    logger.info("Training time %s", datetime.timedelta(seconds=int(time.time() - started)))
    return 0


def run(argv: Optional[List[str]] = None) -> int:
    """Entry point: upstream flags in, outputs written; a clear one-line error and exit 1 for bad input. Started as
    a script, SIGINT / SIGTERM stop it at the next safe point with exit 130 / 143 (process/interrupts.py).

    Args:
        argv: the command line's arguments (default: sys.argv[1:]).

    Returns:
        The exit code.
    """
    args = get_args_parser().parse_args(argv)
    state = RunState(args.start_epoch)
    return run_main(lambda parsed: main(parsed, state), args, [ft.task_dir(args)],
                    lambda signum: stopped_message(state, signum, "" if args.eval else args.resume))


if __name__ == "__main__":
    ENTRY_SCRIPT = True
    sys.exit(run())
