"""MAE pre-training on your own unlabelled images (upstream main_pretrain.py's command line and recipe, MindSpore).

    python main_pretrain_mindspore.py --data_path ./unlabelled --pretrained RETFound_mae_meh --epochs 50 \\
        --batch_size 64 --blr 1.5e-4 --norm_pix_loss --output_dir ./pretrain_out     (continue RETFound's)
    msrun --worker_num=8 --local_worker_num=8 main_pretrain_mindspore.py ...             (data parallel)

--data_path is any folder of images (searched recursively; upstream's `<data_path>/train/<class>/` too). Outputs in
--output_dir: checkpoint-<epoch>.ckpt every --save_every epochs and at the end (each a valid --finetune for
main_finetune_mindspore.py, and --resume for predict / export --embeddings), log.txt (train_loss, train_lr, epoch),
reconstructions/epoch_<N>.png (what the model reconstructs of a few fixed images), args.json.
"""
if __name__ == "__main__":  # first, before MindSpore is imported: signals and MindSpore's log (util_mindspore/cli.py)
    from util_mindspore import cli as _cli

    _cli.prepare_process()

import datetime
import json
import logging
import os
import sys
import time
from typing import List, Optional

import mindspore as ms
import numpy as np
from mindspore import nn
from PIL import Image

import engine_pretrain_mindspore as engine
import models_vit_mindspore
from models_mae_mindspore import reconstruction_panels
from util_mindspore import device, distributed, figures, interrupts, run_lock, train_checkpoint
from util_mindspore.atomic_files import (
    append_whole,
    atomic_write,
    remove_stale_temporaries,
)
from util_mindspore.cli import run_main
from util_mindspore.compute_policy import apply_policy, needs_loss_scaling, policy_for
from util_mindspore.conversion import download_and_convert_weights
from util_mindspore.datasets import Loader, UnlabelledImages
from util_mindspore.errors import ArgumentError
from util_mindspore.logs import setup_logging
from util_mindspore.lr_decay import param_groups_weight_decay
from util_mindspore.model_registry import MODEL_CONFIGS, get_config
from util_mindspore.optim import AdamW
from util_mindspore.run_options import add_compute_options, add_distributed_options, check_ranges, new_parser
from util_mindspore.seeding import seed_everything
from util_mindspore.tensorboard_log import TensorBoardLog
from util_mindspore.train_step import MaeLoss, TrainStep
from util_mindspore.transforms import EvalTransform, PretrainTransform
from util_mindspore.weights import load_arrays_into_model

logger = logging.getLogger("retfound")
ENTRY_SCRIPT = False
MAE_MODELS = sorted(name for name, config in MODEL_CONFIGS.items() if config.architecture == "mae")


def get_args_parser():
    parser = new_parser(__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data")
    data.add_argument("--data_path", default="./data/", help="a folder of unlabelled images, any layout (recursive)")
    data.add_argument("--num_workers", default=10, type=int, help="image decoding threads")
    data.add_argument("--check_images", action="store_true", help="decode every image before training")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="mae_vit_large_patch16", metavar="MODEL",
                       help=f"one of: {', '.join(MAE_MODELS)}")
    model.add_argument("--input_size", default=224, type=int, help="image size in pixels")
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


