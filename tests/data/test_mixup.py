"""Mixup / CutMix against timm 0.9.2's Mixup on the same draws: images, soft targets, every mode."""
import numpy as np
import pytest

from util_mindspore.data.mixup import Mixup, one_hot
from util_mindspore.errors import ArgumentError


def test_one_hot_smoothing_as_timm():
    t = one_hot(np.array([2, 0]), 4, smoothing=0.1)
    np.testing.assert_allclose(t[0], [0.025, 0.025, 0.925, 0.025])
    np.testing.assert_allclose(t.sum(1), 1.0)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("mixup,cutmix,minmax", [(0.8, 0.0, None), (0.0, 1.0, None), (0.8, 1.0, None),
                                                 (0.0, 0.0, (0.3, 0.8))])
def test_images_and_targets_equal_timms_on_the_same_draws(monkeypatch, mode, mixup, cutmix, minmax):
    """timm draws from numpy's global generator seeded s; ours from RandomState(s): the same lambdas, boxes and
    switches, so identical images and targets (timm's pair / elem modes need numpy's removed np.bool back)."""
    torch = pytest.importorskip("torch")
    from timm.data.mixup import Mixup as TimmMixup
    monkeypatch.setattr(np, "bool", bool, raising=False)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        images = rng.standard_normal((6, 3, 16, 16)).astype(np.float32)
        labels = rng.integers(0, 4, 6)
        np.random.seed(seed)
        theirs = TimmMixup(mixup_alpha=mixup, cutmix_alpha=cutmix, cutmix_minmax=minmax, prob=0.8, switch_prob=0.5,
                           mode=mode, label_smoothing=0.1, num_classes=4)
        expected_images, expected_targets = theirs(torch.from_numpy(images.copy()), torch.from_numpy(labels))
        ours = Mixup(mixup, cutmix, minmax, 0.8, 0.5, mode, 0.1, 4, seed=seed)
        mixed, targets = ours(images.copy(), labels)
        np.testing.assert_array_equal(mixed, expected_images.numpy())
        np.testing.assert_array_equal(targets, expected_targets.numpy())


def test_an_odd_batch_is_refused_in_one_line_as_timm_asserts():
    with pytest.raises(ArgumentError, match="even --batch_size"):
        Mixup(mode="pair", num_classes=2)(np.zeros((3, 1, 4, 4), np.float32), np.array([0, 1, 0]))
