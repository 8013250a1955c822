"""Data parallelism under msrun: the process group, and the few collectives the training loop needs."""
import logging
import os

import mindspore as ms
import numpy as np

logger = logging.getLogger("retfound")


def launched_by_msrun():
    return "MS_WORKER_NUM" in os.environ or "MS_ROLE" in os.environ


def init_distributed_mode(args):
    """Under msrun: initialise collectives (NCCL on GPU, HCCL on Ascend, MCCL on CPU) and data parallelism."""
    args.distributed = launched_by_msrun()
    if not args.distributed:
        args.rank, args.world_size = 0, 1
        return
    from mindspore.communication import get_group_size, get_rank, init
    init()
    args.rank, args.world_size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=args.world_size)
    logger.info("distributed: rank %d of %d", args.rank, args.world_size)


def is_main_process(args):
    return getattr(args, "rank", 0) == 0


class _AllReduceSum(ms.nn.Cell):
    """Collectives as compiled cells: the comm_func (pyboost) ops have no CPU kernels in MindSpore 2.10."""

    def __init__(self):
        super().__init__()
        self.op = ms.ops.AllReduce()

    def construct(self, x):
        return self.op(x)


class _AllGather(ms.nn.Cell):
    def __init__(self):
        super().__init__()
        self.op = ms.ops.AllGather()  # concatenates the ranks' tensors along axis 0

    def construct(self, x):
        return self.op(x)


def barrier(args):
    """Every rank waits here until all arrive (a 1-element all-reduce)."""
    if getattr(args, "distributed", False):
        _AllReduceSum()(ms.Tensor(np.zeros(1, np.float32))).asnumpy()


def all_gather_rows(array, args):
    """Concatenate every rank's rows (rank order); ranks may hold different numbers of rows."""
    if not getattr(args, "distributed", False):
        return array
    array = np.asarray(array)
    counts = _AllGather()(ms.Tensor(np.array([len(array)], np.int32))).asnumpy().reshape(-1)
    longest = max(int(counts.max()), 1)
    padded = np.zeros((longest,) + array.shape[1:], dtype=array.dtype)  # equal shapes on every rank
    padded[:len(array)] = array
    gathered = _AllGather()(ms.Tensor(padded)).asnumpy().reshape((len(counts), longest) + array.shape[1:])
    return np.concatenate([part[:count] for part, count in zip(gathered, counts)])


def all_reduce_max(value, args):
    """The largest of the ranks' integers (what a stop request agrees on: every rank stops at the same step)."""
    if not getattr(args, "distributed", False):
        return value
    return int(all_gather_rows(np.array([value], np.int64), args).max())


def all_reduce_mean(value, args):
    if not getattr(args, "distributed", False):
        return value
    total = _AllReduceSum()(ms.Tensor(np.array([value], np.float32))).asnumpy()
    return float(total[0]) / args.world_size
