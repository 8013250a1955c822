"""One compiled training step for fine-tuning and MAE pre-training (as mindcv's TrainStep): forward, loss, scaled
backward, gradient all-reduce, accumulation, finite check, clipping and AdamW in one graph.

The loss scaler follows torch.cuda.amp.GradScaler, which upstream uses: scale 2^16, halved when a gradient is not
finite (that step is skipped: weights and moments unchanged), doubled after 2000 finite steps. Its state lives in
Parameters here (`loss_scale.*`) so checkpoints carry it. `update=False` only accumulates (a separate compiled
graph: a Python bool is a compile-time constant).

`loss_scaling=False` (fp32, amp O0) leaves out the scaling and the finite check, as upstream's GradScaler disables
itself where CUDA autocast is off (two fewer passes over the gradients; docs/PERFORMANCE.md). The `loss_scale.*`
Parameters stay, unchanged, so checkpoints keep one layout.
"""
import argparse
from typing import List, Optional, Tuple

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from util_mindspore.models.compute_policy import needs_loss_scaling
from util_mindspore.models.initializers import written_zeros_like
from util_mindspore.training.optim import AdamW


def _add(a: Tensor, b: Tensor) -> Tensor:
    return a + b


def _zero(a: Parameter, g: Tensor) -> Tensor:
    return ops.assign(a, ops.zeros_like(a))


def _square_sum(g: Tensor) -> Tensor:
    return ops.reduce_sum(ops.square(g))


def soft_target_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """torch CrossEntropyLoss with probability targets (equal to the class-index loss for one-hot targets)."""
    return -(targets * ops.log_softmax(logits.astype(ms.float32), -1)).sum(-1).mean()


class ClassifierLoss(nn.Cell):
    """Fine-tuning's loss: cross-entropy of the model's logits against soft targets (one-hot, or mixup's)."""

    def __init__(self, model: nn.Cell) -> None:
        super().__init__(auto_prefix=False)  # the model's parameters keep their PyTorch names
        self.model = model

    def construct(self, images: Tensor, targets: Tensor) -> Tensor:
        return soft_target_cross_entropy(self.model(images), targets)


class MaeLoss(nn.Cell):
    """MAE pre-training's loss: the masked autoencoder's own (models_mae_mindspore), its masking drawn from `noise`."""

    def __init__(self, model: nn.Cell, mask_ratio: float = 0.75) -> None:
        super().__init__(auto_prefix=False)
        self.model, self.mask_ratio = model, float(mask_ratio)

    def construct(self, images: Tensor, noise: Tensor) -> Tensor:
        return self.model(images, self.mask_ratio, noise)[0]


class TrainStep(nn.Cell):
    """`loss(first, second)` minimised by `optimizer` in one compiled graph, with loss scaling, accumulation and
    clipping as upstream's NativeScaler does them.

    Args:
        loss: a cell returning the scalar loss from the step's two inputs (ClassifierLoss: images and soft
            targets; models_mae_mindspore.MaeLoss: images and masking noise). Its parameters keep their names.
        optimizer: util_mindspore.training.optim.AdamW over the parameters that train.
        clip_grad: clip the gradients' global norm to this (torch's clip_grad_norm_), or None.
        accum_iter: optimizer steps every `accum_iter` calls (the others only accumulate).
        grad_reducer: msrun's gradient all-reduce (nn.DistributedGradReducer), or None.
        init_loss_scale: GradScaler's initial scale.
        growth_interval: finite steps before the scale doubles.
        loss_scaling: False for float32 and bfloat16 (no GradScaler), True for float16.
    """

    def __init__(self, loss: nn.Cell, optimizer: nn.Cell, clip_grad: Optional[float] = None, accum_iter: int = 1,
                 grad_reducer: Optional[nn.Cell] = None, init_loss_scale: float = 2.0 ** 16,
                 growth_interval: int = 2000, loss_scaling: bool = True) -> None:
        super().__init__(auto_prefix=False)
        self.loss_scaling = bool(loss_scaling)
        self.loss, self.optimizer = loss, optimizer
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

    def scaled_loss(self, first: Tensor, second: Tensor) -> Tensor:
        loss = self.loss(first, second)
        if self.loss_scaling:
            loss = loss * self.loss_scale
        return loss / self.accum_iter if self.accum_iter > 1 else loss

    def reset_accumulation(self) -> None:
        """Drop gradients left from an incomplete accumulation (upstream's optimizer.zero_grad() at epoch start)."""
        if self.accum is not None:
            for buffer in self.accum:
                buffer.set_data(ops.zeros_like(buffer))

    def state_parameters(self) -> List[Parameter]:
        extra = list(self.accum) if self.accum is not None else []
        return list(self.optimizer.exp_avg) + list(self.optimizer.exp_avg_sq) + [self.optimizer.step] + \
            [self.loss_scale, self.good_steps] + extra

    def _clip(self, grads: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (total_norm + 1e-6))."""
        total = ops.sqrt(ops.addn(self.hyper_map(_square_sum, grads)))
        coef = ops.minimum(self.clip_grad / (total + 1e-6), 1.0)
        return self.hyper_map(ops.partial(ops.mul, coef), grads)

    def _apply(self, grads: Tuple[Tensor, ...], lr: Tensor) -> Tensor:
        """Clip (when asked) and take the AdamW step."""
        if self.clip_grad is not None:
            grads = self._clip(grads)
        return self.optimizer(grads, lr)

    def construct(self, first: Tensor, second: Tensor, lr: Tensor,
                  update: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
        """One step: returns (the unscaled loss, whether the gradients were finite, the loss scale used)."""
        scale = self.loss_scale * 1.0
        loss, grads = self.grad_fn(first, second)
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


def effective_batch_size(args: argparse.Namespace) -> int:
    """Images per optimizer step over every process: batch_size x accum_iter x processes (upstream's eff_batch_size)."""
    return args.batch_size * args.accum_iter * args.world_size


def scale_lr(args: argparse.Namespace) -> None:
    """Upstream's rule when --lr is not given: lr = blr x effective batch size / 256."""
    if args.lr is None:
        args.lr = args.blr * effective_batch_size(args) / 256


def build_train_step(loss: nn.Cell, model: nn.Cell, args: argparse.Namespace, lr_scales: List[float],
                     weight_decays: List[float], betas: Tuple[float, float] = (0.9, 0.999),
                     clip_grad: Optional[float] = None) -> TrainStep:
    """AdamW over the model's trainable parameters (one lr scale and weight decay each), the gradient all-reduce
    under msrun, and loss scaling where the precision needs it (float16), in one TrainStep."""
    optimizer = AdamW(model.trainable_params(), lr_scales, weight_decays, betas=betas)
    grad_reducer = nn.DistributedGradReducer(optimizer.params, mean=True, degree=args.world_size) \
        if args.distributed else None
    return TrainStep(loss, optimizer, clip_grad=clip_grad, accum_iter=args.accum_iter, grad_reducer=grad_reducer,
                     loss_scaling=needs_loss_scaling(args.amp_level, args.amp_dtype))
