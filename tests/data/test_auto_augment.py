"""Every `--aa` policy against timm 0.9.2 (what upstream's create_transform runs): op by op and policy by policy,
given the same Python and numpy random states, pixel for pixel."""
import math
import random

import numpy as np
import pytest
from PIL import Image

from util_mindspore.data import auto_augment as A
from util_mindspore.data.transforms import IMAGENET_MEAN
from util_mindspore.errors import ArgumentError

timm_aa = pytest.importorskip("timm.data.auto_augment", reason="timm 0.9.2 is the reference for --aa")

SIZE = 48


def picture(seed=0, size=SIZE):
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(rng.random((size, size, 3)), axis=1)
    return Image.fromarray((smooth / smooth.max() * 255).astype(np.uint8))


def timm_hparams(translate_pct=None):
    """What timm's create_transform(interpolation='bicubic') hands its policies."""
    hparams = dict(translate_const=int(SIZE * 0.45), img_mean=tuple(min(255, round(255 * x)) for x in IMAGENET_MEAN),
                   interpolation=Image.BICUBIC)
    if translate_pct is not None:
        hparams["translate_pct"] = translate_pct
    return hparams


def same(ours, theirs):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


@pytest.mark.parametrize("name", sorted(timm_aa.NAME_TO_OP))
def test_each_op_equals_timms(name):
    assert name in A.OPS
    img = picture()
    for magnitude in (0, 3, 7, 10):
        for std in (0.0, 0.5, math.inf):
            for seed in range(4):
                theirs_op = timm_aa.AugmentOp(name, prob=0.8, magnitude=magnitude,
                                              hparams=dict(timm_hparams(), magnitude_std=std))
                random.seed(seed)
                try:
                    theirs = theirs_op(img)
                except ValueError as exc:  # timm asks Pillow >= 13 for 0 bits; ours keeps 1 (tested below)
                    assert name.startswith("Posterize") and "bits" in str(exc)
                    continue
                ours = A.AugmentOp(name, 0.8, magnitude, A.hparams_for(SIZE, IMAGENET_MEAN), std)(
                    img, random.Random(seed))
                same(ours, theirs)


def test_posterize_keeps_one_bit_where_timm_asks_for_none():
    img = picture()
    ours = A.AugmentOp("PosterizeIncreasing", 1.0, 10, A.hparams_for(SIZE, IMAGENET_MEAN))(img, random.Random(0))
    same(ours, img.point(lambda v: v & 0x80))


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "rand-m9-mstd0.5", "rand-m7-n3-p0.8", "rand-m9-inc0",
                                    "rand-m15-mmax15-mstd1-inc1", "rand-m9-mstd101", "rand-m9-tweights",
                                    "rand-m10-t3a", "rand-m6-t3aw-n1"])
def test_randaugment_policies_equal_timms(policy):
    theirs_t = timm_aa.rand_augment_transform(policy, timm_hparams())
    ours_t = A.build_auto_augment(policy, SIZE, IMAGENET_MEAN)
    assert [op.name for op in ours_t.ops] == [op.name for op in theirs_t.ops]
    assert ours_t.num_layers == theirs_t.num_layers
    img = picture(1)
    for seed in range(25):
        random.seed(seed)
        np.random.seed(seed)
        try:
            theirs = theirs_t(img)
        except ValueError as exc:  # timm's 0-bit posterize on Pillow >= 13
            assert "bits" in str(exc)
            continue
        same(ours_t.apply(img, random.Random(seed), np.random.RandomState(seed)), theirs)


@pytest.mark.parametrize("policy", ["original", "originalr", "v0", "v0r", "3a", "v0-mstd0.5"])
def test_autoaugment_policies_equal_timms(policy):
    theirs_t = timm_aa.auto_augment_transform(policy, timm_hparams())
    ours_t = A.build_auto_augment(policy, SIZE, IMAGENET_MEAN)
    assert [[(op.name, op.prob, op.magnitude) for op in sub] for sub in ours_t.policy] == \
        [[(op.name, op.prob, op.magnitude) for op in sub] for sub in theirs_t.policy]
    img = picture(2)
    for seed in range(30):
        random.seed(seed)
        try:
            theirs = theirs_t(img)
        except ValueError as exc:  # v0's 'Posterize 0.8 2' asks for 0 bits
            assert "bits" in str(exc)
            continue
        same(ours_t(img, random.Random(seed)), theirs)


@pytest.mark.parametrize("policy", ["augmix-m5-w4-d2", "augmix-m3", "augmix-m9-w2-d1-mstd0.5", "augmix-m4-b1",
                                    "augmix-m5-a0.5-w3"])
def test_augmix_policies_equal_timms(policy):
    theirs_t = timm_aa.augment_and_mix_transform(policy, timm_hparams(translate_pct=0.3))
    ours_t = A.build_auto_augment(policy, SIZE, IMAGENET_MEAN)
    assert [op.name for op in ours_t.ops] == [op.name for op in theirs_t.ops]
    img = picture(3)
    for seed in range(12):
        random.seed(seed)
        np.random.seed(seed)
        try:
            theirs = theirs_t(img)
        except ValueError as exc:
            assert "bits" in str(exc)
            continue
        same(ours_t.apply(img, random.Random(seed), np.random.RandomState(seed)), theirs)


@pytest.mark.parametrize("policy, message", [
    ("v1", "unknown policy"), ("rand-m9-q3", "unknown section 'q3'"), ("rand-m9.5", "'m9.5' needs an integer"),
    ("augmix-m3-x2", "unknown section 'x2'"), ("randx-m9", "starts with 'rand-'")])
def test_bad_policies_name_the_flag(policy, message):
    with pytest.raises(ArgumentError, match=message) as info:
        A.build_auto_augment(policy, SIZE, IMAGENET_MEAN)
    assert f"--aa '{policy}'" in str(info.value)
