"""Initializers that fill a parameter's own array on several threads: the weights and optimizer moments of ViT-L.

MindSpore creates a Parameter from an Initializer by allocating a numpy array and passing it to the initializer,
then sharing it (no copy). A fresh array costs its first writes page by page, and two threads write it several
times faster than one. Large arrays are therefore filled in a fixed number of chunks (fixed so that results do
not depend on the core count) on a small thread pool.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import numpy as np
from mindspore import Parameter, ParameterTuple
from mindspore.common.initializer import Initializer, initializer

CHUNKS = 4
_MIN_CHUNKED = 1 << 20  # elements; smaller arrays are filled in one piece on the calling thread
_pool = None


def fill_in_chunks(fill: Callable[[np.ndarray, int], None], arr: np.ndarray) -> None:
    """Call fill(piece, i) on the flat pieces i = 0, 1, ... of arr in parallel: CHUNKS pieces, one if arr is small."""
    global _pool
    pieces = np.array_split(arr.reshape(-1), CHUNKS if arr.size >= _MIN_CHUNKED else 1)
    if len(pieces) == 1:
        fill(pieces[0], 0)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(min(CHUNKS, os.cpu_count() or 1), "retfound-init")
    list(_pool.map(fill, pieces, range(len(pieces))))


class TruncNormal(Initializer):
    """timm's trunc_normal_(std, a, b) (absolute bounds), from numpy's global seed.

    Much faster than MindSpore's TruncatedNormal initializer for ViT-L's 300M weights; each chunk has a numpy
    generator of its own. The seed is taken from np.random when the initializer is made, so weights follow
    np.random.seed (util_mindspore.process.seeding.seed_everything) and every rank of a data-parallel run builds the
    same ones, on any machine.
    """

    def __init__(self, std: float = 0.02, a: float = -2.0, b: float = 2.0) -> None:
        super().__init__()
        self.std, self.a, self.b = float(std), float(a), float(b)
        self.entropy = np.random.randint(0, 2 ** 31, size=4).tolist()

    def _initialize(self, arr: np.ndarray) -> None:
        seeds = np.random.SeedSequence(self.entropy).spawn(CHUNKS)
        fill_in_chunks(lambda out, i: self._draw(out, seeds[i]), arr)

    def _draw(self, out: np.ndarray, seed: np.random.SeedSequence) -> None:
        rng = np.random.default_rng(seed)
        std = out.dtype.type(self.std)
        rng.standard_normal(out=out, dtype=out.dtype)  # releases the GIL
        out *= std
        while out.min() < self.a or out.max() > self.b:  # redraw values beyond the bounds (never seen at 0.02)
            outside = (out < self.a) | (out > self.b)
            out[outside] = rng.standard_normal(int(outside.sum()), dtype=out.dtype) * std


class XavierUniform(Initializer):
    """torch's xavier_uniform_ (gain 1) on the array seen as (shape[0], prod(shape[1:])): MAE's initialisation of its
    linear layers and patch projection. Seeded from np.random when made, as TruncNormal."""

    def __init__(self) -> None:
        super().__init__()
        self.entropy = np.random.randint(0, 2 ** 31, size=4).tolist()

    def _initialize(self, arr: np.ndarray) -> None:
        fan_out, fan_in = arr.shape[0], int(np.prod(arr.shape[1:]))
        bound = float(np.sqrt(6.0 / (fan_in + fan_out)))
        seeds = np.random.SeedSequence(self.entropy).spawn(CHUNKS)

        def draw(out: np.ndarray, i: int) -> None:
            out[...] = np.random.default_rng(seeds[i]).uniform(-bound, bound, out.shape)
        fill_in_chunks(draw, arr)


class WrittenZeros(Initializer):
    """Zeros written into the array, where MindSpore's 'zeros' keeps np.zeros' untouched pages.

    For buffers that kernels read before they write them (Adam moments, gradient accumulators). The CPU Adam
    kernel reads each moment before writing it. On untouched pages the read maps the kernel's shared
    zero page, and the write then copies it and flushes the TLB on every core, page by page: most of the first
    ViT-L train step (docs/PERFORMANCE.md).
    """

    def _initialize(self, arr: np.ndarray) -> None:
        fill_in_chunks(_write_zeros, arr)


def _write_zeros(out: np.ndarray, _: int) -> None:
    out[...] = 0


def written_zeros_like(params: Iterable[Parameter], prefix: str) -> ParameterTuple:
    """One zero Parameter per parameter, named prefix.<name>, its zeros written (see WrittenZeros)."""
    return ParameterTuple(Parameter(initializer(WrittenZeros(), p.shape, p.dtype), name=f"{prefix}.{p.name}")
                          for p in params)
