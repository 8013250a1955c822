"""One seed for Python, numpy and MindSpore: weights are drawn from numpy's (util_mindspore/models/initializers.py), so
every rank of a data-parallel run that seeds alike builds the same initial model."""
import random

import numpy as np


def seed_everything(seed: int) -> None:
    import mindspore as ms  # here, not at import: the data pipeline uses this module without MindSpore

    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)


class TorchCPUGenerator:
    """torch.Generator().manual_seed(seed)'s draws for torch.randperm, without torch.

    torch's CPU generator is mt19937 seeded with the low 32 bits of the seed (the standard init_genrand, which is
    numpy's legacy RandomState seeding too); randperm(n) (n below 2**32 / 20) is a Fisher-Yates shuffle that
    swaps position i with i + (next 32-bit draw mod (n - i)). Checked index for index against torch in
    tests/process/test_seeding.py.
    """

    def __init__(self, seed: int) -> None:
        self._bits = np.random.RandomState(int(seed) & 0xFFFFFFFF)._bit_generator

    def randperm(self, n: int) -> np.ndarray:
        perm = np.arange(n, dtype=np.int64)
        if n > 1:
            draws = self._bits.random_raw(n - 1).astype(np.int64)
            for i, draw in enumerate(draws.tolist()):
                j = i + draw % (n - i)
                perm[i], perm[j] = perm[j], perm[i]
        return perm
