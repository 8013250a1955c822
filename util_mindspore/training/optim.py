"""AdamW with torch.optim.AdamW's update, run as MindSpore's fused Adam kernel after a weight-decay pass.

torch.optim.AdamW (upstream's optimizer) does, per step t with bc1 = 1 - beta1^t, bc2 = 1 - beta2^t:
    p *= 1 - lr * wd;  m = lerp(m, g, 1 - beta1);  v = beta2 v + (1 - beta2) g^2
    p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
The fused `ops.Adam` kernel takes beta1^t and beta2^t and applies p -= lr sqrt(bc2) / bc1 * m / (sqrt(v) + eps'),
which is the same last line with eps' = eps * sqrt(bc2); the decay runs before it, as torch's does.
The decay runs in place as ApplyGradientDescent(p, lr * wd, p), i.e. p -= lr wd p (a multiply and an assign
would hold a parameter-sized temporary each). These two kernels are faster on CPU than the fused
`AdamWeightDecay`, which also lacks bias correction and uses eps 1e-6; `experimental.optim.AdamW` matches torch
but runs out of memory for ViT-L on CPU (figures in docs/PERFORMANCE.md). lr comes in as a tensor each step, so
the schedule never recompiles.
"""
from typing import Iterable, Sequence, Tuple

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from util_mindspore.models.initializers import written_zeros_like


class AdamW(nn.Cell):
    def __init__(self, params: Iterable[Parameter], lr_scales: Sequence[float], weight_decays: Sequence[float],
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__()
        self.params = ms.ParameterTuple(params)
        if not (len(self.params) == len(lr_scales) == len(weight_decays)):
            raise ValueError("AdamW needs one lr scale and one weight decay per parameter")
        self.exp_avg = written_zeros_like(self.params, "optimizer.exp_avg")
        self.exp_avg_sq = written_zeros_like(self.params, "optimizer.exp_avg_sq")
        self.step = Parameter(Tensor(0.0, ms.float32), name="optimizer.step", requires_grad=False)
        self.lr_scales = tuple(Tensor(float(s), ms.float32) for s in lr_scales)
        self.weight_decays = tuple(Tensor(float(w), ms.float32) for w in weight_decays)
        self.beta1, self.beta2, self.eps = float(betas[0]), float(betas[1]), float(eps)
        self.beta1_t = Tensor(self.beta1, ms.float32)
        self.beta2_t = Tensor(self.beta2, ms.float32)
        self.adam = ops.Adam()
        self.decay = ops.ApplyGradientDescent()
        self.hyper_map = ops.HyperMap()

    def construct(self, grads: Tuple[Tensor, ...], lr: Tensor) -> Tuple[Tensor, ...]:
        step = self.step + 1.0
        ops.assign(self.step, step)
        beta1_power = ops.pow(self.beta1_t, step)
        beta2_power = ops.pow(self.beta2_t, step)
        eps_step = self.eps * ops.sqrt(1.0 - beta2_power)
        return self.hyper_map(ops.partial(self._update, lr, beta1_power, beta2_power, eps_step), self.lr_scales,
                              self.weight_decays, self.params, self.exp_avg, self.exp_avg_sq, grads)

    def _update(self, lr: Tensor, beta1_power: Tensor, beta2_power: Tensor, eps_step: Tensor, lr_scale: Tensor,
                weight_decay: Tensor, param: Parameter, m: Parameter, v: Parameter,
                grad: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        lr = lr * lr_scale
        # decoupled decay first, as torch, in place (p -= lr wd p): no temporary the size of the parameter
        param = ops.depend(param, self.decay(param, lr * weight_decay, param))
        return self.adam(param, m, v, beta1_power, beta2_power, lr, self.beta1, self.beta2, eps_step,
                         ops.cast(grad, param.dtype))
