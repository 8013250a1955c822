"""The layers of our Vision Transformers, each in a plain form and, where it matters, a CPU form.

Parameter names and shapes are torch's (`weight`, `bias`, `gamma`), so PyTorch state dicts load by name.
Every layer follows the ComputePolicy set on it (dtypes per op family, which form). The CPU forms exist
because several MindSpore 2.10 CPU kernels keep index tables of their own for every call site (outside the
memory pool) or are slow; each says which. Both forms compute the same function and are tested against each
other; docs/PERFORMANCE.md has the measurements that chose them.
"""
from typing import Optional, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, ops
from mindspore.common.initializer import initializer

from util_mindspore.models.compute_policy import PolicyCell, cast
from util_mindspore.models.initializers import TruncNormal, XavierUniform


def trunc_normal(shape: Tuple[int, ...], std: float = 0.02, a: float = -2.0, b: float = 2.0) -> ms.Tensor:
    """timm's trunc_normal_ for a float32 Parameter, drawn into the Parameter's own array when it is made."""
    return initializer(TruncNormal(std, a, b), shape, ms.float32)


def xavier_uniform(shape: Tuple[int, ...]) -> ms.Tensor:
    """torch's xavier_uniform_ for a float32 Parameter (MAE's linear layers and patch projection)."""
    return initializer(XavierUniform(), shape, ms.float32)


def zeros(shape: Tuple[int, ...]) -> ms.Tensor:
    return initializer("zeros", shape, ms.float32)


def trunc_normal_linear_(linear: "Linear", std: float = 2e-5) -> None:
    """Re-draw a Linear as upstream re-initialises the classifier after loading weights: trunc_normal, zero bias."""
    linear.weight.set_data(trunc_normal(linear.weight.shape, std))
    if linear.bias is not None:
        linear.bias.set_data(zeros(linear.bias.shape))


class _BiasAddWithMatmulBackward(ms.nn.Cell):
    """BiasAdd whose bias gradient (the column sums of the incoming gradient) is one matmul with a ones row: the
    CPU BiasAddGrad kernel is slow at the MAE decoder's width of 512 (docs/PERFORMANCE.md)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias_add = ops.BiasAdd()
        self.matmul = ops.MatMul()

    def construct(self, x: ms.Tensor, bias: ms.Tensor) -> ms.Tensor:
        return self.bias_add(x, bias)

    def bprop(self, x: ms.Tensor, bias: ms.Tensor, out: ms.Tensor, dout: ms.Tensor) -> Tuple[ms.Tensor, ms.Tensor]:
        ones = ops.ones((1, dout.shape[0]), dout.dtype)
        return dout, self.matmul(ones, dout).reshape(bias.shape)


class Linear(PolicyCell):
    """torch.nn.Linear: matmul in the policy's matmul dtype (autocast casts input, weight and bias alike).

    CPU form: the bias gradient as a matmul (_BiasAddWithMatmulBackward); the fused `ops.dense` was tried and held
    more memory (docs/PERFORMANCE.md).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_mask: Optional[np.ndarray] = None,
                 init_std: float = 0.02) -> None:
        super().__init__()
        self.weight = Parameter(trunc_normal((out_features, in_features), std=init_std), name="weight")
        self.bias = Parameter(zeros((out_features,)), name="bias") if bias else None
        # DINOv3's LinearKMaskedBias: a constant 0/1 mask on the bias (its keys' part is 0)
        self.bias_mask = ms.Tensor(bias_mask, ms.float32) if bias and bias_mask is not None else None
        self.matmul = ops.MatMul(transpose_b=True)
        self.bias_add = ops.BiasAdd()
        self.cpu_bias_add = _BiasAddWithMatmulBackward()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        shape = x.shape
        dtype = self.matmul_dtype
        out = self.matmul(cast(x.reshape(-1, shape[-1]), dtype), cast(self.weight, dtype))
        if self.bias is not None:
            bias = self.bias * self.bias_mask if self.bias_mask is not None else self.bias
            add = self.cpu_bias_add if self.cpu_forms else self.bias_add
            out = add(out, cast(bias, dtype))
        return cast(out.reshape(shape[:-1] + (-1,)), self.matmul_out_dtype)


