"""Choosing the device, the compiler's jit level and the AMP settings, refusing what this build cannot run.

Every refusal is one line that names the flag and what to do, before any model is built.
"""
import argparse
import logging
import os
import re
from typing import Optional, Tuple

import mindspore as ms
import numpy as np

from util_mindspore.errors import UserError

JIT_LEVELS = ("O0", "O1", "O2")
# upstream's (torch) spellings: --device cuda is its default
_ALIASES = {"cpu": "CPU", "gpu": "GPU", "cuda": "GPU", "ascend": "Ascend", "npu": "Ascend"}
_INSTALL = {"GPU": "MindSpore's GPU build for your CUDA version with its CUDA and cuDNN libraries",
            "Ascend": "MindSpore's Ascend build with the CANN toolkit matching your NPU driver"}


_MINDSPORE_PATH_VARIABLES = {"MS_OM_PATH", "MS_COMPILER_CACHE_PATH"}
_SET_BY_USER = {name for name in _MINDSPORE_PATH_VARIABLES if name in os.environ}


class DeviceError(UserError):
    """A device, AMP or jit setting this installation cannot run; the message is one line."""


def parse_device(value: Optional[str]) -> Tuple[Optional[str], Optional[int]]:
    """(target, device id or None) from --device: CPU, GPU, Ascend, cuda[:N], npu[:N] (any case)."""
    if value is None:
        return None, None
    match = re.fullmatch(r"([A-Za-z]+)(?::(\d+))?", value.strip())
    target = _ALIASES.get(match.group(1).lower()) if match else None
    if target is None:
        raise DeviceError(f"--device {value}: use CPU, GPU (or cuda, cuda:N) or Ascend (or npu, npu:N)")
    return target, int(match.group(2)) if match.group(2) else None


def _quiet_mindspore_log() -> Optional[logging.Logger]:
    """MindSpore's Python logger (it warns at length while probing a backend); None if it has not made one."""
    prefix = "ME.mindspore.log."
    names = [n for n in logging.Logger.manager.loggerDict if n.startswith(prefix)]
    return logging.getLogger(names[0]) if names else None


def backend_available(target: str) -> bool:
    """Whether this MindSpore installation can run on `target` here (its plugin loaded and found the device)."""
    if target == "CPU":
        return True
    log = _quiet_mindspore_log()
    level = log.level if log else None
    if log:
        log.setLevel(logging.CRITICAL)
    try:
        return bool(ms.hal.is_available(target))
    finally:
        if log:
            log.setLevel(level)


def bfloat16_supported() -> bool:
    """Whether the current device has a bfloat16 MatMul kernel (MindSpore 2.10's CPU backend has none)."""
    x = ms.Tensor(np.ones((2, 2), np.float32), ms.bfloat16)
    try:
        ms.ops.MatMul()(x, x).asnumpy()
    except (TypeError, RuntimeError):
        return False
    return True


def configure(args: argparse.Namespace) -> Tuple[str, str]:
    """Set MindSpore's mode, device and jit level from --device / --mode / --jit_level; refuse what cannot run here.

    Returns (device, amp_level): 'CPU', 'GPU' or 'Ascend', and --amp_level with `auto` resolved (O0 on CPU, O2 on
    an accelerator). `args` is left as parsed.
    """
    current = ms.get_context("device_target")
    target, device_id = parse_device(args.device)
    target = target or current
    if target != current and not backend_available(target):
        raise DeviceError(
            f"--device {args.device}: this MindSpore {ms.__version__} installation cannot run on {target} here "
            f"(its {target} backend did not load: no {target} or its libraries found); install "
            f"{_INSTALL[target]} (https://www.mindspore.cn/install), or run with --device CPU")
    ms.set_context(mode=ms.GRAPH_MODE if getattr(args, "mode", "graph") == "graph" else ms.PYNATIVE_MODE)
    if target != current or device_id is not None:  # refused once a kernel ran (a second run in one process)
        ms.set_device(target, device_id)
    jit_level = getattr(args, "jit_level", None)
    if jit_level:
        if jit_level not in JIT_LEVELS:
            raise DeviceError(f"--jit_level must be one of {', '.join(JIT_LEVELS)} (got {jit_level})")
        ms.set_context(jit_config={"jit_level": jit_level})
    amp_level = args.amp_level
    if amp_level == "auto":  # float16 is slower than float32 on CPUs; accelerators train as upstream on CUDA
        amp_level = "O0" if target == "CPU" else "O2"
    if amp_level != "O0" and args.amp_dtype == "bfloat16" and not bfloat16_supported():
        raise DeviceError(f"--amp_dtype bfloat16: MindSpore {ms.__version__} has no bfloat16 MatMul kernel on "
                          f"{target}; use --amp_dtype float16, or --amp_level O0 (float32)")
    return target, amp_level


def keep_mindspore_files_in(folder: str) -> None:
    """Send what MindSpore writes relative to the working directory (rank_<n>/om/analyze_fail.ir on a compile
    error, kernel_meta/ of GPU and Ascend kernel builds) to `folder`, unless the user set MindSpore's own
    variables. MindSpore creates the folder only when it writes there."""
    for name in _MINDSPORE_PATH_VARIABLES - _SET_BY_USER:
        os.environ[name] = folder
