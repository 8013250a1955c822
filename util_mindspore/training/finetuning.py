"""A fine-tuning run and an evaluation, step by step (what main_finetune_mindspore.py reads as its table of
contents): the settings the flags imply, the model and its weights, the compiled step, resuming, upstream's epochs
with checkpoint-best / checkpoint-last, the final test of the best checkpoint, and `--eval` into its own folder.
"""
import argparse
import datetime
import json
import logging
import math
import os
from typing import Dict, List, Optional, Tuple

from mindspore import nn

from util_mindspore.checkpoints import train_checkpoint
from util_mindspore.checkpoints.conversion import checkpoint_file
from util_mindspore.data.datasets import ImageFolder, Loader
from util_mindspore.data.mixup import Mixup
from util_mindspore.errors import WeightError
from util_mindspore.evaluation import figures
from util_mindspore.evaluation import metrics as metrics_lib
from util_mindspore.files.atomic import atomic_write
from util_mindspore.files.names import printable
from util_mindspore.models.compute_policy import apply_policy, policy_for
from util_mindspore.models.factory import create_model, num_params
from util_mindspore.models.weights import load_arrays_into_model
from util_mindspore.process import compile_cache, distributed, interrupts
from util_mindspore.process.seeding import seed_everything
from util_mindspore.registry import get_config, resolve_model_name
from util_mindspore.training import classification
from util_mindspore.training.lr_decay import param_groups_lrd
from util_mindspore.training.run_state import RunState
from util_mindspore.training.tensorboard_log import TensorBoardLog
from util_mindspore.training.train_step import ClassifierLoss, TrainStep, build_train_step, effective_batch_size

logger = logging.getLogger("retfound")


def resolve_settings(args: argparse.Namespace) -> None:
    """The settings the flags imply, set once: the registered model name and the input size (the row's)."""
    args.model = resolve_model_name(args.model, args.model_arch)
    if args.input_size is None:
        args.input_size = get_config(args.model).default_input_size


def task_dir(args: argparse.Namespace) -> str:
    return os.path.join(args.output_dir, args.task)


def tested(folder: str) -> bool:
    """Whether the run in this task folder ended: its final test wrote metrics_test.csv (the run's own outputs
    say so; the benchmark reads this too)."""
    return metrics_lib.count_rows(os.path.join(folder, "metrics_test.csv")) > 0


def evaluation_dir(args: argparse.Namespace) -> str:
    """Where --eval writes: <task>/eval_<checkpoint name>/, so an evaluation never changes a training run's files."""
    stem = os.path.splitext(os.path.basename(args.resume.rstrip("/")))[0] or "checkpoint"
    return os.path.join(task_dir(args), f"eval_{stem}")


def use_compile_cache(args: argparse.Namespace, datasets: Dict[str, ImageFolder], fresh_process: bool) -> Optional[str]:
    """Only in a fresh process (the script as the entry point, or --compile_cache_dir given), never under msrun."""
    wanted = args.mode == "graph" and not args.distributed and (fresh_process or args.compile_cache_dir)
    key = compile_cache.graph_key(args, {name: len(ds) for name, ds in datasets.items()})
    return compile_cache.enable_compile_cache(compile_cache.cache_root(args) if wanted else None, key)


def build_model(args: argparse.Namespace) -> Tuple[nn.Cell, str]:
    """The model with --finetune weights, or the weights its row starts from (not for --eval: --resume brings
    them), its trainable part and precision policy. Returns (model, what it started from).

    --drop_path and --global_pool go only to models that use them: upstream passes no --drop_path to DINOv3's hub
    models, and DINOv2 / DINOv3 classify their class token whatever --global_pool says."""
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
    model = create_model(args.model, pretrained=pretrained, weights_cache_dir=args.weights_cache_dir,
                         img_size=args.input_size, num_classes=args.nb_classes,
                         drop_path_rate=args.drop_path if config.drop_path else None,
                         global_pool=args.global_pool if config.global_pool is not None else None)
    seed_everything(args.seed + args.rank)  # then per-rank randomness, as upstream seeds
    if args.adaptation == "lp":
        for name, param in model.parameters_and_names():
            param.requires_grad = name.startswith("head.")
    apply_policy(model, policy_for(args.amp_level, args.amp_dtype, args.device))
    return model, start


def build_classifier_step(model: nn.Cell, args: argparse.Namespace) -> TrainStep:
    """Upstream's layer-wise decay groups, AdamW (0.9, 0.999), clipping, in the compiled step."""
    lr_scales, weight_decays, _ = param_groups_lrd(model, args.weight_decay, model.no_weight_decay(),
                                                   args.layer_decay)
    return build_train_step(ClassifierLoss(model), model, args, lr_scales, weight_decays, clip_grad=args.clip_grad)


def eval_loader(dataset: ImageFolder, args: argparse.Namespace) -> Loader:
    """Every image once: each rank its slice under --dist_eval, else every rank all of them."""
    return Loader(dataset, args.batch_size, train=False, num_workers=args.num_workers,
                  rank=args.rank if args.dist_eval else 0, world_size=args.world_size if args.dist_eval else 1)


def load_resume(args: argparse.Namespace, model: nn.Cell, train_step: Optional[TrainStep] = None
                ) -> Tuple[Optional[RunState], train_checkpoint.TrainingCheckpoint]:
    """Weights from --resume (our .ckpt, an upstream .pth of any family: weights only); with a train step, also the
    optimizer, loss scale and epoch of a checkpoint-last.ckpt, to continue the run. Returns the RunState (None for
    --eval) and the checkpoint read."""
    path = checkpoint_file(args.resume, args.weights_cache_dir)
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
        state.saved(path, checkpoint.epoch)
    if distributed.is_main_process(args):
        resume_outputs(args, checkpoint)
    logger.info("continuing %s: %d optimizer / loss-scale tensors restored, next epoch %d", args.resume, restored,
                state.start_epoch)
    return state, checkpoint


