"""Upstream's image transforms (timm 0.9.2 `create_transform`) with Pillow and numpy.

Decode: `Image.convert('RGB')`, as upstream's loader (torchvision's pil_loader) does, for every mode.
Train: RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3, bicubic) -> horizontal flip -> the `--aa` policy
(util_mindspore/data/auto_augment.py; default 'rand-m9-mstd0.5-inc1') or, with `--aa ''` and `--color_jitter`,
torchvision's ColorJitter -> ToTensor -> Normalize -> timm RandomErasing(--reprob, --remode, --recount) on the
normalised CHW array.
Eval: Resize(int(size / crop_pct), bicubic) with crop_pct 224/256 for size <= 224 else 1 -> CenterCrop.

MindSpore's built-in RandAugment is torchvision's variant, and OpenCV's bicubic differs from PIL's by up to
42 grey levels, so timm's semantics are rebuilt here on PIL.
"""
import argparse
import math
import random
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageEnhance

from util_mindspore.data.auto_augment import build_auto_augment
from util_mindspore.errors import ArgumentError

# (picture, the image's own random generator) -> CHW float32 array: what datasets and predict apply
Transform = Callable[[Image.Image, random.Random], np.ndarray]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_rgb(img: Image.Image) -> Image.Image:
    """upstream's decode, `convert('RGB')`, for every mode: alpha is dropped (not composited), 16-bit and float
    values are clipped to 0..255 (not rescaled), exactly as Pillow converts them."""
    return img if img.mode == "RGB" else img.convert("RGB")


# --- crops, erasing, the two pipelines -----------------------------------------------------------------------

