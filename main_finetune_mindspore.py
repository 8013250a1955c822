"""Fine-tune and evaluate RETFound with MindSpore: upstream main_finetune.py's command line and outputs.

    python main_finetune_mindspore.py --model RETFound_mae --finetune RETFound_mae_meh \\
        --data_path ./IDRiD --nb_classes 5 --input_size 224 --batch_size 16 --epochs 100 --task IDRiD_ft
    python main_finetune_mindspore.py --eval --resume output_dir/IDRiD_ft/checkpoint-best.ckpt ...   (evaluate)
    msrun --worker_num=2 --local_worker_num=2 main_finetune_mindspore.py ...                         (data parallel)

Outputs in <output_dir>/<task>/: log.txt, metrics_{val,test}.csv, metrics_test_ci.csv, predictions_{val,test}.csv,
confusion_matrix_test.{jpg,pdf}, roc_curves_test.{png,pdf}, training_curves.{png,pdf}, checkpoint-best.ckpt (the
model), checkpoint-last.ckpt (the run's whole state), args.json. --eval writes into <task>/eval_<checkpoint>/.
"""
if __name__ == "__main__":  # first, before MindSpore is imported: signals and MindSpore's log (util_mindspore/cli.py)
    from util_mindspore import cli as _cli

    _cli.prepare_process()

import dataclasses
import datetime
import json
import logging
import math
import os
import sys
import time
from typing import List, Optional

import mindspore as ms
from mindspore import nn

import engine_finetune_mindspore as engine
import models_vit_mindspore
from util_mindspore import compile_cache, device, distributed, figures, interrupts, run_lock, train_checkpoint
from util_mindspore import metrics as metrics_lib
from util_mindspore.atomic_files import atomic_write, remove_stale_temporaries
from util_mindspore.cli import run_main
from util_mindspore.compute_policy import apply_policy, needs_loss_scaling, policy_for
from util_mindspore.conversion import download_and_convert_weights
from util_mindspore.datasets import Loader, build_datasets
from util_mindspore.errors import ArgumentError, WeightError
from util_mindspore.file_names import printable
from util_mindspore.logs import setup_logging
from util_mindspore.lr_decay import param_groups_lrd
from util_mindspore.mixup import Mixup
from util_mindspore.model_registry import get_config, resolve_model_name
from util_mindspore.optim import AdamW
from util_mindspore.run_options import (
    add_compute_options,
    add_distributed_options,
    check_ranges,
    model_choices,
    new_parser,
)
from util_mindspore.seeding import seed_everything
from util_mindspore.tensorboard_log import TensorBoardLog
from util_mindspore.train_step import ClassifierLoss, TrainStep
from util_mindspore.weights import load_arrays_into_model

logger = logging.getLogger("retfound")
ENTRY_SCRIPT = False  # set when run as a script or console entry point: a fresh process may use the compile cache


def get_args_parser():
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
    model.add_argument("--input_size", default=None, type=int,
                       help="image size in pixels (default: 256, upstream's; 224 for DINOv2 models, which upstream "
                            "builds at 224)")
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


def check_args(args):
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


def resolve_settings(args):
    """The settings the flags imply, set once: the registered model name and the input size."""
    args.model = resolve_model_name(args.model, args.model_arch)
    if args.input_size is None:
        args.input_size = get_config(args.model).default_input_size