def resume_outputs(args: argparse.Namespace, checkpoint: train_checkpoint.TrainingCheckpoint) -> None:
    """Cut metrics_val.csv and log.txt back to the rows they had when the checkpoint was saved: a run stopped
    after writing an epoch's rows but before its checkpoint writes them again when resumed, never twice."""
    for name, rows in checkpoint.meta.get("outputs", {}).items():
        metrics_lib.keep_first_rows(os.path.join(task_dir(args), name), int(rows), header=name.endswith(".csv"))


def train(args: argparse.Namespace, model: nn.Cell, train_step: TrainStep, datasets: Dict[str, ImageFolder],
          class_names: List[str], state: RunState) -> None:
    """Upstream's epochs: train, evaluate on val, keep checkpoint-best (by val score) and checkpoint-last."""
    train_loader = Loader(datasets["train"], args.batch_size, train=True, num_workers=args.num_workers,
                          seed=args.seed, rank=args.rank, world_size=args.world_size)
    val_loader = eval_loader(datasets["val"], args)
    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        mixup_fn = Mixup(args.mixup, args.cutmix, args.cutmix_minmax, args.mixup_prob, args.mixup_switch_prob,
                         args.mixup_mode, args.smoothing, args.nb_classes, seed=args.seed + args.rank)
    n_parameters = num_params(model)
    tb_log = TensorBoardLog(args, resumed_at=state.start_epoch if state.resumed_from else 0)
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


def train_epoch(args: argparse.Namespace, model: nn.Cell, train_step: TrainStep, loaders: Tuple[Loader, Loader],
                mixup_fn: Optional[Mixup], tb_log: TensorBoardLog, class_names: List[str], epoch: int,
                n_parameters: int, state: RunState) -> None:
    """One epoch: train, validate, log, then checkpoint-best when the val score improved and checkpoint-last.
    The checkpoints record how many rows the outputs had (resume_outputs)."""
    out_dir = task_dir(args)
    last = os.path.join(out_dir, "checkpoint-last.ckpt")
    train_stats, _ = classification.train_one_epoch(train_step, loaders[0], epoch, args, mixup_fn, tb_log)
    val_stats = classification.evaluate(model, loaders[1], args, "val", class_names, out_dir, epoch, tb_log)
    if not distributed.is_main_process(args):
        state.saved(last, epoch)  # rank 0 saved it (every rank says so if stopped)
        return
    classification.append_log(out_dir, {**{f"train_{k}": v for k, v in train_stats.items()}, "epoch": epoch,
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
    train_checkpoint.save_checkpoint(last, model, train_step, epoch, state.best_score, class_names, args, outputs,
                                     kind="last", extra_meta={"best_epoch": state.best_epoch})
    state.saved(last, epoch)
    with open(os.path.join(out_dir, "log.txt"), encoding="utf-8") as fh:
        figures.save_training_curves(os.path.join(out_dir, "training_curves.png"),
                                     [json.loads(line) for line in fh], best_epoch=state.best_epoch)


def evaluate_best_on_test(args: argparse.Namespace, model: nn.Cell, test_loader: Loader,
                          class_names: List[str]) -> Dict[str, float]:
    """After the last epoch, the best checkpoint on test (every rank reads what rank 0 wrote)."""
    distributed.barrier(args)
    best_path = os.path.join(task_dir(args), "checkpoint-best.ckpt")
    name = "the final weights"
    if os.path.exists(best_path):
        best = train_checkpoint.read_checkpoint(best_path)
        load_arrays_into_model(model, best.weights, source=best_path)
        name = f"checkpoint-best.ckpt, epoch {best.epoch}"
        logger.info("Testing %s (val score %.4f)", name, best.best_score)
    return classification.evaluate(model, test_loader, args, "test", class_names, task_dir(args), checkpoint=name)


def evaluate_resumed(args: argparse.Namespace, model: nn.Cell, test_loader: Loader, class_names: List[str],
                     checkpoint: train_checkpoint.TrainingCheckpoint, test_images: int) -> Dict[str, float]:
    """--eval: the --resume checkpoint on test, into evaluation_dir with evaluation.json naming what was evaluated."""
    out_dir = evaluation_dir(args)
    epoch = f", epoch {checkpoint.epoch}" if checkpoint.epoch is not None else ""
    results = classification.evaluate(model, test_loader, args, "test", class_names, out_dir,
                                      checkpoint=f"{os.path.basename(args.resume)}{epoch}")
    if distributed.is_main_process(args):
        write_json(os.path.join(out_dir, "evaluation.json"), {
            "checkpoint": os.path.abspath(args.resume) if os.path.exists(args.resume) else args.resume,
            "checkpoint_epoch": checkpoint.epoch, "model": args.model, "data_path": args.data_path,
            "test_images": test_images, "evaluated_at": datetime.datetime.now().isoformat("T", "seconds"),
            "metrics": results})
        logger.info("evaluation of %s written to %s", args.resume, out_dir)
    return results


def write_json(path: str, data: dict) -> None:
    """`data` as indented JSON, written whole (atomic_write)."""
    with atomic_write(path, encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, default=str)


def settings_summary(args: argparse.Namespace, datasets: Dict[str, ImageFolder], model: nn.Cell, start: str,
                     cache: Optional[str]) -> str:
    """The settings that matter, one line each (the full arguments are in args.json)."""
    config = model.config
    pooling = "class token" if not getattr(model, "global_pool", False) else "mean of patch tokens (global pool)"
    lines = [f"model      {args.model}: {config.summary}; {num_params(model) / 1e6:.1f}M "
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
