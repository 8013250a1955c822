import random

import numpy as np
import pytest
from PIL import Image

from util_mindspore import transforms as T


def fundus_like(mode="RGB", size=(90, 70)):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    if mode == "I;16":
        return Image.fromarray((rng.random((size[1], size[0])) * 65535).astype(np.uint16))
    return rgb if mode == "RGB" else rgb.convert(mode)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK", "LA", "1"])
def test_any_image_mode_becomes_rgb(mode):
    img = T.to_rgb(fundus_like(mode))
    assert img.mode == "RGB" and img.size == (90, 70)
    assert np.asarray(img).max() > 0


def test_16_bit_greyscale_is_scaled_not_clipped():
    img = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert np.asarray(T.to_rgb(img)).min() == 255
    img = Image.fromarray(np.full((4, 4), 32768, np.uint16))
    assert abs(int(np.asarray(T.to_rgb(img))[0, 0, 0]) - 128) <= 1


@pytest.mark.parametrize("size", [64, 224, 256])
def test_eval_transform_equals_timm(size):
    timm_data = pytest.importorskip("timm.data", reason="timm is the reference for upstream's transforms")
    reference = timm_data.create_transform(size, is_training=False, interpolation="bicubic",
                                           crop_pct=224 / 256 if size <= 224 else 1.0)
    img = fundus_like(size=(300, 260))
    expected = reference(img).numpy()
    ours = T.EvalTransform(size)(img)
    assert ours.shape == expected.shape == (3, size, size)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_train_transform_shapes_and_erasing():
    transform = T.TrainTransform(48, aa="rand-m9-mstd0.5-inc1", reprob=1.0)
    out = transform(fundus_like(), random.Random(3))
    assert out.shape == (3, 48, 48) and out.dtype == np.float32 and np.isfinite(out).all()
    again = transform(fundus_like(), random.Random(3))
    np.testing.assert_array_equal(out, again)  # one seed, one augmentation


def test_randaugment_at_full_magnitude_never_asks_for_zero_bits():
    policy = T.RandAugment("rand-m10-n4-mstd0-inc1")
    policy.prob = 1.0
    img = fundus_like()
    rng = random.Random(0)
    for _ in range(300):  # every op, including PosterizeIncreasing at level 10 (timm: 0 bits)
        assert policy(img, rng).size == img.size


@pytest.mark.parametrize("policy", ["v0", "rand-m9-inc0", "rand-x3"])
def test_unknown_policies_are_refused(policy):
    with pytest.raises(ValueError, match="--aa"):
        T.RandAugment(policy)


def test_aa_empty_or_none_disables_randaugment():
    assert T.TrainTransform(32, aa="").randaugment is None
    assert T.TrainTransform(32, aa="none").randaugment is None
