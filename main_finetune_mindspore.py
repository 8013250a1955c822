"""Fine-tune and evaluate RETFound with MindSpore: upstream main_finetune.py's command line and outputs.

    python main_finetune_mindspore.py --model RETFound_mae --finetune RETFound_mae_meh \
        --data_path ./IDRiD --nb_classes 5 --input_size 224 --batch_size 16 --epochs 100 --task IDRiD_ft
    msrun --worker_num=2 --local_worker_num=2 main_finetune_mindspore.py ...     (data parallel)

Outputs in <output_dir>/<task>/: log.txt, metrics_{val,test}.csv, predictions_{val,test}.csv,
confusion_matrix_test.jpg, roc_curves_test.png, training_curves.png, checkpoint-best.ckpt, checkpoint-last.ckpt.
"""
import argparse
import datetime
import json
import logging
import os
import sys
import time


def get_args_parser():
    parser = argparse.ArgumentParser("RETFound fine-tuning for image classification (MindSpore)", add_help=True)
    parser.add_argument("--batch_size", default=128, type=int,
                        help="batch size per device (effective batch size is batch_size * accum_iter * # devices)")
    parser.add_argument("--epochs", default=50, type=int)
    parser.add_argument("--accum_iter", default=1, type=int,
                        help="accumulate gradient iterations (for a larger effective batch size under memory limits)")

    # Model parameters
    parser.add_argument("--model", default="RETFound_mae", type=str, metavar="MODEL", help="name of model to train")
    parser.add_argument("--input_size", default=256, type=int, help="images input size")
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
                        help="color jitter factor (enabled only when not using RandAugment; accepted, unused, "
                             "as upstream)")
    parser.add_argument("--aa", type=str, default="rand-m9-mstd0.5-inc1", metavar="NAME",
                        help="RandAugment policy; '' (or 'none') disables it")
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
                        help="accepted for upstream compatibility (no tensorboard)")
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
    parser.add_argument("--savemodel", action="store_true", default=True, help="save checkpoints (upstream flag)")
    return parser


def check_args(args):
    problems = []
    for flag in ("batch_size", "epochs", "accum_iter", "input_size", "nb_classes"):
        if getattr(args, flag) < 1:
            problems.append(f"--{flag} must be at least 1 (got {getattr(args, flag)})")
    if args.warmup_epochs < 0 or (args.warmup_epochs >= args.epochs and not args.eval):
        problems.append(f"--warmup_epochs {args.warmup_epochs} must be >= 0 and below --epochs {args.epochs}")
    if args.eval and not args.resume:
        problems.append("--eval needs --resume <checkpoint> (the model to evaluate)")
    if problems:
        raise ValueError("; ".join(problems))


_ENTRY_SCRIPT = False  # set when run as `python main_finetune_mindspore.py`

# Flags that only name files: two runs that differ in these alone compile the same graphs.
_NOT_IN_GRAPH = {"output_dir", "log_dir", "task", "finetune", "resume", "weights_cache_dir", "compile_cache_dir",
                 "data_path", "device_id", "dist_url", "start_epoch"}


def compile_cache_root(args):
    """--compile_cache_dir, else $RETFOUND_MS_COMPILE_CACHE, else <weights cache>/compile; 'off' disables it."""
    from util_mindspore.weight_converter import default_cache_dir
    value = args.compile_cache_dir or os.environ.get("RETFOUND_MS_COMPILE_CACHE") or \
        os.path.join(getattr(args, "weights_cache_dir", None) or default_cache_dir(), "compile")
    return None if value.lower() == "off" else value


