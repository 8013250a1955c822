"""TensorBoard scalars under `--log_dir/<task>` with upstream's tags, written by tensorboardX.

Upstream (rank 0, training runs only) writes `loss/train` and `lr` at every optimizer step, on an x-axis of
int(1000 * fractional epoch), and once per epoch `loss/val` and `perf/<metric>` for the validation metrics.
tensorboardX is optional (`pip install -e ".[tensorboard]"`); without it the run says so once and goes on.
"""
import argparse
import logging
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from util_mindspore.process import distributed

logger = logging.getLogger("retfound")

PERF_METRICS = ("accuracy", "f1", "roc_auc", "hamming", "jaccard", "precision", "recall", "average_precision",
                "kappa", "score")


def _summary_writer_class() -> Optional[type]:
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class TensorBoardLog:
    """Rank 0 writes; every rank calls the same methods (the per-step losses are averaged over ranks)."""

    def __init__(self, args: argparse.Namespace, folder: Optional[str] = None, loss_tag: str = "loss/train",
                 resumed_at: int = 0) -> None:
        """Scalars into `folder` (default <log_dir>/<task>); the per-step loss under `loss_tag` (MAE pre-training:
        upstream's `train_loss`). A run resumed at epoch `resumed_at` purges the per-step scalars a stopped run wrote
        from there on (TensorBoard's purge_step), so the epochs it trains again are drawn once."""
        self.args, self.loss_tag = args, loss_tag
        self.writer = None
        if not args.log_dir or getattr(args, "eval", False):
            return
        writer_class = _summary_writer_class()
        if writer_class is None:
            logger.warning("--log_dir %s: TensorBoard logging is off: tensorboardX is not installed "
                           "(pip install -e \".[tensorboard]\")", args.log_dir)
            return
        self.enabled = True
        if distributed.is_main_process(args):
            purge = {"purge_step": int(1000 * resumed_at)} if resumed_at else {}
            self.writer = writer_class(logdir=folder or os.path.join(args.log_dir, args.task), **purge)
            logger.info("log_dir: %s", self.writer.logdir)

    enabled = False

    def log_training_epoch(self, epoch: int, steps_per_epoch: int, losses: Sequence[float],
                           lrs: Sequence[float]) -> None:
        """One epoch's per-iteration losses and lrs; written at optimizer steps, as upstream.

        Under msrun the losses are averaged over ranks once per epoch (one collective) rather than at every step.
        """
        if not self.enabled:
            return
        losses = np.asarray(losses, dtype=np.float64)
        if getattr(self.args, "distributed", False):
            losses = distributed.all_gather_rows(losses[None, :], self.args).mean(axis=0)
        if self.writer is None:
            return
        accum_iter = self.args.accum_iter
        for it, (loss, lr) in enumerate(zip(losses, lrs)):
            if (it + 1) % accum_iter == 0:
                x = int((it / steps_per_epoch + epoch) * 1000)
                self.writer.add_scalar(self.loss_tag, float(loss), x)
                self.writer.add_scalar("lr", float(lr), x)
        self.writer.flush()

    def log_evaluation(self, results: Mapping[str, float], epoch: Optional[int]) -> None:
        if self.writer is None:
            return
        for name in PERF_METRICS:
            self.writer.add_scalar(f"perf/{name}", results[name], epoch)
        self.writer.add_scalar("loss/val", results["val_loss"], epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
