import random

import numpy as np
import pytest
from PIL import Image

from util_mindspore.data import transforms as T
from util_mindspore.errors import ArgumentError


def fundus_like(mode="RGB", size=(90, 70)):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    if mode == "I;16":
        return Image.fromarray((rng.random((size[1], size[0])) * 65535).astype(np.uint16))
    return rgb if mode == "RGB" else rgb.convert(mode)


PILLOW_MODES = ["1", "L", "LA", "P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F"]


def odd_mode_image(mode, size=(9, 7)):
    """An image of `mode` holding varied values (beyond 8 bits where the mode allows)."""
    rng = np.random.default_rng(1)
    if mode in ("I", "F"):
        return Image.fromarray((rng.random((size[1], size[0])) * 70000 - 1000).astype(
            np.int32 if mode == "I" else np.float32), mode)
    if mode.startswith("I;16"):
        return Image.fromarray((rng.random((size[1], size[0])) * 65535).astype(np.uint16)).convert(mode)
    rgba = Image.fromarray((rng.random((size[1], size[0], 4)) * 255).astype(np.uint8), "RGBA")
    return rgba if mode == "RGBA" else rgba.convert(mode)


@pytest.mark.parametrize("mode", PILLOW_MODES)
def test_decode_is_upstreams_convert_rgb_for_every_mode(mode, tmp_path):
    """upstream's loader is Image.open(path).convert('RGB'): the same pixels for every mode Pillow opens."""
    img = odd_mode_image(mode)
    ours = T.to_rgb(img)
    assert ours.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(img.convert("RGB")))


def test_alpha_is_dropped_not_composited():
    img = Image.new("RGBA", (2, 2), (200, 100, 50, 0))  # fully transparent
    assert np.asarray(T.to_rgb(img))[0, 0].tolist() == [200, 100, 50]


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


def test_aa_empty_or_none_disables_the_policy():
    assert T.TrainTransform(32, aa="").augment is None
    assert T.TrainTransform(32, aa="none").augment is None


@pytest.mark.parametrize("mode", ["const", "rand", "pixel"])
@pytest.mark.parametrize("count", [1, 3])
def test_random_erasing_boxes_equal_timms(mode, count):
    """The same Python random state erases the same boxes as timm's RandomErasing; the fills follow the mode."""
    torch = pytest.importorskip("torch")
    from timm.data.random_erasing import RandomErasing
    base = np.random.default_rng(0).standard_normal((3, 40, 48)).astype(np.float32) + 10.0  # never near a fill
    for seed in range(20):
        random.seed(seed)
        torch.manual_seed(seed)
        expected = RandomErasing(0.7, mode=mode, max_count=count, device="cpu")(torch.from_numpy(base.copy()))
        ours = T.random_erasing(base.copy(), random.Random(seed), 0.7, mode, count)
        erased_theirs, erased_ours = expected.numpy() != base, ours != base
        np.testing.assert_array_equal(erased_ours, erased_theirs)
        if mode == "const":
            np.testing.assert_array_equal(ours, expected.numpy())
        if mode == "rand" and erased_ours.any():  # one value per channel within a box
            values = ours[:, erased_ours.any(axis=0)]
            assert all(len(np.unique(channel)) <= count for channel in values)


def test_unknown_erase_mode_is_refused():
    with pytest.raises(ArgumentError, match="--remode 'cube'"):
        T.TrainTransform(32, remode="cube")


def test_color_jitter_equals_torchvision_for_the_same_draws():
    F = pytest.importorskip("torchvision.transforms.functional")
    img = fundus_like(size=(40, 30))
    adjust = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation]
    for order, factors in [([0, 1, 2, 3], [0.7, 1.3, 1.1]), ([3, 2, 0, 1], [1.35, 0.65, 0.9])]:
        expected = img
        for slot in order:
            if slot < 3:
                expected = adjust[slot](expected, factors[slot])
        np.testing.assert_array_equal(np.asarray(T.apply_color_jitter(img, order, factors)), np.asarray(expected))


