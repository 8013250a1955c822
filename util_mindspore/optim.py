"""AdamW with torch.optim.AdamW's update, run as MindSpore's fused AdamWeightDecay kernel.

The fused primitive has no bias correction. Rescaling each step by bc1 = 1 - beta1^t, bc2 = 1 - beta2^t:
    lr' = lr * sqrt(bc2) / bc1,  eps' = eps * sqrt(bc2),  decay' = wd * bc1 / sqrt(bc2)
gives exactly torch's  p -= lr*wd*p + lr * (m/bc1) / (sqrt(v/bc2) + eps).
(`nn.AdamWeightDecay` lacks bias correction and uses eps 1e-6; `experimental.optim.AdamW` matches torch
but needs > 20 GB for ViT-L on CPU.) lr comes in as a tensor each step, so the schedule never recompiles.
"""
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops


class AdamW(nn.Cell):
    def __init__(self, params, lr_scales, weight_decays, betas=(0.9, 0.999), eps=1e-8):
        super().__init__()
        self.params = ms.ParameterTuple(params)
        if not (len(self.params) == len(lr_scales) == len(weight_decays)):
            raise ValueError("AdamW needs one lr scale and one weight decay per parameter")
        self.exp_avg = self.params.clone(prefix="optimizer.exp_avg", init="zeros")
        self.exp_avg_sq = self.params.clone(prefix="optimizer.exp_avg_sq", init="zeros")
        self.step = Parameter(Tensor(0.0, ms.float32), name="optimizer.step", requires_grad=False)
        self.lr_scales = tuple(Tensor(float(s), ms.float32) for s in lr_scales)
        self.weight_decays = tuple(Tensor(float(w), ms.float32) for w in weight_decays)
        self.beta1, self.beta2, self.eps = float(betas[0]), float(betas[1]), float(eps)
        self.beta1_t = Tensor(self.beta1, ms.float32)
        self.beta2_t = Tensor(self.beta2, ms.float32)
        self.fused = ops.AdamWeightDecay()
        self.hyper_map = ops.HyperMap()

    def construct(self, grads, lr):
        step = self.step + 1.0
        ops.assign(self.step, step)
        bc1 = 1.0 - ops.pow(self.beta1_t, step)
        sqrt_bc2 = ops.sqrt(1.0 - ops.pow(self.beta2_t, step))
        lr_step = lr * sqrt_bc2 / bc1
        eps_step = self.eps * sqrt_bc2
        decay_factor = bc1 / sqrt_bc2
        return self.hyper_map(ops.partial(self._update, lr_step, eps_step, decay_factor), self.lr_scales,
                              self.weight_decays, self.params, self.exp_avg, self.exp_avg_sq, grads)

    def _update(self, lr_step, eps_step, decay_factor, lr_scale, weight_decay, param, m, v, grad):
        return self.fused(param, m, v, lr_step * lr_scale, self.beta1_t, self.beta2_t, eps_step,
                          weight_decay * decay_factor, ops.cast(grad, param.dtype))
