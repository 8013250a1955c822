"""One compiled train step, `train_one_epoch` and `evaluate` (upstream engine_finetune.py, for MindSpore)."""
import json
import logging
import math
import os
import sys
import time
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from tqdm import tqdm

from util_mindspore import distributed, interrupts
from util_mindspore import metrics as metrics_lib
from util_mindspore.atomic_files import append_whole
from util_mindspore.initializers import written_zeros_like
from util_mindspore.lr_sched import learning_rate
from util_mindspore.mixup import one_hot

logger = logging.getLogger("retfound")


def _add(a, b):
    return a + b


def _zero(a, g):
    return ops.assign(a, ops.zeros_like(a))


def _square_sum(g):
    return ops.reduce_sum(ops.square(g))


def soft_target_cross_entropy(logits, targets):
    """torch CrossEntropyLoss with probability targets (equal to the class-index loss for one-hot targets)."""
    return -(targets * ops.log_softmax(logits.astype(ms.float32), -1)).sum(-1).mean()


class TrainStep(nn.Cell):
    """Forward, loss, scaled backward, gradient all-reduce, accumulation, finite check, clipping and AdamW in one graph.

    The loss scaler follows torch.cuda.amp.GradScaler, which upstream uses: scale 2^16, halved when a gradient is
    not finite (that step is skipped: weights and moments unchanged), doubled after 2000 finite steps. Its state
    lives in Parameters here (`loss_scale.*`) so checkpoints carry it. `update=False` only accumulates (a
    separate compiled graph: a Python bool is a compile-time constant).

    `loss_scaling=False` (fp32, amp O0) leaves out the scaling and the finite check, as upstream's GradScaler
    disables itself where CUDA autocast is off (two fewer passes over the gradients; docs/PERFORMANCE.md).
    The `loss_scale.*` Parameters stay, unchanged, so checkpoints keep one layout.
    """

    def __init__(self, model: nn.Cell, optimizer: nn.Cell, clip_grad: Optional[float] = None, accum_iter: int = 1,
                 grad_reducer: Optional[nn.Cell] = None, init_loss_scale: float = 2.0 ** 16,
                 growth_interval: int = 2000, loss_scaling: bool = True):
        super().__init__(auto_prefix=False)
        self.loss_scaling = bool(loss_scaling)
        self.model, self.optimizer = model, optimizer
        self.weights = optimizer.params
        self.clip_grad = float(clip_grad) if clip_grad else None
        self.accum_iter = int(accum_iter)
        self.grad_reducer = grad_reducer
        self.loss_scale = Parameter(Tensor(init_loss_scale, ms.float32), name="loss_scale.scale", requires_grad=False)
        self.good_steps = Parameter(Tensor(0, ms.int32), name="loss_scale.good_steps", requires_grad=False)
        self.growth_interval = int(growth_interval)
        self.accum = written_zeros_like(self.weights, "accum") if self.accum_iter > 1 else None
        self.hyper_map = ops.HyperMap()
        self.grad_fn = ms.value_and_grad(self.scaled_loss, None, self.weights)

    def scaled_loss(self, images, targets):
        loss = soft_target_cross_entropy(self.model(images), targets)
        if self.loss_scaling:
            loss = loss * self.loss_scale
        return loss / self.accum_iter if self.accum_iter > 1 else loss

    def reset_accumulation(self):
        """Drop gradients left from an incomplete accumulation (upstream's optimizer.zero_grad() at epoch start)."""
        if self.accum is not None:
            for buffer in self.accum:
                buffer.set_data(ops.zeros_like(buffer))

    def state_parameters(self):
        extra = list(self.accum) if self.accum is not None else []
        return list(self.optimizer.exp_avg) + list(self.optimizer.exp_avg_sq) + [self.optimizer.step] + \
            [self.loss_scale, self.good_steps] + extra

    def _clip(self, grads):
        """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (total_norm + 1e-6))."""
        total = ops.sqrt(ops.addn(self.hyper_map(_square_sum, grads)))
        coef = ops.minimum(self.clip_grad / (total + 1e-6), 1.0)
        return self.hyper_map(ops.partial(ops.mul, coef), grads)

    def _apply(self, grads, lr):
        """Clip (when asked) and take the AdamW step."""
        if self.clip_grad is not None:
            grads = self._clip(grads)
        return self.optimizer(grads, lr)

    def construct(self, images, targets, lr, update=True):
        scale = self.loss_scale * 1.0
        loss, grads = self.grad_fn(images, targets)
        if self.grad_reducer is not None:
            grads = self.grad_reducer(grads)
        if self.loss_scaling:
            loss = loss / scale
        if self.accum_iter > 1:
            loss = loss * self.accum_iter
        if self.accum is not None:
            if not update:
                ops.depend(loss, self.hyper_map(ops.assign_add, self.accum, grads))
                return loss, Tensor(True), scale
            grads = self.hyper_map(_add, self.accum, grads)
            loss = ops.depend(loss, self.hyper_map(_zero, self.accum, grads))
        if not self.loss_scaling:
            return ops.depend(loss, self._apply(grads, lr)), Tensor(True), scale
        grads = self.hyper_map(ops.partial(ops.mul, 1.0 / scale), grads)
        finite = ms.amp.all_finite(grads)
        good = ops.select(finite, self.good_steps + 1, ops.zeros_like(self.good_steps))
        grow = good >= self.growth_interval
        new_scale = ops.select(finite, ops.select(grow, scale * 2.0, scale), scale * 0.5)
        loss = ops.depend(loss, ops.assign(self.good_steps, ops.select(grow, ops.zeros_like(good), good)))
        loss = ops.depend(loss, ops.assign(self.loss_scale, new_scale))
        if finite:
            loss = ops.depend(loss, self._apply(grads, lr))
        return loss, finite, scale


