"""One training epoch on the host, shared by fine-tuning and MAE pre-training (upstream's engine_finetune.py and
engine_pretrain.py run the same loop): the per-iteration lr schedule, accumulation, the divergence check, progress,
the safe point for SIGINT / SIGTERM after each step, and TensorBoard's per-step scalars."""
import argparse
import logging
import math
from typing import Callable, Dict, List, Optional, Tuple

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from util_mindspore.data.datasets import Loader
from util_mindspore.errors import TrainingDiverged
from util_mindspore.process import distributed, interrupts
from util_mindspore.process.progress import Progress
from util_mindspore.training.lr_sched import learning_rate

logger = logging.getLogger("retfound")

# (iteration, images, targets) -> the step's two inputs: (images, soft targets) or (images, masking noise)
StepInputs = Callable[[int, np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]


def train_one_epoch(train_step: nn.Cell, loader: Loader, epoch: int, args: argparse.Namespace,
                    step_inputs: StepInputs, tb_log: Optional[object] = None,
                    diverged_hint: str = "lower --lr / --blr") -> Tuple[Dict[str, float], List[float]]:
    """Upstream's loop: the lr set every `accum_iter` iterations at epoch + it / len(loader), the optimizer stepping
    on the last of them (a last incomplete accumulation is dropped, as upstream). Returns the epoch's mean loss
    (over ranks) and lr, and every iteration's lr."""
    train_step.set_train(True)
    train_step.reset_accumulation()
    loader.set_epoch(epoch)
    losses, lrs = [], []
    progress = Progress(len(loader), f"Epoch: [{epoch}]", distributed.is_main_process(args), unit="step")
    lr = learning_rate(epoch, args)
    try:
        for it, (images, targets, _) in enumerate(loader):
            if it % args.accum_iter == 0:
                lr = learning_rate(it / len(loader) + epoch, args)
            first, second = step_inputs(it, images, targets)
            update = (it + 1) % args.accum_iter == 0
            loss, _, _ = train_step(Tensor(first), Tensor(second), Tensor(lr, ms.float32), update)
            loss_value = float(loss.asnumpy())
            if not math.isfinite(loss_value):
                raise TrainingDiverged(f"loss is {loss_value} at epoch {epoch}, iteration {it}: stopping training "
                                       f"({diverged_hint})")
            losses.append(loss_value)
            lrs.append(lr)
            progress.update(loss=loss_value, lr=lr)
            interrupts.check(lambda signum: distributed.all_reduce_max(signum, args),  # a safe point: step done
                             where=f"after epoch {epoch}, step {it + 1} of {len(loader)}")
    finally:
        progress.close()
    if tb_log is not None:
        tb_log.log_training_epoch(epoch, len(loader), losses, lrs)
    stats = {"loss": distributed.all_reduce_mean(float(np.mean(losses)), args), "lr": float(np.mean(lrs))}
    logger.info("Epoch %d: mean loss %.4f, mean lr %.3e", epoch, stats["loss"], stats["lr"])
    return stats, lrs
