import numpy as np
import pytest

from util_mindspore.mixup import Mixup, one_hot


def test_one_hot_smoothing_as_timm():
    t = one_hot(np.array([2, 0]), 4, smoothing=0.1)
    np.testing.assert_allclose(t[0], [0.025, 0.025, 0.925, 0.025])
    np.testing.assert_allclose(t.sum(1), 1.0)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_mixup_images_and_targets_agree(mode):
    rng = np.random.default_rng(0)
    x = rng.random((6, 3, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    mixed, soft = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, mode=mode, label_smoothing=0.0, num_classes=3, seed=1)(x, y)
    for i in range(6):
        j = 5 - i
        lam = soft[i, y[i]] if y[i] != y[j] else None
        if lam is not None:
            np.testing.assert_allclose(mixed[i], lam * x[i] + (1 - lam) * x[j], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)


def test_cutmix_lambda_is_the_pasted_area():
    x = np.zeros((2, 1, 10, 10), np.float32)
    x[1] = 1.0
    mixed, soft = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=2, seed=3)(
        x, np.array([0, 1]))
    pasted = mixed[0].mean()
    np.testing.assert_allclose(soft[0], [1 - pasted, pasted], atol=1e-6)


def test_pair_mode_needs_an_even_batch():
    with pytest.raises(ValueError, match="even"):
        Mixup(mode="pair", num_classes=2)(np.zeros((3, 1, 4, 4), np.float32), np.array([0, 1, 0]))