class _Progress:
    """tqdm on a terminal; upstream-style periodic lines otherwise (logs, CI, msrun worker files)."""

    def __init__(self, total, header, enabled, print_freq=20):
        self.total, self.header, self.print_freq, self.bar = total, header, print_freq, None
        self.enabled, self.started, self.count = enabled, time.time(), 0
        if enabled and sys.stdout.isatty():
            self.bar = tqdm(total=total, desc=header, leave=False)

    def update(self, **values):
        self.count += 1
        if not self.enabled:
            return
        text = "  ".join(f"{k}: {v:.6f}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text)
            self.bar.update(1)
        elif self.count % self.print_freq == 0 or self.count == self.total:
            logger.info("%s [%d/%d]  %s  time: %.1fs", self.header, self.count, self.total, text,
                        time.time() - self.started)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def train_one_epoch(train_step, loader, epoch, args, mixup_fn=None, tb_log=None):
    """Upstream's loop: lr set every iteration at epoch + it / len(loader); returns averaged stats and the lrs.
    TensorBoard (`tb_log`) gets each optimizer step's loss and lr at the end of the epoch."""
    train_step.set_train(True)
    train_step.reset_accumulation()
    loader.set_epoch(epoch)
    accum_iter = args.accum_iter
    losses, lrs = [], []
    progress = _Progress(len(loader), f"Epoch: [{epoch}]", distributed.is_main_process(args))
    lr = learning_rate(epoch, args)
    for it, (images, targets, _) in enumerate(loader):
        if it % accum_iter == 0:
            lr = learning_rate(it / len(loader) + epoch, args)
        if mixup_fn is not None:
            images, soft = mixup_fn(images, targets)
        else:
            soft = one_hot(targets, args.nb_classes)
        update = (it + 1) % accum_iter == 0  # as upstream: a last incomplete accumulation is dropped
        loss, _, _ = train_step(Tensor(images), Tensor(soft), Tensor(lr, ms.float32), update)
        loss_value = float(loss.asnumpy())
        if not math.isfinite(loss_value):
            progress.close()
            raise FloatingPointError(f"loss is {loss_value} at epoch {epoch}, iteration {it}: stopping training")
        losses.append(loss_value)
        lrs.append(lr)
        progress.update(loss=loss_value, lr=lr)
        interrupts.check(lambda signum: distributed.all_reduce_max(signum, args))  # a safe point: step done
    progress.close()
    if tb_log is not None:
        tb_log.log_training_epoch(epoch, len(loader), losses, lrs)
    stats = {"lr": float(np.mean(lrs)), "loss": distributed.all_reduce_mean(float(np.mean(losses)), args)}
    logger.info("Averaged stats: lr: %.6f  loss: %.4f", stats["lr"], stats["loss"])
    return stats, lrs


def softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)