def load_resume(args, model, train_step):
    """Model (and, to continue training, optimizer / loss scale / epoch / best score) from --resume."""
    from util_mindspore import weight_converter as wc
    if args.resume.endswith(".ckpt") and os.path.isfile(args.resume):
        model_arrays, state_arrays, info = wc.read_ckpt(args.resume)
    else:  # an upstream checkpoint-best.pth: weights only (torch optimizer state is not carried over)
        path = wc.download_and_convert_weights(args.resume, args.weights_cache_dir)
        model_arrays, state_arrays, info = wc.read_ckpt(path)
    report = wc.load_arrays_into_model(model, model_arrays, source=args.resume, keep_head=True)
    if report.reinitialized or report.missing:
        raise wc.WeightError(f"{args.resume} does not fit --model {args.model} --nb_classes {args.nb_classes}: "
                             f"missing {', '.join((report.missing + report.reinitialized)[:4])}")
    print(f"Resume checkpoint {args.resume}: {report}")
    if args.eval or train_step is None:
        return info
    params = {p.name: p for p in train_step.state_parameters()}
    import mindspore as ms
    restored = 0
    for name, array in state_arrays.items():
        if name not in params:
            continue  # e.g. accumulation buffers of a run with another --accum_iter: they start at zero
        param = params[name]
        if array.size != param.size:
            raise wc.WeightError(f"{args.resume}: {name} has shape {array.shape}, this run needs {tuple(param.shape)}")
        # .ckpt files store scalars as shape (1,): reshape to the parameter's own shape
        param.set_data(ms.Tensor(array.reshape(param.shape), dtype=param.dtype))
        restored += 1
    if info.get("epoch") is not None:
        args.start_epoch = info["epoch"] + 1
    print(f"With optim & sched: restored {restored} optimizer / loss-scale tensors; continuing at epoch "
          f"{args.start_epoch}")
    return info


