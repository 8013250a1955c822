"""Fine-tune and evaluate RETFound with MindSpore: upstream main_finetune.py's command line and outputs.

    python main_finetune_mindspore.py --model RETFound_mae --finetune RETFound_mae_meh \
        --data_path ./IDRiD --nb_classes 5 --input_size 224 --batch_size 16 --epochs 100 --task IDRiD_ft
    msrun --worker_num=2 --local_worker_num=2 main_finetune_mindspore.py ...     (data parallel)

Outputs in <output_dir>/<task>/: log.txt, metrics_{val,test}.csv, predictions_{val,test}.csv,
confusion_matrix_test.jpg, roc_curves_test.png, training_curves.png, checkpoint-best.ckpt, checkpoint-last.ckpt.
"""
if __name__ == "__main__":  # first, before importing MindSpore starts its threads: util_mindspore/interrupts.py
    from util_mindspore import interrupts as _interrupts

    _interrupts.block_signals()

import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import sys
import time
from typing import List, Optional

from mindspore import nn

import engine_finetune_mindspore as engine
import models_vit_mindspore
from util_mindspore import compile_cache, device, distributed, interrupts, train_checkpoint
from util_mindspore import metrics as metrics_lib
from util_mindspore.compute_policy import apply_policy, needs_loss_scaling, policy_for
from util_mindspore.conversion import download_and_convert_weights
from util_mindspore.datasets import Loader, build_datasets
from util_mindspore.errors import WeightError, exit_code
from util_mindspore.logs import setup_logging
from util_mindspore.lr_decay import param_groups_lrd
from util_mindspore.metrics import save_training_curves
from util_mindspore.mixup import Mixup
from util_mindspore.optim import AdamW
from util_mindspore.seeding import seed_everything
from util_mindspore.tensorboard_log import TensorBoardLog
from util_mindspore.weights import load_arrays_into_model

logger = logging.getLogger("retfound")
_ENTRY_SCRIPT = False  # set when run as `python main_finetune_mindspore.py`: a fresh process may use the compile cache


