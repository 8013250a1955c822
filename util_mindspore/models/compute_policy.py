"""How our cells compute: the dtype of each op family (mixed precision) and which kernel forms they use.

One policy object is set on every cell of a model (`apply_policy`), so precision is a property of our own
cells, stated here, and not of MindSpore's AMP cell lists (`ms.amp.auto_mixed_precision` also wraps the
model in a Cell that renames its parameters `_backbone.*` and hides its methods).

Levels, with `low` = --amp_dtype (float16 or bfloat16); parameters always stay float32 (master weights):

| level | matmuls (linear, patch, attention) | matmul outputs | LayerNorm, softmax, GELU's math | residual stream |
|-------|------------------------------------|----------------|---------------------------------|-----------------|
| O0    | float32                            | float32        | float32                         | float32         |
| O1    | low                                | float32        | float32                         | float32         |
| O2    | low                                | low            | float32                         | float32         |
| O3    | low                                | low            | low                             | low             |

O2 is torch.cuda.amp.autocast(), which upstream trains under on every GPU: linear / matmul / conv in float16,
layer_norm and softmax in float32, other ops in the dtype they receive, and the residual stream float32
because a float16 branch added to a float32 tensor promotes. The loss is always computed in float32.

Kernel forms: the `cpu` forms avoid kernels whose MindSpore 2.10 CPU versions hold large per-call-site tables
(see util_mindspore/models/layers.py); GPU and Ascend get the `plain` forms. Both compute the same function. The `onnx`
forms are the plain forms written with ops MindSpore's ONNX exporter can write (util_mindspore/inference/export.py).
"""
import dataclasses
from typing import Any

import mindspore as ms

from util_mindspore.errors import ArgumentError

AMP_LEVELS = ("O0", "O1", "O2", "O3")
AMP_DTYPES = {"float16": ms.float16, "bfloat16": ms.bfloat16}
# the spacing of the reduced types at 1 (float16 keeps 10 mantissa bits, bfloat16 7)
REDUCED_EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}
# how far reduced-precision outputs may be from float32's, in units of REDUCED_EPS at the outputs' magnitude: one
# unit of rounding at each matmul and normalisation, carried through a ViT-L's depth, stays within it
REDUCED_TOLERANCE_UNITS = 8


def reduced_precision_tolerance(amp_dtype: str, magnitude: float) -> float:
    """The largest |reduced - float32| difference of outputs of this magnitude (taken as at least 1) that is
    rounding: what the export check and the device self-check allow."""
    return REDUCED_TOLERANCE_UNITS * REDUCED_EPS[amp_dtype] * max(1.0, float(magnitude))


@dataclasses.dataclass(frozen=True)
class ComputePolicy:
    matmul: object = ms.float32  # dtype the inputs of matmuls are cast to
    matmul_out: object = ms.float32  # dtype matmul results are left in
    accurate: object = ms.float32  # LayerNorm and softmax outputs; the internal math of GELU
    residual: object = ms.float32  # the token stream between blocks
    cpu_forms: bool = True
    onnx_forms: bool = False  # plain forms for ONNX export; needs cpu_forms=False

    @property
    def reduced(self) -> bool:
        return self.matmul != ms.float32


def policy_for(amp_level: str = "O0", amp_dtype: str = "float16", device: str = "CPU") -> ComputePolicy:
    """The policy of an --amp_level / --amp_dtype pair on a device ('CPU', 'GPU' or 'Ascend')."""
    if amp_level not in AMP_LEVELS:
        raise ArgumentError(f"--amp_level must be one of {', '.join(AMP_LEVELS)} (got {amp_level})")
    if amp_dtype not in AMP_DTYPES:
        raise ArgumentError(f"--amp_dtype must be one of {', '.join(AMP_DTYPES)} (got {amp_dtype})")
    low, full = AMP_DTYPES[amp_dtype], ms.float32
    dtypes = {"O0": (full, full, full, full), "O1": (low, full, full, full), "O2": (low, low, full, full),
              "O3": (low, low, low, low)}[amp_level]
    return ComputePolicy(*dtypes, cpu_forms=device == "CPU")


def needs_loss_scaling(amp_level: str, amp_dtype: str) -> bool:
    """float16 gradients need GradScaler's loss scaling; float32 (O0) and bfloat16 train unscaled, as torch does
    (upstream's GradScaler disables itself where CUDA autocast is off)."""
    return amp_level != "O0" and amp_dtype == "float16"


class PolicyCell(ms.nn.Cell):
    """A cell that reads its dtypes and kernel form from a ComputePolicy (float32, CPU forms until told)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_policy(ComputePolicy())

    def set_policy(self, policy: ComputePolicy) -> None:
        # plain attributes: graph mode folds them as constants (a Python object's fields would not be)
        self.matmul_dtype = policy.matmul
        self.matmul_out_dtype = policy.matmul_out
        self.accurate_dtype = policy.accurate
        self.residual_dtype = policy.residual
        self.cpu_forms = policy.cpu_forms
        self.onnx_forms = policy.onnx_forms


def apply_policy(model: ms.nn.Cell, policy: ComputePolicy) -> ms.nn.Cell:
    """Set `policy` on every PolicyCell of `model`; parameters and their names are untouched. Call it before the
    model's first call in graph mode: a compiled graph keeps the dtypes it was compiled with."""
    for _, cell in model.cells_and_names():
        if isinstance(cell, PolicyCell):
            cell.set_policy(policy)
    return model


def cast(x: ms.Tensor, dtype: ms.Type) -> ms.Tensor:
    """x in dtype; no Cast op when it already is (x.dtype is a compile-time constant in graph mode)."""
    return x if x.dtype == dtype else x.astype(dtype)