def setup(args):
    """Device, distributed context, logging and seeds, before any data or model."""
    device.keep_mindspore_files_in(os.path.join(args.output_dir, args.task, "mindspore"))
    args.device, args.amp_level = device.configure(args)
    args.distributed, args.rank, args.world_size = distributed.init_distributed_mode()
    if args.lr is None:  # upstream's scaling by the effective batch size
        args.lr = args.blr * effective_batch_size(args) / 256
    setup_logging(args.rank)
    seed_everything(args.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's)


def use_compile_cache(args, datasets):
    """Only in a fresh process (this file as the entry script, or --compile_cache_dir given), never under msrun."""
    wanted = args.mode == "graph" and not args.distributed and (ENTRY_SCRIPT or args.compile_cache_dir)
    key = compile_cache.graph_key(args, {name: len(ds) for name, ds in datasets.items()})
    return compile_cache.enable_compile_cache(compile_cache.cache_root(args) if wanted else None, key)


def build_model(args):
    """The model with --finetune weights, or the weights its configuration starts from (not for --eval: --resume
    brings them), its trainable part and policy. Returns (model, what it started from)."""
    config = get_config(args.model)
    pretrained, start = None, "random initialisation"
    if not args.eval and args.finetune:
        pretrained = start = args.finetune
    elif not args.eval and config.default_weights:
        # as upstream: timm.create_model(pretrained=True). With --finetune, upstream loads these first and then
        # overwrites every one of them; we skip that download (the same model either way).
        pretrained = config.default_weights
        start = f"{config.default_weights.name} (the model's default weights, as upstream)"
    elif args.eval:
        start = args.resume
    model = models_vit_mindspore.create_model(args.model, pretrained=pretrained,
                                              weights_cache_dir=args.weights_cache_dir, img_size=args.input_size,
                                              num_classes=args.nb_classes, drop_path_rate=args.drop_path,
                                              global_pool=args.global_pool)
    seed_everything(args.seed + args.rank)  # then per-rank randomness, as upstream seeds
    if args.adaptation == "lp":
        for name, param in model.parameters_and_names():
            param.requires_grad = name.startswith("head.")
    apply_policy(model, policy_for(args.amp_level, args.amp_dtype, args.device))
    return model, start


def effective_batch_size(args):
    return args.batch_size * args.accum_iter * args.world_size


def build_train_step(model, args):
    """Upstream's layer-wise decay groups, AdamW, and the compiled step."""
    lr_scales, weight_decays, _ = param_groups_lrd(model, args.weight_decay, model.no_weight_decay(),
                                                   args.layer_decay)
    optimizer = AdamW(model.trainable_params(), lr_scales, weight_decays)
    grad_reducer = nn.DistributedGradReducer(optimizer.params, mean=True, degree=args.world_size) \
        if args.distributed else None
    return TrainStep(ClassifierLoss(model), optimizer, clip_grad=args.clip_grad, accum_iter=args.accum_iter,
                     grad_reducer=grad_reducer, loss_scaling=needs_loss_scaling(args.amp_level, args.amp_dtype))


def eval_loader(dataset, args):
    """Every image once: each rank its slice under --dist_eval, else every rank all of them."""
    return Loader(dataset, args.batch_size, train=False, num_workers=args.num_workers,
                  rank=args.rank if args.dist_eval else 0, world_size=args.world_size if args.dist_eval else 1)


@dataclasses.dataclass
class RunState:
    """Where a training run is: the first epoch to train, the best val score so far, the last epoch saved."""

    start_epoch: int
    best_score: float = -math.inf
    best_epoch: Optional[int] = None
    last_saved_epoch: Optional[int] = None
    resumed_from: Optional[str] = None


def load_resume(args, model, train_step=None):
    """Weights from --resume (our .ckpt, an upstream .pth of any family: weights only); with a train step, also the
    optimizer, loss scale and epoch of a checkpoint-last.ckpt, to continue the run. Returns the RunState (None for
    --eval) and the checkpoint read."""
    path = args.resume if args.resume.endswith(".ckpt") and os.path.isfile(args.resume) else \
        download_and_convert_weights(args.resume, args.weights_cache_dir)
    checkpoint = train_checkpoint.read_checkpoint(path)
    report = load_arrays_into_model(model, checkpoint.weights, source=args.resume, keep_head=True)
    if report.reinitialized:
        head = checkpoint.weights.get("head.weight")
        held = f"its head has {head.shape[0]} classes" if head is not None else "it has no classifier head"
        raise WeightError(f"{args.resume} does not fit --nb_classes {args.nb_classes}: {held}")
    if report.missing:
        raise WeightError(f"{args.resume} does not fit --model {args.model}: it lacks {', '.join(report.missing[:4])}")
    if train_step is None:
        return None, checkpoint
    if not train_checkpoint.holds_training_state(checkpoint):  # checkpoint-best, an upstream .pth, a converted one
        logger.warning("--resume %s holds weights only (no optimizer state): training starts from its weights at "
                       "epoch %d with a fresh optimizer, as upstream; to continue a run, --resume its "
                       "checkpoint-last.ckpt", args.resume, args.start_epoch)
        return RunState(args.start_epoch, resumed_from=args.resume), checkpoint
    restored = train_checkpoint.restore_training_state(checkpoint, train_step, args.resume)
    state = RunState(checkpoint.epoch + 1, checkpoint.best_score if checkpoint.best_score is not None else -math.inf,
                     checkpoint.meta.get("best_epoch"), resumed_from=args.resume)
    if os.path.abspath(path) == os.path.abspath(os.path.join(task_dir(args), "checkpoint-last.ckpt")):
        state.last_saved_epoch = checkpoint.epoch
    if distributed.is_main_process(args):
        resume_outputs(args, checkpoint)
    logger.info("continuing %s: %d optimizer / loss-scale tensors restored, next epoch %d", args.resume, restored,
                state.start_epoch)
    return state, checkpoint


def task_dir(args):
    return os.path.join(args.output_dir, args.task)


def train(args, model, train_step, datasets, class_names, state):
    """Upstream's epochs: train, evaluate on val, keep checkpoint-best (by val score) and checkpoint-last."""
    train_loader = Loader(datasets["train"], args.batch_size, train=True, num_workers=args.num_workers,
                          seed=args.seed, rank=args.rank, world_size=args.world_size)
    val_loader = eval_loader(datasets["val"], args)
    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        mixup_fn = Mixup(args.mixup, args.cutmix, args.cutmix_minmax, args.mixup_prob, args.mixup_switch_prob,
                         args.mixup_mode, args.smoothing, args.nb_classes, seed=args.seed + args.rank)
    n_parameters = models_vit_mindspore.num_params(model)
    tb_log = TensorBoardLog(args)
    if state.start_epoch >= args.epochs:
        logger.info("Nothing to train: the run already reached epoch %d of %d", state.start_epoch, args.epochs)
    elif state.resumed_from and state.start_epoch > 0:
        logger.info("Training epochs %d to %d of %d (resumed from %s)", state.start_epoch, args.epochs - 1,
                    args.epochs, state.resumed_from)
    else:
        logger.info("Start training for %d epochs", args.epochs - state.start_epoch)
    try:
        for epoch in range(state.start_epoch, args.epochs):
            train_epoch(args, model, train_step, (train_loader, val_loader), mixup_fn, tb_log, class_names, epoch,
                        n_parameters, state)
            # a safe point on every rank: the epoch's checkpoint is saved
            interrupts.check(lambda signum: distributed.all_reduce_max(signum, args), where=f"after epoch {epoch}")
    finally:
        tb_log.close()


def train_epoch(args, model, train_step, loaders, mixup_fn, tb_log, class_names, epoch, n_parameters, state):
    """One epoch: train, validate, log, then checkpoint-best when the val score improved and checkpoint-last.
    The checkpoints record how many rows the outputs had (resume_outputs)."""
    out_dir = task_dir(args)
    train_stats, _ = engine.train_one_epoch(train_step, loaders[0], epoch, args, mixup_fn, tb_log)
    val_stats = engine.evaluate(model, loaders[1], args, "val", class_names, out_dir, epoch, tb_log)
    if not distributed.is_main_process(args):
        state.last_saved_epoch = epoch  # rank 0 saved it (every rank says so if stopped)
        return
    engine.append_log(out_dir, {**{f"train_{k}": v for k, v in train_stats.items()}, "epoch": epoch,
                                "n_parameters": n_parameters, "val_loss": val_stats["val_loss"],
                                "val_accuracy": val_stats["accuracy"], "val_score": val_stats["score"]})
    outputs = {"metrics_val.csv": metrics_lib.count_rows(os.path.join(out_dir, "metrics_val.csv")),
               "log.txt": metrics_lib.count_rows(os.path.join(out_dir, "log.txt"), header=False)}
    if val_stats["score"] > state.best_score:
        previous = state.best_score
        state.best_score, state.best_epoch = val_stats["score"], epoch
        train_checkpoint.save_checkpoint(os.path.join(out_dir, "checkpoint-best.ckpt"), model, None, epoch,
                                         state.best_score, class_names, args, outputs, kind="best")
        was = f" (was {previous:.4f})" if math.isfinite(previous) else ""
        logger.info("new best: epoch %d, val score %.4f%s: checkpoint-best.ckpt saved", epoch, state.best_score, was)
    else:
        logger.info("best so far: epoch %s, val score %.4f", state.best_epoch, state.best_score)
    train_checkpoint.save_checkpoint(os.path.join(out_dir, "checkpoint-last.ckpt"), model, train_step, epoch,
                                     state.best_score, class_names, args, outputs, kind="last",
                                     extra_meta={"best_epoch": state.best_epoch})
    state.last_saved_epoch = epoch
    with open(os.path.join(out_dir, "log.txt"), encoding="utf-8") as fh:
        figures.save_training_curves(os.path.join(out_dir, "training_curves.png"),
                                     [json.loads(line) for line in fh], best_epoch=state.best_epoch)


def resume_outputs(args, checkpoint):
    """Cut metrics_val.csv and log.txt back to the rows they had when the checkpoint was saved: a run stopped
    after writing an epoch's rows but before its checkpoint writes them again when resumed, never twice."""
    for name, rows in checkpoint.meta.get("outputs", {}).items():
        metrics_lib.keep_first_rows(os.path.join(task_dir(args), name), int(rows), header=name.endswith(".csv"))


def evaluate_best_on_test(args, model, test_loader, class_names):
    """After the last epoch, the best checkpoint on test (every rank reads what rank 0 wrote)."""
    distributed.barrier(args)
    best_path = os.path.join(task_dir(args), "checkpoint-best.ckpt")
    name = "the final weights"
    if os.path.exists(best_path):
        best = train_checkpoint.read_checkpoint(best_path)
        load_arrays_into_model(model, best.weights, source=best_path)
        name = f"checkpoint-best.ckpt, epoch {best.epoch}"
        logger.info("Testing %s (val score %.4f)", name, best.best_score)
    engine.evaluate(model, test_loader, args, "test", class_names, task_dir(args), checkpoint=name)


def evaluation_dir(args):
    """Where --eval writes: <task>/eval_<checkpoint name>/, so an evaluation never changes a training run's files."""
    stem = os.path.splitext(os.path.basename(args.resume.rstrip("/")))[0] or "checkpoint"
    return os.path.join(task_dir(args), f"eval_{stem}")


def write_json(path, data):
    with atomic_write(path, encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, default=str)


def settings_summary(args, datasets, model, start, cache):
    """The settings that matter, one line each (the full arguments are in args.json)."""
    config = model.config
    pooling = "class token" if not getattr(model, "global_pool", False) else "mean of patch tokens (global pool)"
    lines = [f"model      {args.model}: {config.summary}; {models_vit_mindspore.num_params(model) / 1e6:.1f}M "
             f"trainable parameters; {args.input_size} px; {pooling}",
             f"weights    {start}"]
    for split, dataset in datasets.items():
        counts = ", ".join(f"{printable(c)} {int((dataset.targets == i).sum())}" for i, c in enumerate(dataset.classes))
        lines.append(f"data       {split:<5} {len(dataset):>6} images ({counts})")
    precision = "float32" if args.amp_level == "O0" else f"{args.amp_dtype} matmuls (--amp_level {args.amp_level})"
    lines.append(f"device     {args.device}, {precision}, {args.mode} mode"
                 + (f", {args.world_size} processes" if args.distributed else "")
                 + (f"; compile cache {cache}" if cache else ""))
    if not args.eval:
        processes = f"{args.world_size} process{'es' if args.world_size > 1 else ''}"
        lines.append(f"training   {args.epochs} epochs (warm-up {args.warmup_epochs}), batch {args.batch_size} x "
                     f"{args.accum_iter} accumulation x {processes} = {effective_batch_size(args)}, "
                     f"lr {args.lr:.3g} (blr {args.blr:g}), layer decay {args.layer_decay:g}, "
                     f"{'linear probe' if args.adaptation == 'lp' else 'full fine-tuning'}")
    out = evaluation_dir(args) if args.eval else task_dir(args)
    lines.append(f"outputs    {out}/ (every argument in args.json)")
    return "\n".join(lines)


def main(args) -> int:
    check_args(args)
    resolve_settings(args)
    setup(args)
    with run_lock.hold_for_run(task_dir(args), "evaluation" if args.eval else "training", args):
        if distributed.is_main_process(args):
            remove_stale_temporaries(task_dir(args), lambda name: logger.info(
                "removing %s, left by an interrupted run", printable(name)))
        return run_task(args)


def run_task(args) -> int:
    datasets = build_datasets(args, ["test"] if args.eval else ["train", "val", "test"])
    class_names = datasets["test"].classes
    cache = use_compile_cache(args, datasets)
    model, start = build_model(args)
    train_step = None if args.eval else build_train_step(model, args)
    out_dir = evaluation_dir(args) if args.eval else task_dir(args)
    logger.info("RETFound %s (MindSpore %s)\n%s", "evaluation" if args.eval else "fine-tuning", ms.__version__,
                settings_summary(args, datasets, model, start, cache))
    state, checkpoint = load_resume(args, model, train_step) if args.resume else (RunState(args.start_epoch), None)
    if distributed.is_main_process(args):  # the input is good: from here on the run writes
        os.makedirs(out_dir, exist_ok=True)
        write_json(os.path.join(out_dir, "args.json"), vars(args))
    test_loader = eval_loader(datasets["test"], args)
    if args.eval:
        epoch = f", epoch {checkpoint.epoch}" if checkpoint.epoch is not None else ""
        results = engine.evaluate(model, test_loader, args, "test", class_names, out_dir,
                                  checkpoint=f"{os.path.basename(args.resume)}{epoch}")
        if distributed.is_main_process(args):
            write_json(os.path.join(out_dir, "evaluation.json"), {
                "checkpoint": os.path.abspath(args.resume) if os.path.exists(args.resume) else args.resume,
                "checkpoint_epoch": checkpoint.epoch, "model": args.model, "data_path": args.data_path,
                "test_images": len(datasets["test"]), "evaluated_at": datetime.datetime.now().isoformat("T", "seconds"),
                "metrics": results})
            logger.info("evaluation of %s written to %s", args.resume, out_dir)
        return 0
    started = time.time()
    try:
        train(args, model, train_step, datasets, class_names, state)
    finally:
        args.last_saved_epoch = state.last_saved_epoch  # what the stop message names (stopped_message)
    evaluate_best_on_test(args, model, test_loader, class_names)
    logger.info("Training time %s", datetime.timedelta(seconds=int(time.time() - started)))
    return 0


def stopped_message(args, signum):
    """One line: where the last complete checkpoint is and how to go on from it."""
    last = os.path.join(task_dir(args), "checkpoint-last.ckpt")
    epoch = getattr(args, "last_saved_epoch", None)  # known in memory: reading a ViT-L checkpoint takes seconds
    name = interrupts.signal_name(signum)
    if epoch is None and args.resume and not args.eval:
        return f"stopped by {name} before this run saved a checkpoint: run the same command again (--resume " \
               f"{args.resume})"
    if epoch is None:
        return f"stopped by {name} before any checkpoint was saved: run the command again to start over"
    return (f"stopped by {name}: the last complete checkpoint is {last} (epoch {epoch}); to continue, run the same "
            f"command with --resume {last}")


def run(argv: Optional[List[str]] = None) -> int:
    """Entry point: upstream flags in, outputs written; a clear one-line error and exit 1 for bad input. Started as
    a script, SIGINT / SIGTERM stop it at the next safe point with exit 130 / 143 (util_mindspore/interrupts.py)."""
    args = get_args_parser().parse_args(argv)
    return run_main(main, args, [task_dir(args)], lambda signum: stopped_message(args, signum))


if __name__ == "__main__":
    ENTRY_SCRIPT = True
    sys.exit(run())