def get_args_parser():
    parser = argparse.ArgumentParser("RETFound fine-tuning for image classification (MindSpore)", add_help=True)
    parser.add_argument("--batch_size", default=128, type=int,
                        help="batch size per device (effective batch size is batch_size * accum_iter * # devices)")
    parser.add_argument("--epochs", default=50, type=int)
    parser.add_argument("--accum_iter", default=1, type=int,
                        help="accumulate gradient iterations (for a larger effective batch size under memory limits)")

    # Model parameters
    parser.add_argument("--model", default="RETFound_mae", type=str, metavar="MODEL", help="name of model to train")
    parser.add_argument("--model_arch", default="dinov3_vits16", type=str, metavar="MODEL_ARCH",
                        help="the size of --model Dinov2 (dinov2_vits14, _vitb14, _vitl14, _vitg14); other models "
                             "ignore it, as upstream")
    parser.add_argument("--input_size", default=None, type=int,
                        help="images input size (default: 256, upstream's; 224 for DINOv2 models, which upstream "
                             "builds at 224)")
    parser.add_argument("--drop_path", type=float, default=0.2, metavar="PCT", help="drop path rate")
    parser.add_argument("--global_pool", action="store_true")
    parser.set_defaults(global_pool=True)
    parser.add_argument("--cls_token", action="store_false", dest="global_pool",
                        help="use class token instead of global pool for classification")

    # Optimizer parameters
    parser.add_argument("--clip_grad", type=float, default=None, metavar="NORM",
                        help="clip gradient norm (default: none)")
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=None, metavar="LR", help="learning rate (absolute lr)")
    parser.add_argument("--blr", type=float, default=5e-3, metavar="LR",
                        help="base learning rate: absolute_lr = base_lr * total_batch_size / 256")
    parser.add_argument("--layer_decay", type=float, default=0.65, help="layer-wise lr decay from ELECTRA/BEiT")
    parser.add_argument("--min_lr", type=float, default=1e-6, metavar="LR", help="lower lr bound for cyclic schedulers")
    parser.add_argument("--warmup_epochs", type=int, default=10, metavar="N", help="epochs to warmup LR")

    # Augmentation parameters
    parser.add_argument("--color_jitter", type=float, default=None, metavar="PCT",
                        help="color jitter factor: brightness, contrast and saturation, applied only when --aa is ''")
    parser.add_argument("--aa", type=str, default="rand-m9-mstd0.5-inc1", metavar="NAME",
                        help="timm auto-augment policy: rand-..., augmix-..., original, originalr, v0, v0r, 3a; "
                             "'' (or 'none') disables it")
    parser.add_argument("--smoothing", type=float, default=0.1, help="label smoothing (applied inside mixup/cutmix)")
    parser.add_argument("--reprob", type=float, default=0.25, metavar="PCT", help="random erase prob")
    parser.add_argument("--remode", type=str, default="pixel", help="random erase mode")
    parser.add_argument("--recount", type=int, default=1, help="random erase count")
    parser.add_argument("--resplit", action="store_true", default=False,
                        help="do not random erase first (clean) augmentation split (accepted, unused, as upstream)")
    parser.add_argument("--mixup", type=float, default=0, help="mixup alpha, mixup enabled if > 0")
    parser.add_argument("--cutmix", type=float, default=0, help="cutmix alpha, cutmix enabled if > 0")
    parser.add_argument("--cutmix_minmax", type=float, nargs="+", default=None,
                        help="cutmix min/max ratio, overrides alpha and enables cutmix if set")
    parser.add_argument("--mixup_prob", type=float, default=1.0,
                        help="probability of performing mixup or cutmix when either/both is enabled")
    parser.add_argument("--mixup_switch_prob", type=float, default=0.5,
                        help="probability of switching to cutmix when both mixup and cutmix enabled")
    parser.add_argument("--mixup_mode", type=str, default="batch",
                        help='how to apply mixup/cutmix: "batch", "pair", "elem"')

    # Fine-tuning parameters
    parser.add_argument("--finetune", default="", type=str,
                        help="pretrained weights: a published name (RETFound_mae_meh...), org/repo[/file], or a file")
    parser.add_argument("--task", default="", type=str, help="sub-folder of output_dir for this run's outputs")
    parser.add_argument("--adaptation", default="finetune", choices=["finetune", "lp"],
                        help="finetune: train everything; lp: linear probe, only `head` trains")

    # Dataset parameters
    parser.add_argument("--data_path", default="./data/", type=str, help="dataset path (train/ val/ test/ inside)")
    parser.add_argument("--nb_classes", default=8, type=int, help="number of the classification types")
    parser.add_argument("--output_dir", default="./output_dir", help="path where to save")
    parser.add_argument("--log_dir", default="./output_logs",
                        help="TensorBoard scalars go to <log_dir>/<task> (needs tensorboardX: pip install -e "
                             "\".[tensorboard]\"); '' turns them off")
    parser.add_argument("--dataratio", type=str, default="1.0",
                        help="train on this fraction of the training split, in (0, 1]: the same images as upstream "
                             "for the same --seed")
    parser.add_argument("--stratified", action="store_true",
                        help="with --dataratio: keep the fraction within every class (class proportions kept)")
    parser.add_argument("--device", default=None,
                        help="CPU, GPU (also upstream's cuda, cuda:N) or Ascend (npu, npu:N); default: the device "
                             "this MindSpore installation targets")
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--resume", default="", help="resume from checkpoint (our .ckpt or an upstream .pth)")
    parser.add_argument("--start_epoch", default=0, type=int, metavar="N", help="start epoch")
    parser.add_argument("--eval", action="store_true", help="perform evaluation only")
    parser.add_argument("--dist_eval", action="store_true", default=False,
                        help="distributed evaluation: each process evaluates its shard, metrics computed once")
    parser.add_argument("--num_workers", default=10, type=int, help="image decoding threads")
    parser.add_argument("--check_images", action="store_true",
                        help="decode every image before training (start-up reads headers only; an image that "
                             "cannot be decoded otherwise stops the run when it is reached)")
    parser.add_argument("--pin_mem", action="store_true", help="accepted for upstream compatibility")
    parser.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")
    parser.set_defaults(pin_mem=True)

    # distributed training parameters (msrun sets the real values; these are accepted for compatibility)
    parser.add_argument("--world_size", default=1, type=int, help="number of distributed processes (set by msrun)")
    parser.add_argument("--local_rank", default=-1, type=int)
    parser.add_argument("--dist_on_itp", action="store_true")
    parser.add_argument("--dist_url", default="env://", help="accepted for compatibility; msrun sets the rendezvous")

    # MindSpore-specific
    parser.add_argument("--weights_cache_dir", default=None,
                        help="cache of converted weights (default $RETFOUND_MS_CACHE or ~/.cache/retfound_mindspore)")
    parser.add_argument("--amp_level", default="auto", choices=["O0", "O1", "O2", "O3", "auto"],
                        help="mixed precision (util_mindspore/compute_policy.py); O2 = torch.cuda.amp.autocast; "
                             "auto: O0 on CPU (float16 is slower there), O2 on GPU/Ascend")
    parser.add_argument("--amp_dtype", default="float16", choices=["float16", "bfloat16"],
                        help="reduced precision type of O1-O3; bfloat16 (Ascend 910B, recent GPUs) trains without "
                             "loss scaling")
    parser.add_argument("--jit_level", default=None, choices=["O0", "O1", "O2"],
                        help="MindSpore's JitConfig level (O2: whole-graph sink, Ascend only); default: MindSpore's "
                             "own choice per device")
    parser.add_argument("--mode", default="graph", choices=["graph", "pynative"], help="MindSpore execution mode")
    parser.add_argument("--compile_cache_dir", default=None,
                        help="where compiled graphs are kept so the same command does not recompile (default "
                             "$RETFOUND_MS_COMPILE_CACHE or <weights cache>/compile; 'off' disables it)")
    parser.add_argument("--savemodel", action="store_true", default=True,
                        help="save checkpoints (always on: upstream's flag defaults to True too)")
    # parsed and unused by upstream too; accepted so its commands run unchanged
    parser.add_argument("--norm", default="IMAGENET", type=str, help="accepted, unused (as upstream)")
    parser.add_argument("--enhance", action="store_true", default=False, help="accepted, unused (as upstream)")
    parser.add_argument("--datasets_seed", default=2026, type=int, help="accepted, unused (as upstream)")
    return parser


