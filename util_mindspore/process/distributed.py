"""Data parallelism under msrun: the process group, and the few collectives the training loop needs.

MindSpore is imported only under msrun, so a prediction from an exported file (ONNX, OpenVINO) runs without it.
"""
import argparse
import functools
import logging
import os
from typing import TYPE_CHECKING, Tuple

import numpy as np

if TYPE_CHECKING:
    import mindspore as ms

logger = logging.getLogger("retfound")


def launched_by_msrun() -> bool:
    return "MS_WORKER_NUM" in os.environ or "MS_ROLE" in os.environ


def init_distributed_mode() -> Tuple[bool, int, int]:
    """Under msrun: initialise collectives (NCCL on GPU, HCCL on Ascend, MCCL on CPU) and data parallelism.
    Returns (distributed, rank, world_size)."""
    if not launched_by_msrun():
        return False, 0, 1
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init
    init()
    rank, world_size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=world_size)
    logger.info("distributed: rank %d of %d", rank, world_size)
    return True, rank, world_size


def is_main_process(args: argparse.Namespace) -> bool:
    return getattr(args, "rank", 0) == 0


@functools.cache
def _collective(name: str) -> "ms.nn.Cell":
    """A collective as a compiled cell (the comm_func (pyboost) ops have no CPU kernels in MindSpore 2.10):
    AllReduce (sum) or AllGather (the ranks' tensors concatenated along axis 0)."""
    import mindspore as ms

    class Collective(ms.nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.op = getattr(ms.ops, name)()

        def construct(self, x: ms.Tensor) -> ms.Tensor:
            return self.op(x)
    return Collective()


def _run_collective(name: str, array: np.ndarray) -> np.ndarray:
    import mindspore as ms
    return _collective(name)(ms.Tensor(array)).asnumpy()


def barrier(args: argparse.Namespace) -> None:
    """Every rank waits here until all arrive (a 1-element all-reduce)."""
    if getattr(args, "distributed", False):
        _run_collective("AllReduce", np.zeros(1, np.float32))


def all_gather_rows(array: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """Concatenate every rank's rows (rank order); ranks may hold different numbers of rows."""
    if not getattr(args, "distributed", False):
        return array
    array = np.asarray(array)
    counts = _run_collective("AllGather", np.array([len(array)], np.int32)).reshape(-1)
    longest = max(int(counts.max()), 1)
    padded = np.zeros((longest,) + array.shape[1:], dtype=array.dtype)  # equal shapes on every rank
    padded[:len(array)] = array
    gathered = _run_collective("AllGather", padded).reshape((len(counts), longest) + array.shape[1:])
    return np.concatenate([part[:count] for part, count in zip(gathered, counts)])


def all_reduce_max(value: int, args: argparse.Namespace) -> int:
    """The largest of the ranks' integers (what a stop request agrees on: every rank stops at the same step)."""
    if not getattr(args, "distributed", False):
        return value
    return int(all_gather_rows(np.array([value], np.int64), args).max())


def all_reduce_mean(value: float, args: argparse.Namespace) -> float:
    if not getattr(args, "distributed", False):
        return value
    total = _run_collective("AllReduce", np.array([value], np.float32))
    return float(total[0]) / args.world_size