def batch_loss(logits, labels):
    """torch CrossEntropyLoss of one batch (the mean over its images)."""
    probs = softmax(logits)
    return float(np.mean(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-300))))


def predict(model, loader, args):
    """Logits, labels, dataset indices and per-batch losses for this rank's part of the loader (or all of it)."""
    model.set_train(False)
    logits, labels, indices, losses = [], [], [], []
    progress = _Progress(len(loader), "Test:", distributed.is_main_process(args), print_freq=10)
    for images, targets, idx in loader:
        logits.append(model(Tensor(images)).asnumpy().astype(np.float64))
        labels.append(targets)
        indices.append(idx)
        losses.append(batch_loss(logits[-1], targets))
        progress.update()
    progress.close()
    empty = np.zeros((0, args.nb_classes))
    return (np.concatenate(logits) if logits else empty, np.concatenate(labels) if labels else np.zeros(0, np.int32),
            np.concatenate(indices) if indices else np.zeros(0, np.int64), np.asarray(losses, dtype=np.float64))


def evaluate(model, loader, args, mode, class_names, epoch=None, tb_log=None):
    """Metrics on one split (upstream's, scikit-learn); rank 0 writes them with the predictions (write_evaluation)
    and, given a TensorBoard writer, upstream's `perf/<metric>` scalars at `epoch`.
    With --dist_eval each rank predicts its disjoint slice and the rows are gathered: every image counted once.
    val_loss is upstream's: the mean of the per-batch mean losses (over every rank's batches under --dist_eval).
    """
    logits, labels, indices, losses = predict(model, loader, args)
    if args.dist_eval:
        logits = distributed.all_gather_rows(logits, args)
        labels = distributed.all_gather_rows(labels, args)
        indices = distributed.all_gather_rows(indices, args)
        losses = distributed.all_gather_rows(losses, args)
    probs = softmax(logits) if len(logits) else logits
    loss = float(np.mean(losses)) if len(losses) else 0.0
    results = metrics_lib.compute_metrics(labels, probs, loss)
    if distributed.is_main_process(args):
        paths = [loader.dataset.samples[int(i)][0] for i in indices]
        write_evaluation(os.path.join(args.output_dir, args.task), mode, results, paths, labels, probs, class_names)
        if tb_log is not None:
            tb_log.log_evaluation(results, epoch)
    logger.info("[%s] %d images  loss: %.4f  accuracy: %.4f  f1: %.4f  roc_auc: %.4f  kappa: %.4f  score: %.4f",
                mode, len(labels), loss, results["accuracy"], results["f1"], results["roc_auc"], results["kappa"],
                results["score"])
    return results


def write_evaluation(out_dir, mode, results, paths, labels, probs, class_names):
    """metrics_<mode>.csv (a row appended), predictions_<mode>.csv, and on test the two pictures."""
    os.makedirs(out_dir, exist_ok=True)
    metrics_lib.append_metrics_csv(os.path.join(out_dir, f"metrics_{mode}.csv"), results)
    metrics_lib.write_predictions_csv(os.path.join(out_dir, f"predictions_{mode}.csv"), paths, labels, probs,
                                      class_names)
    if mode == "test":
        metrics_lib.save_confusion_matrix(os.path.join(out_dir, "confusion_matrix_test.jpg"), labels, probs,
                                          class_names)
        metrics_lib.save_roc_curves(os.path.join(out_dir, "roc_curves_test.png"), labels, probs, class_names)


def append_log(args, row):
    """log.txt gains one JSON line, rewritten whole through a temporary file (never half a line)."""
    append_whole(os.path.join(args.output_dir, args.task, "log.txt"), json.dumps(row) + "\n")