def main(args):
    from mindspore import nn

    import models_vit_mindspore
    from engine_finetune_mindspore import TrainStep, append_log, evaluate, train_one_epoch
    from util_mindspore import device, misc
    from util_mindspore import weight_converter as wc
    from util_mindspore.compute_policy import apply_policy, needs_loss_scaling, policy_for
    from util_mindspore.datasets import Loader, build_datasets
    from util_mindspore.lr_decay import param_groups_lrd
    from util_mindspore.metrics import save_training_curves
    from util_mindspore.mixup import Mixup
    from util_mindspore.optim import AdamW

    check_args(args)
    device.keep_mindspore_files_in(os.path.join(args.output_dir, args.task, "mindspore"))
    device.configure(args)
    misc.init_distributed_mode(args)
    main_process = misc.is_main_process(args)
    if main_process:
        print(f"job dir: {os.path.dirname(os.path.realpath(__file__))}")
        print(f"{args}".replace(", ", ",\n"))
    misc.seed_everything(args.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's)

    splits = ["test"] if args.eval else ["train", "val", "test"]
    datasets = build_datasets(args, splits)
    class_names = datasets[splits[0]].classes
    out_dir = os.path.join(args.output_dir, args.task)
    # The compile cache: by default only when this file is the entry script (a fresh process: MindSpore numbers
    # cached graphs in compile order), never under msrun (ranks would share one directory: untested here).
    use_cache = args.mode == "graph" and not args.distributed and (_ENTRY_SCRIPT or args.compile_cache_dir)
    # the key: every flag that can shape a graph, and the split sizes (they set the last batch's shape)
    key = {k: v for k, v in vars(args).items() if k not in _NOT_IN_GRAPH}
    key["split_sizes"] = {name: len(ds) for name, ds in datasets.items()}
    where = misc.enable_compile_cache(compile_cache_root(args) if use_cache else None, key)
    if main_process and where:
        print(f"compile cache: {where}")
    if main_process:
        os.makedirs(out_dir, exist_ok=True)

    model = models_vit_mindspore.create_model(args.model, pretrained=None if args.eval else args.finetune,
                                              weights_cache_dir=args.weights_cache_dir, img_size=args.input_size,
                                              num_classes=args.nb_classes, drop_path_rate=args.drop_path,
                                              global_pool=args.global_pool)
    misc.seed_everything(args.seed + args.rank)  # then per-rank randomness, as upstream seeds
    if args.adaptation == "lp":
        for name, param in model.parameters_and_names():
            param.requires_grad = name.startswith("head.")
    apply_policy(model, policy_for(args.amp_level, args.amp_dtype, args.device))
    n_parameters = models_vit_mindspore.num_params(model)
    if main_process:
        print(f"Model = {args.model}\nnumber of params (M): {n_parameters / 1e6:.2f}")

    eff_batch_size = args.batch_size * args.accum_iter * args.world_size
    if args.lr is None:
        args.lr = args.blr * eff_batch_size / 256
    if main_process:
        print(f"base lr: {args.lr * 256 / eff_batch_size:.2e}")
        print(f"actual lr: {args.lr:.2e}")
        print(f"accumulate grad iterations: {args.accum_iter}")
        print(f"effective batch size: {eff_batch_size}")

    test_loader = Loader(datasets["test"], args.batch_size, train=False, num_workers=args.num_workers,
                         rank=args.rank if args.dist_eval else 0, world_size=args.world_size if args.dist_eval else 1)
    if args.eval:
        load_resume(args, model, None)
        evaluate(model, test_loader, args, "test", class_names)
        return 0

    lr_scales, weight_decays, _ = param_groups_lrd(model, args.weight_decay, model.no_weight_decay(), args.layer_decay)
    optimizer = AdamW(model.trainable_params(), lr_scales, weight_decays)
    grad_reducer = nn.DistributedGradReducer(optimizer.params, mean=True, degree=args.world_size) \
        if args.distributed else None
    train_step = TrainStep(model, optimizer, clip_grad=args.clip_grad, accum_iter=args.accum_iter,
                           grad_reducer=grad_reducer, loss_scaling=needs_loss_scaling(args.amp_level, args.amp_dtype))
    best_score = -float("inf")
    if args.resume:
        info = load_resume(args, model, train_step)
        if info.get("best_score") is not None:
            best_score = info["best_score"]

    train_loader = Loader(datasets["train"], args.batch_size, train=True, num_workers=args.num_workers,
                          seed=args.seed, rank=args.rank, world_size=args.world_size)
    val_loader = Loader(datasets["val"], args.batch_size, train=False, num_workers=args.num_workers,
                        rank=args.rank if args.dist_eval else 0, world_size=args.world_size if args.dist_eval else 1)
    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        print("Mixup is activated!")
        mixup_fn = Mixup(args.mixup, args.cutmix, args.cutmix_minmax, args.mixup_prob, args.mixup_switch_prob,
                         args.mixup_mode, args.smoothing, args.nb_classes, seed=args.seed + args.rank)

    print(f"Start training for {args.epochs} epochs")
    start_time = time.time()
    log_path = os.path.join(out_dir, "log.txt")
    for epoch in range(args.start_epoch, args.epochs):
        train_stats, _ = train_one_epoch(train_step, train_loader, epoch, args, mixup_fn)
        val_stats = evaluate(model, val_loader, args, "val", class_names, epoch)
        if main_process:
            if val_stats["score"] > best_score:
                best_score = val_stats["score"]
                misc.save_model(os.path.join(out_dir, "checkpoint-best.ckpt"), model, train_step, epoch, best_score,
                                class_names, args)
            misc.save_model(os.path.join(out_dir, "checkpoint-last.ckpt"), model, train_step, epoch, best_score,
                            class_names, args)
            append_log(args, {**{f"train_{k}": v for k, v in train_stats.items()}, "epoch": epoch,
                              "n_parameters": n_parameters, "val_loss": val_stats["val_loss"],
                              "val_accuracy": val_stats["accuracy"], "val_score": val_stats["score"]})
            with open(log_path, encoding="utf-8") as fh:
                save_training_curves(os.path.join(out_dir, "training_curves.png"), [json.loads(line) for line in fh])
    misc.write_weights_digest(model, args)
    misc.barrier(args)  # rank 0 has written checkpoint-best before anyone reads it

    best_path = os.path.join(out_dir, "checkpoint-best.ckpt")
    if os.path.exists(best_path):
        model_arrays, _, info = wc.read_ckpt(best_path)
        wc.load_arrays_into_model(model, model_arrays, source=best_path)
        if main_process:
            print(f"Testing with the best checkpoint (epoch {info.get('epoch')}, "
                  f"val score {info.get('best_score'):.4f})")
    evaluate(model, test_loader, args, "test", class_names)
    total_time = str(datetime.timedelta(seconds=int(time.time() - start_time)))
    if main_process:
        print(f"Training time {total_time}")
    return 0


def run(argv=None):
    """Entry point: upstream flags in, outputs written; a clear one-line error and exit 1 for bad input."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the weight converter's load report
    try:
        return main(args)
    except (ValueError, KeyError, FloatingPointError) as exc:  # DataError / WeightError are ValueErrors
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    _ENTRY_SCRIPT = True
    sys.exit(run())
