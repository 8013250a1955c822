"""torch.randperm's draws without torch: what --dataratio needs to pick upstream's images."""
import numpy as np
import pytest

from util_mindspore.process.seeding import TorchCPUGenerator

torch = pytest.importorskip("torch", reason="torch is the reference")


@pytest.mark.parametrize("seed", [0, 1, 2026, 2**31 - 1, 2**32 + 7, -5])
def test_randperm_equals_torch_index_for_index(seed):
    theirs, ours = torch.Generator().manual_seed(seed), TorchCPUGenerator(seed)
    for n in (0, 1, 2, 3, 17, 1000, 5):  # one generator, several draws in a row: the state carries over
        np.testing.assert_array_equal(ours.randperm(n), torch.randperm(n, generator=theirs).numpy())
