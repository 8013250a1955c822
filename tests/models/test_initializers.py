import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter
from mindspore.common.initializer import initializer

from tests.helpers import ROOT
from util_mindspore.models import initializers
from util_mindspore.models.initializers import TruncNormal
from util_mindspore.training.optim import AdamW

BIG = (1024, 1024)  # large enough to be drawn in chunks on the thread pool


def draw(shape, seed, **kwargs):
    np.random.seed(seed)
    return Parameter(initializer(TruncNormal(**kwargs), shape, ms.float32), name="w").asnumpy()


def test_trunc_normal_follows_numpy_seed_and_not_the_number_of_threads(monkeypatch):
    two_threads = draw(BIG, 3)
    monkeypatch.setattr(initializers, "_pool", ThreadPoolExecutor(1))
    one_thread = draw(BIG, 3)
    np.testing.assert_array_equal(one_thread, two_threads)
    assert not np.array_equal(draw(BIG, 4), two_threads)
    chunks = np.array_split(two_threads.reshape(-1), initializers.CHUNKS)
    assert not np.array_equal(chunks[0], chunks[1])  # every chunk has a generator of its own


@pytest.mark.parametrize("shape", [BIG, (3, 192)])
def test_trunc_normal_has_timm_statistics(shape):
    values = draw(shape, 0, std=0.02)
    assert values.dtype == np.float32
    assert abs(values.std() - 0.02) < 0.02 * (0.01 if values.size > 1e5 else 0.2)
    assert abs(values.mean()) < 0.02 * (0.01 if values.size > 1e5 else 0.2)


def test_trunc_normal_redraws_values_beyond_the_bounds():
    values = draw(BIG, 0, std=0.02, a=-0.01, b=0.01)  # bounds at half a std: most first draws fall outside
    assert values.min() >= -0.01 and values.max() <= 0.01
    # a normal truncated at +-0.5 std is nearly flat: about a quarter of its values lie within +-0.125 std
    assert 0.23 < np.mean(np.abs(values) < 0.0025) < 0.27


_RESIDENT_AFTER_ADAMW = """
import os
import subprocess
import sys
import numpy as np
import mindspore as ms
from mindspore import Parameter
from util_mindspore.training.optim import AdamW
from tests.helpers import ROOT

def resident_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

param = Parameter(ms.Tensor(np.ones((4096, 4096), np.float32)), name="w")  # 64 MB
before = resident_mb()
optimizer = AdamW([param], [1.0], [0.05])
print(resident_mb() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc")
def test_adamw_moments_are_zeros_already_written_to_memory():
    """Moments on untouched pages cost the first train step 10 s on ViT-L (see WrittenZeros): they must be
    resident, with zeros, as soon as the optimizer exists. Measured in a fresh process: in a long one, freed
    pages that are still resident would make the growth look smaller."""
    done = subprocess.run([sys.executable, "-c", _RESIDENT_AFTER_ADAMW], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    grown = float(done.stdout.split()[-1])
    assert grown > 2 * 64 * 0.9, f"moments not resident: RSS grew {grown:.0f} MB for 128 MB of moments"
    param = Parameter(ms.Tensor(np.ones((4, 4), np.float32)), name="w")
    optimizer = AdamW([param], [1.0], [0.05])
    assert [p.name for p in optimizer.exp_avg] == ["optimizer.exp_avg.w"]
    assert [p.name for p in optimizer.exp_avg_sq] == ["optimizer.exp_avg_sq.w"]
    assert not optimizer.exp_avg[0].asnumpy().any() and not optimizer.exp_avg_sq[0].asnumpy().any()