def random_resized_crop_box(width: int, height: int, rng: random.Random, scale: Tuple[float, float] = (0.08, 1.0),
                            ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> Tuple[int, int, int, int]:
    """timm's RandomResizedCropAndInterpolation.get_params with the same draws from `rng`: (left, top, right,
    bottom) of the crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if w <= width and h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def resized_crop(img: Image.Image, box: Tuple[int, int, int, int], size: int) -> Image.Image:
    """torchvision's resized_crop on a PIL image, as timm's RandomResizedCropAndInterpolation calls it: crop the box,
    then resize the crop (bicubic). Resizing with Pillow's box= instead samples pixels outside the box."""
    return img.crop(box).resize((size, size), Image.BICUBIC)


def to_normalized_chw(img: Image.Image) -> np.ndarray:
    """ToTensor + Normalize(ImageNet): an RGB picture as a CHW float32 array."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


_ERASE_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))
ERASE_MODES = ("const", "rand", "pixel")


def random_erasing(chw: np.ndarray, rng: random.Random, prob: float = 0.25, mode: str = "pixel", max_count: int = 1,
                   area: Tuple[float, float] = (0.02, 1 / 3),
                   log_aspect: Tuple[float, float] = _ERASE_LOG_ASPECT) -> np.ndarray:
    """timm RandomErasing on the normalised image: with probability `prob`, randint(1, max_count) boxes (area
    split between them), filled with 0 ('const'), one N(0, 1) value per channel ('rand') or per pixel ('pixel').
    The boxes are drawn from `rng` in timm's order; the fill values after them."""
    if rng.random() > prob:
        return chw
    channels, height, width = chw.shape
    count = 1 if max_count <= 1 else rng.randint(1, max_count)
    boxes = []
    for _ in range(count):
        for _ in range(10):
            target = rng.uniform(*area) * height * width / count
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if w < width and h < height:
                boxes.append((rng.randint(0, height - h), rng.randint(0, width - w), h, w))
                break
    np_rng = np.random.default_rng(rng.getrandbits(32))
    for top, left, h, w in boxes:
        if mode == "pixel":
            fill = np_rng.standard_normal((channels, h, w))
        elif mode == "rand":
            fill = np_rng.standard_normal((channels, 1, 1))
        else:
            fill = 0.0
        chw[:, top:top + h, left:left + w] = fill
    return chw


def color_jitter(img: Image.Image, rng: random.Random, strength: float) -> Image.Image:
    """torchvision ColorJitter(brightness=contrast=saturation=strength) on a PIL image: the three adjustments in a
    random order, each factor uniform in [max(0, 1 - strength), 1 + strength]."""
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    order = list(range(4))  # torchvision permutes four slots; slot 3 (hue) is off
    rng.shuffle(order)
    factors = [rng.uniform(low, high) for _ in range(3)]
    return apply_color_jitter(img, order, factors)


def apply_color_jitter(img: Image.Image, order: Sequence[int], factors: Sequence[float]) -> Image.Image:
    """Brightness, contrast and saturation by `factors`, in the slot `order` torchvision drew (slot 3 is hue)."""
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    for slot in order:
        if slot < 3:
            img = enhancers[slot](img).enhance(factors[slot])
    return img


def eval_resize_size(input_size: int) -> int:
    """timm's evaluation resize: the shorter side to input_size / crop_pct (crop_pct 224/256 up to 224 px)."""
    crop_pct = 224 / 256 if input_size <= 224 else 1.0
    return int(input_size / crop_pct)


def resize_and_center_crop(img: Image.Image, shorter_side: int, crop: int,
                           resample: int = Image.BICUBIC) -> Image.Image:
    """torchvision's Resize(shorter_side) then CenterCrop(crop) on a PIL image, as upstream evaluates."""
    w, h = img.size
    if w <= h:
        size = (shorter_side, int(shorter_side * h / w))
    else:
        size = (int(shorter_side * w / h), shorter_side)
    img = img.resize(size, resample)
    left = int(round((size[0] - crop) / 2.0))
    top = int(round((size[1] - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


class EvalTransform:
    """upstream's evaluation transform (timm 0.9.2, is_training=False): resize, centre crop, ImageNet normalisation.

    Args:
        input_size: the crop's side in pixels.
    """

    def __init__(self, input_size: int) -> None:
        self.input_size, self.resize = input_size, eval_resize_size(input_size)

    def crop(self, img: Image.Image) -> Image.Image:
        """The RGB picture the model sees (before normalisation): what heat maps are drawn on."""
        return resize_and_center_crop(to_rgb(img), self.resize, self.input_size)

    def __call__(self, img: Image.Image, rng: Optional[random.Random] = None) -> np.ndarray:
        return to_normalized_chw(self.crop(img))


class NotebookEmbeddingTransform:
    """upstream latent_feature.ipynb's preprocessing: resize to size x size (Pillow's default, bicubic), /255,
    then each channel standardised by the image's own mean and (population) std, not ImageNet's.
    Deliberate differences: the image is converted to RGB first (the notebook fails on other modes), and a
    channel of one value is left at 0 (the notebook divides by its zero std)."""

    def __init__(self, input_size: int) -> None:
        self.input_size = input_size

    def __call__(self, img: Image.Image, rng: Optional[random.Random] = None) -> np.ndarray:
        img = img.convert("RGB").resize((self.input_size, self.input_size), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.float64) / 255.0
        mean, std = arr.mean(axis=(0, 1)), arr.std(axis=(0, 1))
        arr = (arr - mean) / np.where(std > 0, std, 1.0)
        return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


class TrainTransform:
    """timm 0.9.2's create_transform(is_training=True), pixel for pixel on the same draws.

    Args:
        input_size: the crop's side in pixels.
        aa: --aa, the RandAugment / AutoAugment / AugMix policy ('' or 'none': none).
        reprob: --reprob, RandomErasing's probability.
        remode: --remode, RandomErasing's fill (const, rand, pixel).
        recount: --recount, RandomErasing's maximum number of boxes.
        color_jitter: --color_jitter strength (applied without a policy, or with a '3a' one, as timm).
    """

    def __init__(self, input_size: int, aa: Optional[str] = "rand-m9-mstd0.5-inc1", reprob: float = 0.25,
                 remode: str = "pixel", recount: int = 1, color_jitter: Optional[float] = None) -> None:
        if remode not in ERASE_MODES:
            raise ArgumentError(f"--remode '{remode}': use one of {', '.join(ERASE_MODES)}")
        self.input_size = input_size
        self.augment = build_auto_augment(aa, input_size, IMAGENET_MEAN)
        # as timm: jitter only without a policy, or with a '3a' one
        self.jitter = color_jitter if color_jitter and (self.augment is None or "3a" in aa) else None
        self.reprob, self.remode, self.recount = reprob, remode, recount

    def __call__(self, img: Image.Image, rng: random.Random) -> np.ndarray:
        img = to_rgb(img)
        box = random_resized_crop_box(img.size[0], img.size[1], rng)
        img = resized_crop(img, box, self.input_size)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.augment is not None:
            img = self.augment(img, rng)
        if self.jitter is not None:
            img = color_jitter(img, rng, self.jitter)
        chw = to_normalized_chw(img)
        if self.reprob > 0:
            chw = random_erasing(chw, rng, self.reprob, self.remode, self.recount)
        return chw


class PretrainTransform:
    """upstream main_pretrain.py's augmentation (torchvision): RandomResizedCrop(input_size, scale 0.2-1, bicubic),
    horizontal flip, ToTensor, ImageNet Normalize."""

    def __init__(self, input_size: int) -> None:
        self.input_size = input_size

    def __call__(self, img: Image.Image, rng: random.Random) -> np.ndarray:
        img = to_rgb(img)
        box = random_resized_crop_box(img.size[0], img.size[1], rng, scale=(0.2, 1.0))
        img = resized_crop(img, box, self.input_size)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_normalized_chw(img)


def build_transform(is_train: bool, args: argparse.Namespace) -> Union[TrainTransform, EvalTransform]:
    """Upstream's build_transform: the training transform with its flags, or the evaluation transform.

    Args:
        is_train: the training split's transform (augmentation) or the evaluation one.
        args: the run's arguments (input_size, aa, reprob, remode, recount, color_jitter).
    """
    if is_train:
        return TrainTransform(args.input_size, args.aa, args.reprob, args.remode, args.recount,
                              getattr(args, "color_jitter", None))
    return EvalTransform(args.input_size)