def check_args(args):
    args.model = models_vit_mindspore.resolve_model_name(args.model, args.model_arch)
    if args.input_size is None:
        args.input_size = models_vit_mindspore.default_input_size(args.model)
    problems = []
    for flag in ("batch_size", "epochs", "accum_iter", "input_size", "nb_classes"):
        if getattr(args, flag) < 1:
            problems.append(f"--{flag} must be at least 1 (got {getattr(args, flag)})")
    if args.warmup_epochs < 0:  # warm-up as long as the run or longer is allowed, as upstream: lr stays in warm-up
        problems.append(f"--warmup_epochs {args.warmup_epochs} must be >= 0")
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
    if problems:
        raise ValueError("; ".join(problems))


def setup(args):
    """Device, distributed context, logging and seeds, before any data or model."""
    device.keep_mindspore_files_in(os.path.join(args.output_dir, args.task, "mindspore"))
    device.configure(args)
    distributed.init_distributed_mode(args)
    setup_logging(args.rank)
    logger.info("job dir: %s", os.path.dirname(os.path.realpath(__file__)))
    logger.info("%s", f"{args}".replace(", ", ",\n"))
    seed_everything(args.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's)


def use_compile_cache(args, datasets):
    """Only in a fresh process (this file as the entry script, or --compile_cache_dir given), never under msrun."""
    wanted = args.mode == "graph" and not args.distributed and (_ENTRY_SCRIPT or args.compile_cache_dir)
    key = compile_cache.graph_key(args, {name: len(ds) for name, ds in datasets.items()})
    where = compile_cache.enable_compile_cache(compile_cache.cache_root(args) if wanted else None, key)
    if where:
        logger.info("compile cache: %s", where)


def build_model(args):
    """The model with --finetune weights, or the model's default ones (not for --eval: --resume brings them), its
    trainable part and policy."""
    pretrained = None if args.eval else args.finetune
    if not args.eval and not args.finetune and models_vit_mindspore.default_pretrained(args.model):
        # as upstream: timm.create_model(pretrained=True). With --finetune, upstream loads these first and then
        # overwrites every one of them; we skip that download (the same model either way).
        pretrained = models_vit_mindspore.default_pretrained(args.model)
        logger.info("%s without --finetune: starting from %s, as upstream", args.model, pretrained)
    model = models_vit_mindspore.create_model(args.model, pretrained=pretrained,
                                              weights_cache_dir=args.weights_cache_dir, img_size=args.input_size,
                                              num_classes=args.nb_classes, drop_path_rate=args.drop_path,
                                              global_pool=args.global_pool)
    seed_everything(args.seed + args.rank)  # then per-rank randomness, as upstream seeds
    if args.adaptation == "lp":
        for name, param in model.parameters_and_names():
            param.requires_grad = name.startswith("head.")
    apply_policy(model, policy_for(args.amp_level, args.amp_dtype, args.device))
    logger.info("Model = %s\nnumber of params (M): %.2f", args.model, models_vit_mindspore.num_params(model) / 1e6)
    return model


def build_train_step(model, args):
    """Upstream's lr scaling and layer-wise decay groups, AdamW, and the compiled step."""
    eff_batch_size = args.batch_size * args.accum_iter * args.world_size
    if args.lr is None:
        args.lr = args.blr * eff_batch_size / 256
    logger.info("base lr: %.2e", args.lr * 256 / eff_batch_size)
    logger.info("actual lr: %.2e", args.lr)
    logger.info("accumulate grad iterations: %d", args.accum_iter)
    logger.info("effective batch size: %d", eff_batch_size)
    lr_scales, weight_decays, groups = param_groups_lrd(model, args.weight_decay, model.no_weight_decay(),
                                                        args.layer_decay)
    logger.debug("parameter groups: %s", json.dumps(groups, indent=2))
    optimizer = AdamW(model.trainable_params(), lr_scales, weight_decays)
    grad_reducer = nn.DistributedGradReducer(optimizer.params, mean=True, degree=args.world_size) \
        if args.distributed else None
    return engine.TrainStep(model, optimizer, clip_grad=args.clip_grad, accum_iter=args.accum_iter,
                            grad_reducer=grad_reducer, loss_scaling=needs_loss_scaling(args.amp_level, args.amp_dtype))


def eval_loader(dataset, args):
    """Every image once: each rank its slice under --dist_eval, else every rank all of them."""
    return Loader(dataset, args.batch_size, train=False, num_workers=args.num_workers,
                  rank=args.rank if args.dist_eval else 0, world_size=args.world_size if args.dist_eval else 1)


def resume(args, model, train_step=None):
    """Weights from --resume (our .ckpt, or an upstream .pth: weights only); with a train step, also the optimizer,
    loss scale and epoch, to continue the run. Returns the best validation score so far."""
    path = args.resume
    if not (path.endswith(".ckpt") and os.path.isfile(path)):
        path = download_and_convert_weights(path, args.weights_cache_dir)
    checkpoint = train_checkpoint.read_checkpoint(path)
    report = load_arrays_into_model(model, checkpoint.weights, source=args.resume, keep_head=True)
    if report.reinitialized or report.missing:
        raise WeightError(f"{args.resume} does not fit --model {args.model} --nb_classes {args.nb_classes}: "
                          f"missing {', '.join((report.missing + report.reinitialized)[:4])}")
    logger.info("Resume checkpoint %s: %s", args.resume, report)
    if train_step is None:
        return None
    if not train_checkpoint.is_training_checkpoint(checkpoint):  # an upstream .pth, a converted checkpoint
        logger.warning("Resume %s: not one of our training checkpoints: weights only, training starts at epoch %d",
                       args.resume, args.start_epoch)
        return None
    restored = train_checkpoint.restore_training_state(checkpoint, train_step, args.resume)
    args.start_epoch = checkpoint.epoch + 1
    if os.path.abspath(path) == os.path.abspath(os.path.join(args.output_dir, args.task, "checkpoint-last.ckpt")):
        args.last_saved_epoch = checkpoint.epoch
    if distributed.is_main_process(args):
        resume_outputs(args, checkpoint)
    logger.info("With optim & sched: restored %d optimizer / loss-scale tensors; continuing at epoch %d",
                restored, args.start_epoch)
    return checkpoint.best_score


def train(args, model, train_step, datasets, class_names, best_score):
    """Upstream's epochs: train, evaluate on val, keep checkpoint-best (by val score) and checkpoint-last."""
    train_loader = Loader(datasets["train"], args.batch_size, train=True, num_workers=args.num_workers,
                          seed=args.seed, rank=args.rank, world_size=args.world_size)
    val_loader = eval_loader(datasets["val"], args)
    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        logger.info("Mixup is activated!")
        mixup_fn = Mixup(args.mixup, args.cutmix, args.cutmix_minmax, args.mixup_prob, args.mixup_switch_prob,
                         args.mixup_mode, args.smoothing, args.nb_classes, seed=args.seed + args.rank)
    n_parameters = models_vit_mindspore.num_params(model)
    tb_log = TensorBoardLog(args)
    logger.info("Start training for %d epochs", args.epochs)
    try:
        for epoch in range(args.start_epoch, args.epochs):
            best_score = train_epoch(args, model, train_step, (train_loader, val_loader), mixup_fn, tb_log,
                                     class_names, epoch, n_parameters, best_score)
            args.last_saved_epoch = epoch  # rank 0 saved it (every rank says so if stopped)
            # a safe point on every rank: the epoch's checkpoint is saved
            interrupts.check(lambda signum: distributed.all_reduce_max(signum, args))
    finally:
        tb_log.close()


def train_epoch(args, model, train_step, loaders, mixup_fn, tb_log, class_names, epoch, n_parameters, best_score):
    """One epoch: train, validate, log, then checkpoint-best when the val score improved and checkpoint-last.
    Returns the best val score so far. The checkpoints record how many rows the outputs had (resume_outputs)."""
    out_dir = os.path.join(args.output_dir, args.task)
    train_stats, _ = engine.train_one_epoch(train_step, loaders[0], epoch, args, mixup_fn, tb_log)
    val_stats = engine.evaluate(model, loaders[1], args, "val", class_names, epoch, tb_log)
    if not distributed.is_main_process(args):
        return best_score
    engine.append_log(args, {**{f"train_{k}": v for k, v in train_stats.items()}, "epoch": epoch,
                             "n_parameters": n_parameters, "val_loss": val_stats["val_loss"],
                             "val_accuracy": val_stats["accuracy"], "val_score": val_stats["score"]})
    outputs = {"metrics_val.csv": metrics_lib.count_rows(os.path.join(out_dir, "metrics_val.csv")),
               "log.txt": metrics_lib.count_rows(os.path.join(out_dir, "log.txt"), header=False)}
    if val_stats["score"] > best_score:
        best_score = val_stats["score"]
        train_checkpoint.save_checkpoint(os.path.join(out_dir, "checkpoint-best.ckpt"), model, train_step, epoch,
                                         best_score, class_names, args, outputs)
    train_checkpoint.save_checkpoint(os.path.join(out_dir, "checkpoint-last.ckpt"), model, train_step, epoch,
                                     best_score, class_names, args, outputs)
    args.last_saved_epoch = epoch
    with open(os.path.join(out_dir, "log.txt"), encoding="utf-8") as fh:
        save_training_curves(os.path.join(out_dir, "training_curves.png"), [json.loads(line) for line in fh])
    return best_score


def resume_outputs(args, checkpoint):
    """Cut metrics_val.csv and log.txt back to the rows they had when the checkpoint was saved: a run stopped
    after writing an epoch's rows but before its checkpoint writes them again when resumed, never twice."""
    out_dir = os.path.join(args.output_dir, args.task)
    for name, rows in checkpoint.meta.get("outputs", {}).items():
        metrics_lib.keep_first_rows(os.path.join(out_dir, name), int(rows), header=name.endswith(".csv"))


def remove_stale_temporaries(out_dir):
    """Temporary files a crashed or killed run left in the task folder: never read, removed here."""
    if not os.path.isdir(out_dir):
        return
    for name in os.listdir(out_dir):
        if name.endswith((".partial", ".partial.ckpt")):
            logger.info("removing %s, left by an interrupted run", name)
            with contextlib.suppress(OSError):
                os.remove(os.path.join(out_dir, name))


def evaluate_best_on_test(args, model, test_loader, class_names):
    """After the last epoch, the best checkpoint on test (every rank reads what rank 0 wrote)."""
    distributed.barrier(args)
    best_path = os.path.join(args.output_dir, args.task, "checkpoint-best.ckpt")
    if os.path.exists(best_path):
        best = train_checkpoint.read_checkpoint(best_path)
        load_arrays_into_model(model, best.weights, source=best_path)
        logger.info("Testing with the best checkpoint (epoch %s, val score %.4f)", best.epoch, best.best_score)
    engine.evaluate(model, test_loader, args, "test", class_names)


def main(args) -> int:
    check_args(args)
    setup(args)
    datasets = build_datasets(args, ["test"] if args.eval else ["train", "val", "test"])
    class_names = datasets["test"].classes
    use_compile_cache(args, datasets)
    if distributed.is_main_process(args):
        os.makedirs(os.path.join(args.output_dir, args.task), exist_ok=True)
        remove_stale_temporaries(os.path.join(args.output_dir, args.task))
    model = build_model(args)
    test_loader = eval_loader(datasets["test"], args)
    if args.eval:
        resume(args, model)
        engine.evaluate(model, test_loader, args, "test", class_names)
        return 0

    train_step = build_train_step(model, args)
    best_score = resume(args, model, train_step) if args.resume else None
    start_time = time.time()
    train(args, model, train_step, datasets, class_names, -math.inf if best_score is None else best_score)
    evaluate_best_on_test(args, model, test_loader, class_names)
    logger.info("Training time %s", datetime.timedelta(seconds=int(time.time() - start_time)))
    return 0


def stopped_message(args, signum):
    """One line: where the last complete checkpoint is and how to go on from it."""
    last = os.path.join(args.output_dir, args.task, "checkpoint-last.ckpt")
    epoch = getattr(args, "last_saved_epoch", None)  # known in memory: reading a ViT-L checkpoint takes seconds
    name = interrupts.signal_name(signum)
    if epoch is None and args.resume:
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
    setup_logging()
    task_dir = os.path.join(args.output_dir, args.task)
    existed = os.path.isdir(task_dir)
    try:
        code = exit_code(main, args)
    except interrupts.StopRequested as stop:
        print(stopped_message(args, stop.signum), file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        if not interrupts.active():
            raise
        signum = interrupts.requested() or interrupts.signal.SIGINT
        print(stopped_message(args, signum), file=sys.stderr)
        return interrupts.EXIT_CODES[signum]
    if code and not existed:
        remove_empty_folders(task_dir)
    return code


def remove_empty_folders(folder):
    """A run that stopped on its input leaves no empty task folder behind (nor MindSpore's empty one inside)."""
    for dirpath, _, _ in sorted(os.walk(folder), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)  # only succeeds when empty


if __name__ == "__main__":
    _ENTRY_SCRIPT = True
    sys.exit(run())
