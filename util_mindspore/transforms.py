"""Upstream's image transforms (timm 0.9.2 `create_transform`) with Pillow and numpy.

Train: RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3, bicubic) -> horizontal flip -> timm RandAugment
('rand-m9-mstd0.5-inc1': 2 ops, magnitude 9 +- N(0, 0.5), each op with probability 0.5, the 'increasing'
op set) -> ToTensor -> Normalize -> RandomErasing(reprob, 'pixel', recount) on the normalised CHW array.
Eval: Resize(int(size / crop_pct), bicubic) with crop_pct 224/256 for size <= 224 else 1 -> CenterCrop.

MindSpore's built-in RandAugment is torchvision's variant, and OpenCV's bicubic differs from PIL's by up to
42 grey levels, so timm's semantics are rebuilt here on PIL. Deliberate difference from upstream: posterize
keeps at least 1 bit (timm 0.9.2 can ask for 0, which Pillow >= 13 refuses mid-epoch).
"""
import math
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FILL = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)
_MAX_LEVEL = 10.0


def to_rgb(img):
    """Any PIL mode (L, RGBA, P, I;16, CMYK...) as 8-bit RGB; 16-bit greyscale is scaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


# --- RandAugment (timm 0.9.2 semantics) ----------------------------------------------------------------------

def _signed(value, rng):
    return -value if rng.random() > 0.5 else value


def _affine(img, matrix):
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BICUBIC, fillcolor=_FILL)


def _rotate(img, level, rng):
    return img.rotate(_signed(level / _MAX_LEVEL * 30.0, rng), resample=Image.BICUBIC, fillcolor=_FILL)


def _shear_x(img, level, rng):
    return _affine(img, (1, _signed(level / _MAX_LEVEL * 0.3, rng), 0, 0, 1, 0))


def _shear_y(img, level, rng):
    return _affine(img, (1, 0, 0, _signed(level / _MAX_LEVEL * 0.3, rng), 1, 0))


def _translate_x(img, level, rng):
    return _affine(img, (1, 0, _signed(level / _MAX_LEVEL * 0.45, rng) * img.size[0], 0, 1, 0))


def _translate_y(img, level, rng):
    return _affine(img, (1, 0, 0, 0, 1, _signed(level / _MAX_LEVEL * 0.45, rng) * img.size[1]))


def _enhance(kind):
    def op(img, level, rng):
        return kind(img).enhance(1.0 + _signed(level / _MAX_LEVEL * 0.9, rng))
    return op


def _posterize(img, level, rng):
    bits = 4 - int(level / _MAX_LEVEL * 4)
    return ImageOps.posterize(img, max(1, min(8, bits)))  # keep 1..8 bits (see module docstring)


def _solarize(img, level, rng):
    return ImageOps.solarize(img, 256 - int(level / _MAX_LEVEL * 256))


def _solarize_add(img, level, rng):
    add = int(level / _MAX_LEVEL * 110)
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


_RAND_INCREASING_OPS = {
    "AutoContrast": lambda img, level, rng: ImageOps.autocontrast(img),
    "Equalize": lambda img, level, rng: ImageOps.equalize(img),
    "Invert": lambda img, level, rng: ImageOps.invert(img),
    "Rotate": _rotate,
    "PosterizeIncreasing": _posterize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": _solarize_add,
    "ColorIncreasing": _enhance(ImageEnhance.Color),
    "ContrastIncreasing": _enhance(ImageEnhance.Contrast),
    "BrightnessIncreasing": _enhance(ImageEnhance.Brightness),
    "SharpnessIncreasing": _enhance(ImageEnhance.Sharpness),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateXRel": _translate_x,
    "TranslateYRel": _translate_y,
}


class RandAugment:
    """timm's `rand-m<M>-n<N>-mstd<S>-inc1` policy (only the increasing op set is implemented)."""

    def __init__(self, policy="rand-m9-mstd0.5-inc1"):
        parts = policy.split("-")
        if parts[0] != "rand":
            raise ValueError(f"--aa '{policy}': only RandAugment policies 'rand-...' are supported ('' disables)")
        self.magnitude, self.num_ops, self.std, self.prob = 10.0, 2, 0.0, 0.5
        for part in parts[1:]:
            match = re.match(r"([a-z]+)([\d.]+)$", part)
            if not match:
                raise ValueError(f"--aa '{policy}': cannot read '{part}'")
            key, value = match.groups()
            if key == "m":
                self.magnitude = float(value)
            elif key == "n":
                self.num_ops = int(value)
            elif key == "mstd":
                self.std = float(value)
            elif key == "p":
                self.prob = float(value)
            elif key == "inc":
                if not int(value):
                    raise ValueError(f"--aa '{policy}': only the increasing op set (inc1) is implemented")
            elif key != "mmax":
                raise ValueError(f"--aa '{policy}': unknown key '{key}'")
        self.ops = list(_RAND_INCREASING_OPS.values())

    def __call__(self, img, rng):
        for _ in range(self.num_ops):
            op = self.ops[rng.randrange(len(self.ops))]
            if rng.random() > self.prob:
                continue
            level = rng.gauss(self.magnitude, self.std) if self.std > 0 else self.magnitude
            img = op(img, max(0.0, min(_MAX_LEVEL, level)), rng)
        return img


