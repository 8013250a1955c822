"""Process-level helpers: distributed context under msrun, seeding, and training checkpoints.

A training checkpoint (.ckpt; read back by weight_converter.read_ckpt) holds the model parameters under their
PyTorch names (so it is also a valid --finetune source), `optimizer.*` moments and step, `loss_scale.*`, and
epoch / best score / class names / args. It is written to a temp file and renamed, by rank 0 only.
"""
import hashlib
import json
import os
import random

import mindspore as ms
import numpy as np

from util_mindspore.weight_converter import save_arrays_ckpt

CHECKPOINT_FORMAT = "retfound-mindspore-train-1"


# --- compile cache ----------------------------------------------------------------------------------------

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_compile_cache_claimed = False


def _project_sources():
    scripts = [os.path.join(_ROOT, f) for f in sorted(os.listdir(_ROOT)) if f.endswith(".py")]
    utils = os.path.join(_ROOT, "util_mindspore")
    return scripts + [os.path.join(utils, f) for f in sorted(os.listdir(utils)) if f.endswith(".py")]


def enable_compile_cache(cache_root, key):
    """Turn on MindSpore's compile cache in a directory of its own for this code and these settings.

    MindSpore re-checks only the scripts outside sys.path, and an installed project is inside it: left alone
    it would load a graph compiled from an older models_vit_mindspore.py. So the directory name hashes the
    MindSpore version, every source file of ours and `key` (the settings that shape the graphs); any change
    compiles afresh into a new directory. MindSpore numbers cached graphs in compile order within a process,
    so only the first run of a process uses the cache (a second in-process run would misnumber them).
    cache_root None turns the cache off. Returns the directory, or None when the cache is off.
    """
    global _compile_cache_claimed
    if _compile_cache_claimed or not cache_root:
        ms.set_context(enable_compile_cache=False)
        return None
    _compile_cache_claimed = True
    digest = hashlib.sha256(ms.__version__.encode())
    for path in _project_sources():
        with open(path, "rb") as fh:
            digest.update(os.path.relpath(path, _ROOT).encode() + b"\0" + fh.read())
    digest.update(json.dumps(key, sort_keys=True, default=str).encode())
    path = os.path.join(cache_root, digest.hexdigest()[:20])
    os.makedirs(path, exist_ok=True)
    ms.set_context(enable_compile_cache=True, compile_cache_path=path)
    return path


# --- distributed ------------------------------------------------------------------------------------------

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
    print(f"distributed: rank {args.rank} of {args.world_size}")


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


def all_reduce_mean(value, args):
    if not getattr(args, "distributed", False):
        return value
    total = _AllReduceSum()(ms.Tensor(np.array([value], np.float32))).asnumpy()
    return float(total[0]) / args.world_size


def write_weights_digest(model, args):
    """Test hook: with RETFOUND_MS_DIGEST_DIR set, each rank writes the sha256 of its weights (rank<r>.txt)."""
    folder = os.environ.get("RETFOUND_MS_DIGEST_DIR")
    if not folder:
        return
    import hashlib
    digest = hashlib.sha256()
    for name, param in model.parameters_and_names():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(param.asnumpy()).tobytes())
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"rank{args.rank}.txt"), "w") as fh:
        fh.write(digest.hexdigest())


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)


# --- checkpoints ------------------------------------------------------------------------------------------

def _jsonable_args(args):
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}


def save_model(path, model, train_step, epoch, best_score, class_names, args):
    """Model + optimizer + loss scale + epoch + best score + class names + args, atomically."""
    arrays = {name: p.asnumpy() for name, p in model.parameters_and_names()}
    if train_step is not None:
        arrays.update({p.name: p.asnumpy() for p in train_step.state_parameters()})
    meta = {"format": CHECKPOINT_FORMAT, "class_names": list(class_names), "args": _jsonable_args(args),
            "model": args.model}
    save_arrays_ckpt(arrays, path, append_dict={"epoch": int(epoch), "best_score": float(best_score),
                                                "meta": json.dumps(meta)})
