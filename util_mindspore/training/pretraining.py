"""MAE pre-training, step by step (what main_pretrain_mindspore.py reads as its table of contents; upstream
main_pretrain.py and engine_pretrain.py): the data, the model from published or random weights, the compiled step
with timm's weight-decay groups, resuming (log.txt and TensorBoard cut back to the checkpoint), the epochs with their
checkpoints and log rows, and the reconstructions RETFound_visualize.ipynb draws.

The masking noise of each step is drawn on the host from (seed, epoch, step, rank), so a resumed run masks as the
uninterrupted one would.
"""
import argparse
import json
import logging
import os
from typing import List, Optional, Tuple

import mindspore as ms
import numpy as np
from mindspore import nn
from PIL import Image

from util_mindspore.checkpoints import train_checkpoint
from util_mindspore.checkpoints.conversion import checkpoint_file
from util_mindspore.data.datasets import ImageFolder, Loader, UnlabelledImages
from util_mindspore.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, PretrainTransform
from util_mindspore.errors import ArgumentError, DataError
from util_mindspore.evaluation import figures
from util_mindspore.evaluation.metrics import count_rows, keep_first_rows
from util_mindspore.files.atomic import append_whole
from util_mindspore.models.compute_policy import ComputePolicy, apply_policy, policy_for
from util_mindspore.models.factory import create_model
from util_mindspore.models.mae import MaskedAutoencoderViT
from util_mindspore.models.weights import load_arrays_into_model
from util_mindspore.process import distributed
from util_mindspore.process.seeding import seed_everything
from util_mindspore.training import epoch_loop
from util_mindspore.training.lr_decay import param_groups_weight_decay
from util_mindspore.training.run_state import RunState
from util_mindspore.training.tensorboard_log import TensorBoardLog
from util_mindspore.training.train_step import MaeLoss, TrainStep, build_train_step

logger = logging.getLogger("retfound")


def masking_noise(seed: int, epoch: int, step: int, rank: int, batch: int, patches: int) -> np.ndarray:
    """The uniform draw upstream's random_masking takes from torch.rand (batch, patches): from numpy, seeded by
    (seed, epoch, step, rank), so a resumed run masks as the uninterrupted one would."""
    return np.random.default_rng([seed, epoch, step, rank]).random((batch, patches), dtype=np.float32)