class LayerNorm(PolicyCell):
    """LayerNorm over the last axis (torch's parameter names), computed and returned in the accurate dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = Parameter(initializer("ones", (dim,), ms.float32), name="weight")
        self.bias = Parameter(zeros((dim,)), name="bias")
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        dtype = self.accurate_dtype
        return self.layer_norm(cast(x, dtype), cast(self.weight, dtype), cast(self.bias, dtype))[0]


class GELU(PolicyCell):
    """Exact (erf) GELU, torch's default. Math in the accurate dtype, result in the input's dtype, as torch's
    CUDA kernel computes a float16 GELU in float32.
    CPU form: x/2 (1 + erf(x/sqrt 2)) with ops.erf; the CPU GeLU kernel keeps about 4x its output per call site.
    ONNX form: the same formula with tanh standing where erf goes, because MindSpore 2.10's ONNX exporter has no
    Erf; util_mindspore/inference/export.py turns exactly these Tanh nodes into ONNX Erf nodes. Only for export.
    """

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        y = cast(x, self.accurate_dtype)
        if self.onnx_forms:
            y = y * 0.5 * (1.0 + ops.tanh(y * 0.7071067811865476))
        elif self.cpu_forms:
            y = y * 0.5 * (1.0 + ops.erf(y * 0.7071067811865476))
        else:
            y = ops.gelu(y, approximate="none")
        return cast(y, x.dtype)


class SiLU(PolicyCell):
    """x * sigmoid(x) (torch's SiLU, in the input's dtype as autocast leaves it): the gate of SwiGLU MLPs."""

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return x * ops.sigmoid(x)


class _SoftmaxWithMatmulBackward(ms.nn.Cell):
    """ops.softmax whose backward p * g - p * sum(p * g) is two batched matmuls (the row sums in another order
    than torch's, so gradients agree to rounding). CPU: the stock backward (ReduceSum, broadcast Sub) keeps
    per-call-site index tables."""

    def __init__(self) -> None:
        super().__init__()
        self.matmul = ops.BatchMatMul()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return ops.softmax(x, axis=-1)

    def bprop(self, x: ms.Tensor, out: ms.Tensor, dout: ms.Tensor) -> Tuple[ms.Tensor]:
        n = out.shape[-1]
        row_dot = self.matmul(out.reshape(-1, 1, n), dout.reshape(-1, n, 1))  # (rows, 1, 1): sum_j p_j g_j
        return (out * dout - self.matmul(out.reshape(-1, n, 1), row_dot).reshape(out.shape),)


class Softmax(PolicyCell):
    """Softmax over the last axis in the accurate dtype (autocast runs softmax in float32)."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu_softmax = _SoftmaxWithMatmulBackward()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = cast(x, self.accurate_dtype)
        if self.cpu_forms:
            return self.cpu_softmax(x)
        return ops.softmax(x, axis=-1)


class DropPath(PolicyCell):
    """Stochastic depth per sample, timm's drop_path (scale_by_keep=True): x * (bernoulli(keep) / keep).

    CPU form: the (B, 1, 1) factor applied by a batched matmul with inner size 1 (one exact product per
    element); broadcast elementwise kernels keep 16 bytes per element per call site, forward and backward.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.keep_prob = 1.0 - self.drop_prob
        self.matmul = ops.BatchMatMul()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        b = x.shape[0]
        # drawn in float32 (not every backend draws reduced types), then in x's dtype as timm's mask is
        mask = ops.floor(self.keep_prob + ops.rand((b, 1, 1), dtype=ms.float32))
        if self.keep_prob > 0.0:
            mask = mask / self.keep_prob
        mask = ops.stop_gradient(cast(mask, x.dtype))
        if self.cpu_forms:
            return self.matmul(mask, x.reshape(b, 1, -1)).reshape(x.shape)
        return x * mask


class LayerScale(PolicyCell):
    """x * gamma over the channels (DINOv2), in the residual dtype (a float16 x times float32 gamma promotes).

    CPU form: gamma is first spread to x's shape by a matmul with a ones column (exact), so the multiply has no
    broadcast (see DropPath).
    """

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = Parameter(initializer(float(init_values), (dim,), ms.float32), name="gamma")
        self.matmul = ops.MatMul()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = cast(x, self.residual_dtype)
        gamma = cast(self.gamma, x.dtype)
        if self.cpu_forms:
            dim = x.shape[-1]
            return x * self.matmul(ops.ones((x.size // dim, 1), x.dtype), gamma.reshape(1, dim)).reshape(x.shape)
        return x * gamma


class PatchProjection(PolicyCell):
    """torch's Conv2d(kernel=stride=patch) with a bias; the parameters keep the conv's shape.

    CPU form: a matmul over flattened patches (the same sums in another order); the CPU Conv2d kernel is slow.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.weight = Parameter(trunc_normal((embed_dim, in_chans, patch_size, patch_size)), name="weight")
        self.bias = Parameter(zeros((embed_dim,)), name="bias")
        self.matmul = ops.MatMul(transpose_b=True)
        # kernel and stride as pairs: MindSpore's ONNX exporter cannot convert the int spelling
        self.conv = ops.Conv2D(embed_dim, (patch_size, patch_size), stride=(patch_size, patch_size))
        self.bias_add = ops.BiasAdd()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        """(B, C, H, W) -> (B, N, D), patches in row-major order."""
        dtype = self.matmul_dtype
        x, weight, bias = cast(x, dtype), cast(self.weight, dtype), cast(self.bias, dtype)
        b, c, h, w = x.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        if self.cpu_forms:
            # (B, C, gh, p, gw, p) -> (B*gh*gw, C*p*p): each row one patch, flattened as the conv weight is
            x = x.reshape(b, c, gh, p, gw, p).transpose(0, 2, 4, 1, 3, 5).reshape(b * gh * gw, c * p * p)
            x = self.bias_add(self.matmul(x, weight.reshape(weight.shape[0], -1)), bias).reshape(b, gh * gw, -1)
        else:
            x = self.bias_add(self.conv(x, weight), bias).reshape(b, -1, gh * gw).transpose(0, 2, 1)
        return cast(x, self.matmul_out_dtype)


def split_heads(x: ms.Tensor, num_heads: int, cpu_form: bool) -> ms.Tensor:
    """(B, N, H * d) -> (B, H, N, d). CPU form: split and stack (copies only); the CPU Transpose kernel keeps
    an 8-byte index per element for every call site."""
    if cpu_form:
        return ops.stack(ops.split(x, x.shape[-1] // num_heads, axis=-1), axis=1)
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x: ms.Tensor, cpu_form: bool) -> ms.Tensor:
    """(B, H, N, d) -> (B, N, H * d), the inverse of split_heads."""
    if cpu_form:
        return ops.concat(ops.unstack(x, axis=1), axis=-1)
    b, h, n, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, n, h * d)