# --- crops, erasing, the two pipelines -----------------------------------------------------------------------

def random_resized_crop_box(width, height, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
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


def to_normalized_chw(img):
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


_ERASE_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))


def random_erasing(chw, rng, prob=0.25, count=1, area=(0.02, 1 / 3), log_aspect=_ERASE_LOG_ASPECT):
    """timm RandomErasing, mode 'pixel': each erased pixel gets N(0, 1) values (on the normalised image)."""
    if rng.random() > prob:
        return chw
    channels, height, width = chw.shape
    np_rng = np.random.default_rng(rng.getrandbits(32))
    for _ in range(count):
        for _ in range(10):
            target = rng.uniform(*area) * height * width / count
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if w < width and h < height:
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                chw[:, top:top + h, left:left + w] = np_rng.standard_normal((channels, h, w)).astype(chw.dtype)
                break
    return chw


def eval_resize_size(input_size):
    crop_pct = 224 / 256 if input_size <= 224 else 1.0
    return int(input_size / crop_pct)


class EvalTransform:
    def __init__(self, input_size):
        self.input_size, self.resize = input_size, eval_resize_size(input_size)

    def crop(self, img):
        """The RGB picture the model sees (before normalisation): what heat maps are drawn on."""
        img = to_rgb(img)
        w, h = img.size
        if w <= h:
            size = (self.resize, int(self.resize * h / w))
        else:
            size = (int(self.resize * w / h), self.resize)
        img = img.resize(size, Image.BICUBIC)
        left = int(round((size[0] - self.input_size) / 2.0))
        top = int(round((size[1] - self.input_size) / 2.0))
        return img.crop((left, top, left + self.input_size, top + self.input_size))

    def __call__(self, img, rng=None):
        return to_normalized_chw(self.crop(img))


class NotebookEmbeddingTransform:
    """upstream latent_feature.ipynb's preprocessing: resize to size x size (Pillow's default, bicubic), /255,
    then each channel standardised by the image's own mean and (population) std, not ImageNet's.
    Deliberate differences: the image is converted to RGB first (the notebook fails on other modes), and a
    channel of one value is left at 0 (the notebook divides by its zero std)."""

    def __init__(self, input_size):
        self.input_size = input_size

    def __call__(self, img, rng=None):
        img = img.convert("RGB").resize((self.input_size, self.input_size), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.float64) / 255.0
        mean, std = arr.mean(axis=(0, 1)), arr.std(axis=(0, 1))
        arr = (arr - mean) / np.where(std > 0, std, 1.0)
        return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


class TrainTransform:
    def __init__(self, input_size, aa="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel", recount=1):
        if remode != "pixel":
            raise ValueError(f"--remode '{remode}': only 'pixel' (upstream's default) is implemented")
        self.input_size = input_size
        self.randaugment = RandAugment(aa) if aa and aa.lower() not in ("none",) else None
        self.reprob, self.recount = reprob, recount

    def __call__(self, img, rng):
        img = to_rgb(img)
        box = random_resized_crop_box(img.size[0], img.size[1], rng)
        img = img.resize((self.input_size, self.input_size), Image.BICUBIC, box=box)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.randaugment is not None:
            img = self.randaugment(img, rng)
        chw = to_normalized_chw(img)
        if self.reprob > 0:
            chw = random_erasing(chw, rng, self.reprob, self.recount)
        return chw


def build_transform(is_train, args):
    if is_train:
        return TrainTransform(args.input_size, args.aa, args.reprob, args.remode, args.recount)
    return EvalTransform(args.input_size)