def train_one_epoch(train_step: TrainStep, loader: Loader, epoch: int, args: argparse.Namespace, num_patches: int,
                    tb_log: Optional[TensorBoardLog] = None) -> dict:
    """Upstream's train_one_epoch (util_mindspore/training/epoch_loop.py), each step's masking noise drawn by
    masking_noise. Returns the epoch's mean loss and lr."""
    def step_inputs(it: int, images: np.ndarray, _: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        return images, masking_noise(args.seed, epoch, it, args.rank, len(images), num_patches)
    return epoch_loop.train_one_epoch(train_step, loader, epoch, args, step_inputs, tb_log)[0]


def mask_ratio_problems(mask_ratio: float, input_size: int, patch_size: int) -> List[str]:
    """What is wrong with --mask_ratio for this grid: it must remove some patches and keep some."""
    grid = (input_size // patch_size) ** 2
    if not 0.0 < mask_ratio < 1.0:
        return [f"--mask_ratio {mask_ratio} is outside (0, 1): some patches must be removed and some kept"]
    kept = int(grid * (1 - mask_ratio))
    if kept < 1:
        return [f"--mask_ratio {mask_ratio} keeps no patch of the {grid}"]
    if kept == grid:
        return [f"--mask_ratio {mask_ratio} removes no patch of the {grid}"]
    return []


def image_root(data_path: str) -> str:
    """upstream's layout (`<data_path>/train/<class>/*`) reads its train/ folder, as upstream's ImageFolder does;
    any other folder is read whole, recursively."""
    train = os.path.join(data_path, "train")
    return train if os.path.isdir(train) else data_path


def build_dataset(args: argparse.Namespace) -> UnlabelledImages:
    """Every image of --data_path with upstream's pre-training transform; unreadable files stop it in one line."""
    dataset = UnlabelledImages(image_root(args.data_path), PretrainTransform(args.input_size))
    unreadable = dataset.find_unreadable(max(2, args.num_workers), args.check_images)
    if unreadable:
        raise DataError(f"{len(unreadable)} unreadable image file(s): {', '.join(unreadable[:20])}")
    return dataset


def build_model(args: argparse.Namespace) -> MaskedAutoencoderViT:
    """The MAE, from --pretrained's weights (encoder and decoder) or freshly initialised as upstream's."""
    model = create_model(args.model, pretrained=args.pretrained or None, weights_cache_dir=args.weights_cache_dir,
                         img_size=args.input_size, norm_pix_loss=args.norm_pix_loss)
    if args.pretrained:
        pretrained_args = train_checkpoint.read_checkpoint(
            checkpoint_file(args.pretrained, args.weights_cache_dir)).meta.get("source_args", {})
        if "norm_pix_loss" in pretrained_args and bool(pretrained_args["norm_pix_loss"]) != args.norm_pix_loss:
            logger.warning("%s was pre-trained with norm_pix_loss=%s; this run uses %s (add or drop --norm_pix_loss "
                           "to continue its objective)", args.pretrained, pretrained_args["norm_pix_loss"],
                           args.norm_pix_loss)
    seed_everything(args.seed + args.rank)
    apply_policy(model, policy_for(args.amp_level, args.amp_dtype, args.device))
    return model


def build_mae_step(model: MaskedAutoencoderViT, args: argparse.Namespace) -> TrainStep:
    """AdamW (betas 0.9, 0.95) with timm's weight-decay groups, in one compiled step with upstream's scaler."""
    lr_scales, weight_decays = param_groups_weight_decay(model, args.weight_decay)
    return build_train_step(MaeLoss(model, args.mask_ratio), model, args, lr_scales, weight_decays, betas=(0.9, 0.95))


def resume(args: argparse.Namespace, train_step: TrainStep) -> RunState:
    """Continue one of our pre-training runs: weights, optimizer, loss scale, epoch; log.txt cut back to the rows
    it had when the checkpoint was saved (a row written after it is written again, never twice)."""
    checkpoint = train_checkpoint.read_checkpoint(checkpoint_file(args.resume, args.weights_cache_dir))
    if checkpoint.meta.get("model") != args.model:
        raise ArgumentError(f"--resume {args.resume} is a {checkpoint.meta.get('model') or 'foreign'} checkpoint, "
                            f"not --model {args.model}'s")
    load_arrays_into_model(train_step.loss.model, checkpoint.weights, source=args.resume)
    train_checkpoint.restore_training_state(checkpoint, train_step, args.resume)
    if distributed.is_main_process(args):
        # the rows up to the checkpoint's epoch; checkpoints of earlier versions did not count them
        rows = checkpoint.meta.get("outputs", {}).get("log.txt", checkpoint.epoch + 1 - args.start_epoch)
        keep_first_rows(os.path.join(args.output_dir, "log.txt"), int(rows), header=False)
    logger.info("continuing %s at epoch %d", args.resume, checkpoint.epoch + 1)
    state = RunState(checkpoint.epoch + 1, resumed_from=args.resume)
    state.saved(args.resume, checkpoint.epoch)
    return state


def fixed_images(dataset: ImageFolder, count: int, input_size: int) -> Tuple[np.ndarray, List[str]]:
    """`count` images spread over the data set, centre-cropped as evaluation does: the same pictures every epoch."""
    transform = EvalTransform(input_size)
    picks = dataset.samples[::max(1, len(dataset.samples) // count)][:count]
    images = []
    for path, _ in picks:
        with Image.open(path) as img:
            img.load()
            images.append(transform(img))
    return np.stack(images), [os.path.relpath(p, dataset.root) for p, _ in picks]


def draw_reconstructions(args: argparse.Namespace, model: MaskedAutoencoderViT, images: np.ndarray,
                         names: List[str], epoch: int, policy: ComputePolicy) -> None:
    """reconstructions/epoch_<N>.png: the notebook's four panels for the fixed images, a fixed mask per image."""
    noise = np.random.default_rng(2).random((len(images), model.num_patches), dtype=np.float32)
    apply_policy(model, policy_for("O0", args.amp_dtype, args.device))  # the picture in float32
    panels = reconstruction_panels(model, images, args.mask_ratio, noise)
    apply_policy(model, policy)
    folder = os.path.join(args.output_dir, "reconstructions")
    os.makedirs(folder, exist_ok=True)
    figures.save_reconstructions(os.path.join(folder, f"epoch_{epoch}.png"), panels, names,
                                 f"{args.model} after epoch {epoch}, mask ratio {args.mask_ratio}")


def save_epoch(args: argparse.Namespace, model: nn.Cell, train_step: TrainStep, epoch: int, stats: dict,
               state: RunState) -> None:
    """log.txt's row (upstream's train_loss, train_lr, epoch), then the epoch's checkpoint when due, which records
    how many rows log.txt had (resume cuts it back to that)."""
    log = os.path.join(args.output_dir, "log.txt")
    append_whole(log, json.dumps({"train_loss": stats["loss"], "train_lr": stats["lr"], "epoch": epoch}) + "\n")
    if epoch % args.save_every == 0 or epoch + 1 == args.epochs:
        path = os.path.join(args.output_dir, f"checkpoint-{epoch}.ckpt")
        train_checkpoint.save_checkpoint(path, model, train_step, epoch, 0.0, [], args, kind="last",
                                         outputs={"log.txt": count_rows(log, header=False)})
        state.saved(path, epoch)
        logger.info("saved %s", path)


def reconstruction_panels(model: MaskedAutoencoderViT, images: np.ndarray, mask_ratio: float = 0.75,
                          noise: Optional[np.ndarray] = None,
                          norm_pix: Optional[bool] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What RETFound_visualize.ipynb draws, as four (N, H, W, 3) arrays in [0, 1]: the original, the masked image
    (removed patches grey), the reconstruction, and the reconstruction with the visible patches pasted back.

    `images` are ImageNet-normalised (N, 3, H, W). A model trained with norm_pix_loss predicts each patch
    standardised by its own mean and variance; with `norm_pix` (default: the model's norm_pix_loss) each predicted
    patch is given back the original patch's mean and variance, so that the picture shows the reconstructed
    structure (the notebook draws them as they come, which is readable only for pixel-target models).
    """
    norm_pix = model.norm_pix_loss if norm_pix is None else norm_pix
    model.set_train(False)
    x = ms.Tensor(np.asarray(images, np.float32))
    if noise is not None:
        noise = ms.Tensor(np.asarray(noise, np.float32))
    _, pred, mask = model(x, mask_ratio, noise)
    pred, mask = pred.asnumpy().astype(np.float64), mask.asnumpy().astype(np.float64)
    if norm_pix:
        target = model.patchify(x).asnumpy().astype(np.float64)
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, ddof=1, keepdims=True)
        pred = pred * np.sqrt(var + 1e-6) + mean
    p = model.patch_size
    recon = model.unpatchify(ms.Tensor(pred.astype(np.float32))).asnumpy().astype(np.float64)
    mask_image = model.unpatchify(ms.Tensor(np.repeat(mask[..., None], p * p * 3, axis=-1).astype(np.float32)))
    mask_image = mask_image.asnumpy().astype(np.float64)
    original = np.asarray(images, np.float64)
    mean, std = np.asarray(IMAGENET_MEAN).reshape(1, 3, 1, 1), np.asarray(IMAGENET_STD).reshape(1, 3, 1, 1)

    def picture(array: np.ndarray) -> np.ndarray:
        return np.clip(array * std + mean, 0.0, 1.0).transpose(0, 2, 3, 1)
    masked = original * (1 - mask_image)  # removed patches 0 in normalised space: ImageNet's mean grey, as the notebook
    pasted = original * (1 - mask_image) + recon * mask_image
    return picture(original), picture(masked), picture(recon), picture(pasted)