def check_args(args):
    check_ranges(args, RANGES)
    if args.model not in MAE_MODELS:
        raise ArgumentError(f"--model {args.model}: choose an MAE model: {', '.join(MAE_MODELS)}")
    config = get_config(args.model)
    problems = []
    if args.input_size % config.patch_size:
        problems.append(f"--input_size {args.input_size} is not a multiple of the patch size {config.patch_size}")
    grid = (args.input_size // config.patch_size) ** 2
    if int(grid * (1 - args.mask_ratio)) < 1:
        problems.append(f"--mask_ratio {args.mask_ratio} keeps no patch of the {grid}")
    if args.pretrained and args.resume:
        problems.append("--pretrained and --resume: give one (--resume continues a run, --pretrained starts one)")
    if problems:
        raise ArgumentError("; ".join(problems))


def setup(args):
    device.keep_mindspore_files_in(os.path.join(args.output_dir, "mindspore"))
    args.device, args.amp_level = device.configure(args)
    args.distributed, args.rank, args.world_size = distributed.init_distributed_mode()
    if args.lr is None:  # upstream's scaling by the effective batch size
        args.lr = args.blr * args.batch_size * args.accum_iter * args.world_size / 256
    setup_logging(args.rank)
    seed_everything(args.seed)


def build_model(args):
    """The MAE, from --pretrained's weights (encoder and decoder) or freshly initialised as upstream's."""
    model = models_vit_mindspore.create_model(args.model, pretrained=args.pretrained or None,
                                              weights_cache_dir=args.weights_cache_dir, img_size=args.input_size,
                                              norm_pix_loss=args.norm_pix_loss)
    if args.pretrained:
        pretrained_args = train_checkpoint.read_checkpoint(
            download_and_convert_weights(args.pretrained, args.weights_cache_dir)).meta.get("source_args", {})
        if "norm_pix_loss" in pretrained_args and bool(pretrained_args["norm_pix_loss"]) != args.norm_pix_loss:
            logger.warning("%s was pre-trained with norm_pix_loss=%s; this run uses %s (add or drop --norm_pix_loss "
                           "to continue its objective)", args.pretrained, pretrained_args["norm_pix_loss"],
                           args.norm_pix_loss)
    seed_everything(args.seed + args.rank)
    apply_policy(model, policy_for(args.amp_level, args.amp_dtype, args.device))
    return model


def build_train_step(model, args):
    """AdamW (betas 0.9, 0.95) with timm's weight-decay groups, in one compiled step with upstream's scaler."""
    lr_scales, weight_decays = param_groups_weight_decay(model, args.weight_decay)
    optimizer = AdamW(model.trainable_params(), lr_scales, weight_decays, betas=(0.9, 0.95))
    grad_reducer = nn.DistributedGradReducer(optimizer.params, mean=True, degree=args.world_size) \
        if args.distributed else None
    return TrainStep(MaeLoss(model, args.mask_ratio), optimizer, accum_iter=args.accum_iter, grad_reducer=grad_reducer,
                     loss_scaling=needs_loss_scaling(args.amp_level, args.amp_dtype))


def resume(args, train_step):
    """Continue one of our pre-training runs: weights, optimizer, loss scale, epoch. Returns the next epoch."""
    checkpoint = train_checkpoint.read_checkpoint(args.resume)
    if checkpoint.meta.get("model") != args.model:
        raise ArgumentError(f"--resume {args.resume} is a {checkpoint.meta.get('model') or 'foreign'} checkpoint, "
                            f"not --model {args.model}'s")
    load_arrays_into_model(train_step.loss.model, checkpoint.weights, source=args.resume)
    train_checkpoint.restore_training_state(checkpoint, train_step, args.resume)
    logger.info("continuing %s at epoch %d", args.resume, checkpoint.epoch + 1)
    return checkpoint.epoch + 1


def fixed_images(dataset, count, input_size):
    """`count` images spread over the data set, centre-cropped as evaluation does: the same pictures every epoch."""
    transform = EvalTransform(input_size)
    picks = dataset.samples[::max(1, len(dataset.samples) // count)][:count]
    images = []
    for path, _ in picks:
        with Image.open(path) as img:
            img.load()
            images.append(transform(img))
    return np.stack(images), [os.path.relpath(p, dataset.root) for p, _ in picks]


def draw_reconstructions(args, model, images, names, epoch, policy):
    """reconstructions/epoch_<N>.png: the notebook's four panels for the fixed images, a fixed mask per image."""
    noise = np.random.default_rng(2).random((len(images), model.num_patches), dtype=np.float32)
    apply_policy(model, policy_for("O0", args.amp_dtype, args.device))  # the picture in float32
    panels = reconstruction_panels(model, images, args.mask_ratio, noise)
    apply_policy(model, policy)
    folder = os.path.join(args.output_dir, "reconstructions")
    os.makedirs(folder, exist_ok=True)
    figures.save_reconstructions(os.path.join(folder, f"epoch_{epoch}.png"), panels, names,
                                 f"{args.model} after epoch {epoch}, mask ratio {args.mask_ratio}")


def main(args):
    check_args(args)
    setup(args)
    with run_lock.hold_for_run(args.output_dir, "pre-training", args):
        if distributed.is_main_process(args):
            remove_stale_temporaries(args.output_dir)
        return pretrain(args)


def image_root(data_path):
    """upstream's layout (`<data_path>/train/<class>/*`) reads its train/ folder, as upstream's ImageFolder does;
    any other folder is read whole, recursively."""
    train = os.path.join(data_path, "train")
    return train if os.path.isdir(train) else data_path


def pretrain(args):
    dataset = UnlabelledImages(image_root(args.data_path), PretrainTransform(args.input_size))
    unreadable = dataset.find_unreadable(max(2, args.num_workers), args.check_images)
    if unreadable:
        raise ArgumentError(f"{len(unreadable)} unreadable image file(s): {', '.join(unreadable[:20])}")
    loader = Loader(dataset, args.batch_size, train=True, num_workers=args.num_workers, seed=args.seed,
                    rank=args.rank, world_size=args.world_size)
    model = build_model(args)
    train_step = build_train_step(model, args)
    start_epoch = resume(args, train_step) if args.resume else args.start_epoch
    main_process = distributed.is_main_process(args)
    policy = policy_for(args.amp_level, args.amp_dtype, args.device)
    samples = fixed_images(dataset, args.visualize, args.input_size) if args.visualize and main_process else None
    eff = args.batch_size * args.accum_iter * args.world_size
    logger.info("RETFound MAE pre-training (MindSpore %s)\nmodel      %s: %s; %.1fM trainable parameters; %d px; "
                "mask ratio %g; %s targets\nweights    %s\ndata       %s: %d images\ndevice     %s, %s, %s mode\n"
                "training   epochs %d to %d, batch %d x %d accumulation x %d processes = %d, lr %.3g (blr %g)\n"
                "outputs    %s/ (every argument in args.json)", ms.__version__, args.model, model.config.summary,
                models_vit_mindspore.num_params(model) / 1e6, args.input_size, args.mask_ratio,
                "per-patch normalised" if args.norm_pix_loss else "pixel", args.pretrained or args.resume or
                "random initialisation (upstream's)", dataset.root, len(dataset), args.device,
                "float32" if args.amp_level == "O0" else f"{args.amp_dtype} (--amp_level {args.amp_level})",
                args.mode, start_epoch, args.epochs - 1, args.batch_size, args.accum_iter, args.world_size, eff,
                args.lr, args.blr, args.output_dir)
    tb_log = TensorBoardLog(args, folder=args.log_dir, loss_tag="train_loss")
    if main_process:
        with atomic_write(os.path.join(args.output_dir, "args.json"), encoding="utf-8") as fh:
            json.dump(vars(args), fh, indent=1, default=str)
    started = time.time()
    args.last_saved = None
    try:
        for epoch in range(start_epoch, args.epochs):
            stats = engine.train_one_epoch(train_step, loader, epoch, args, model.num_patches, tb_log)
            if main_process:
                save_epoch(args, model, train_step, epoch, stats, samples, policy)
            interrupts.check(lambda signum: distributed.all_reduce_max(signum, args))
    finally:
        tb_log.close()
    logger.info("Training time %s", datetime.timedelta(seconds=int(time.time() - started)))
    return 0


def save_epoch(args, model, train_step, epoch, stats, samples, policy):
    """log.txt's row (upstream's train_loss, train_lr, epoch), the epoch's checkpoint when due, the pictures."""
    append_whole(os.path.join(args.output_dir, "log.txt"),
                 json.dumps({"train_loss": stats["loss"], "train_lr": stats["lr"], "epoch": epoch}) + "\n")
    if epoch % args.save_every == 0 or epoch + 1 == args.epochs:
        path = os.path.join(args.output_dir, f"checkpoint-{epoch}.ckpt")
        train_checkpoint.save_checkpoint(path, model, train_step, epoch, 0.0, [], args, kind="last")
        args.last_saved = path
        logger.info("saved %s", path)
    if samples is not None:
        draw_reconstructions(args, model, samples[0], samples[1], epoch, policy)


def stopped_message(args, signum):
    name = interrupts.signal_name(signum)
    last = getattr(args, "last_saved", None)
    if not last:
        return f"stopped by {name} before this run saved a checkpoint"
    return f"stopped by {name}: the last checkpoint is {last}; to continue, run the same command with --resume {last}"


def run(argv: Optional[List[str]] = None) -> int:
    """Entry point: upstream main_pretrain.py's flags in, checkpoints and logs out; one line and exit 1 for bad
    input; SIGINT / SIGTERM stop after the step under way with exit 130 / 143."""
    args = get_args_parser().parse_args(argv)
    return run_main(main, args, [args.output_dir], lambda signum: stopped_message(args, signum))


if __name__ == "__main__":
    ENTRY_SCRIPT = True
    sys.exit(run())