def test_color_jitter_only_without_a_policy_as_timm():
    timm_data = pytest.importorskip("timm.data")
    for aa, jitter in [("", 0.4), ("rand-m9-mstd0.5-inc1", 0.4), ("3a", 0.4), ("", None)]:
        reference = timm_data.create_transform(32, is_training=True, auto_augment=aa or None, color_jitter=jitter,
                                               interpolation="bicubic")
        timm_has = any(type(t).__name__ == "ColorJitter" for t in reference.transforms)
        assert (T.TrainTransform(32, aa=aa, color_jitter=jitter).jitter is not None) == timm_has, aa
    img = fundus_like(size=(40, 30))
    jittered = T.TrainTransform(32, aa="", reprob=0, color_jitter=0.4)(img, random.Random(5))
    plain = T.TrainTransform(32, aa="", reprob=0)(img, random.Random(5))
    assert np.abs(jittered - plain).max() > 0.01


@pytest.mark.parametrize("size,input_size", [((40, 32), 32), ((48, 40), 32), ((224, 224), 224), ((640, 480), 224),
                                             ((3000, 2000), 224)])
def test_training_transform_equals_timms_pixel_for_pixel_on_the_same_draws(size, input_size):
    """timm 0.9.2's create_transform(is_training=True) without a policy or erasing: RandomResizedCrop (crop, then
    resize: bicubic), flip, ToTensor, Normalize. Its crop draws come from Python's random; the flip from torch's, so
    ours is compared with timm's flipped and unflipped outputs for the draw our generator made."""
    timm_data = pytest.importorskip("timm.data")
    rng = np.random.default_rng(size[0])
    img = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    ours_transform = T.TrainTransform(input_size, aa="", reprob=0.0)
    for seed in range(4):
        expected = {}
        for flip in (0.0, 1.0):
            reference = timm_data.create_transform(input_size, is_training=True, auto_augment=None, re_prob=0.0,
                                                   hflip=flip, interpolation="bicubic", color_jitter=None)
            random.seed(seed)
            expected[flip] = reference(img).numpy()
        draws = random.Random(seed)
        T.random_resized_crop_box(size[0], size[1], draws)
        flipped = draws.random() < 0.5
        ours = ours_transform(img, random.Random(seed))
        np.testing.assert_allclose(ours, expected[1.0 if flipped else 0.0], rtol=0, atol=1e-6)
        picture = T.resized_crop(img, T.random_resized_crop_box(size[0], size[1], random.Random(seed)), input_size)
        random.seed(seed)
        crop = timm_data.transforms.RandomResizedCropAndInterpolation(input_size, interpolation="bicubic")(img)
        np.testing.assert_array_equal(np.asarray(picture), np.asarray(crop))  # the pixels themselves


def test_pretraining_transform_is_upstreams_with_its_crop_scale():
    """main_pretrain.py: RandomResizedCrop(scale 0.2-1, bicubic), flip, normalise; the same draws give
    torchvision's crop (its own parameters through random_resized_crop_box) pixel for pixel."""
    F = pytest.importorskip("torchvision.transforms.functional")
    img = fundus_like(size=(300, 200))
    transform = T.PretrainTransform(64)
    for seed in range(5):
        left, top, right, bottom = T.random_resized_crop_box(300, 200, random.Random(seed), scale=(0.2, 1.0))
        assert (right - left) * (bottom - top) >= 0.2 * 300 * 200 * 0.9  # the scale's floor (rounding aside)
        draws = random.Random(seed)
        T.random_resized_crop_box(300, 200, draws, scale=(0.2, 1.0))
        flipped = draws.random() < 0.5
        expected = F.resized_crop(img, top, left, bottom - top, right - left, [64, 64],
                                  interpolation=F.InterpolationMode.BICUBIC)
        if flipped:
            expected = F.hflip(expected)
        expected = F.normalize(F.to_tensor(expected), T.IMAGENET_MEAN, T.IMAGENET_STD).numpy()
        np.testing.assert_allclose(transform(img, random.Random(seed)), expected, rtol=0, atol=1e-6)
