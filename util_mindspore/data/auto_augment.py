"""timm 0.9.2's `--aa` policies on Pillow: RandAugment (`rand-...`), AutoAugment (`original`, `originalr`, `v0`,
`v0r`, `3a`) and AugMix (`augmix-...`), with timm's parsing, op set, magnitudes and order of random draws.

Upstream builds its training transform with timm's `create_transform(auto_augment=--aa, interpolation='bicubic')`,
so each op here takes timm's arguments for a magnitude and draws its randomness in timm's order: given the same
Python `random` state (and numpy state where timm uses numpy) an image comes out pixel for pixel as timm's
(tests/data/test_auto_augment.py). Randomness comes from the caller's per-image `random.Random`, so decoding threads
never share a generator.

Deliberate difference: posterize keeps at least 1 bit. At the top of the magnitude range timm 0.9.2 asks Pillow
for 0 bits, which Pillow >= 13 refuses, ending upstream's run mid-epoch.
"""
import math
import random
import re
from typing import Any, Callable, Collection, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from util_mindspore.errors import ArgumentError

LEVEL_DENOM = 10.0

# (magnitude, hparams, the image's random generator) -> the operation's arguments
LevelToArg = Callable[[float, Dict[str, Any], random.Random], Tuple[float]]


# --- the image operations (argument -> image) ---------------------------------------------------------------

def _affine(img: Image.Image, matrix: Tuple[float, ...], hp: Dict[str, Any]) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BICUBIC, fillcolor=hp["fill"])


def _posterize(img: Image.Image, bits: int, hp: Dict[str, Any]) -> Image.Image:
    return img if bits >= 8 else ImageOps.posterize(img, max(1, bits))  # >= 1 bit: see the module docstring


def _solarize_add(img: Image.Image, add: int, hp: Dict[str, Any], threshold: int = 128) -> Image.Image:
    if img.mode not in ("L", "RGB"):
        return img
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def _gaussian_blur_rand(img: Image.Image, factor: float, hp: Dict[str, Any], rng: random.Random) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0 * factor)))


_APPLY = {
    "AutoContrast": lambda img, hp: ImageOps.autocontrast(img),
    "Equalize": lambda img, hp: ImageOps.equalize(img),
    "Invert": lambda img, hp: ImageOps.invert(img),
    "Rotate": lambda img, degrees, hp: img.rotate(degrees, resample=Image.BICUBIC, fillcolor=hp["fill"]),
    "Posterize": _posterize,
    "Solarize": lambda img, threshold, hp: ImageOps.solarize(img, threshold),
    "SolarizeAdd": _solarize_add,
    "Color": lambda img, factor, hp: ImageEnhance.Color(img).enhance(factor),
    "Contrast": lambda img, factor, hp: ImageEnhance.Contrast(img).enhance(factor),
    "Brightness": lambda img, factor, hp: ImageEnhance.Brightness(img).enhance(factor),
    "Sharpness": lambda img, factor, hp: ImageEnhance.Sharpness(img).enhance(factor),
    "ShearX": lambda img, shear, hp: _affine(img, (1, shear, 0, 0, 1, 0), hp),
    "ShearY": lambda img, shear, hp: _affine(img, (1, 0, 0, shear, 1, 0), hp),
    "TranslateX": lambda img, pixels, hp: _affine(img, (1, 0, pixels, 0, 1, 0), hp),
    "TranslateY": lambda img, pixels, hp: _affine(img, (1, 0, 0, 0, 1, pixels), hp),
    "TranslateXRel": lambda img, pct, hp: _affine(img, (1, 0, pct * img.size[0], 0, 1, 0), hp),
    "TranslateYRel": lambda img, pct, hp: _affine(img, (1, 0, 0, 0, 1, pct * img.size[1]), hp),
    "Desaturate": lambda img, factor, hp: ImageEnhance.Color(img).enhance(min(1.0, max(0.0, 1.0 - factor))),
    "GaussianBlur": lambda img, radius, hp: img.filter(ImageFilter.GaussianBlur(radius=radius)),
}


# --- magnitude (0..10) -> the operation's argument, timm's scales ---------------------------------------------

def _negate_half(value: float, rng: random.Random) -> float:
    return -value if rng.random() > 0.5 else value


def _scaled(scale: float, signed: bool = True) -> LevelToArg:
    def level_to_arg(level: float, hp: Dict[str, Any], rng: random.Random) -> Tuple[float]:
        value = level / LEVEL_DENOM * scale
        return (_negate_half(value, rng) if signed else value),
    return level_to_arg


def _enhance(level: float, hp: Dict[str, Any], rng: random.Random) -> Tuple[float]:
    return level / LEVEL_DENOM * 1.8 + 0.1,


def _enhance_increasing(level: float, hp: Dict[str, Any], rng: random.Random) -> Tuple[float]:
    return max(0.1, 1.0 + _negate_half(level / LEVEL_DENOM * 0.9, rng)),


def _between(low: float, high: float) -> LevelToArg:
    def level_to_arg(level: float, hp: Dict[str, Any], rng: random.Random) -> Tuple[float]:
        return max(low, min(high, low + (high - low) * level / LEVEL_DENOM)),
    return level_to_arg


def _posterize_bits(level: float) -> int:
    return int(level / LEVEL_DENOM * 4)


def _solarize_threshold(level: float) -> int:
    return min(256, int(level / LEVEL_DENOM * 256))


# name -> (operation in _APPLY, magnitude -> arguments or None)
OPS = {
    "AutoContrast": ("AutoContrast", None),
    "Equalize": ("Equalize", None),
    "Invert": ("Invert", None),
    "Rotate": ("Rotate", _scaled(30.0)),
    "Posterize": ("Posterize", lambda level, hp, rng: (_posterize_bits(level),)),
    "PosterizeIncreasing": ("Posterize", lambda level, hp, rng: (4 - _posterize_bits(level),)),
    "PosterizeOriginal": ("Posterize", lambda level, hp, rng: (_posterize_bits(level) + 4,)),
    "Solarize": ("Solarize", lambda level, hp, rng: (_solarize_threshold(level),)),
    "SolarizeIncreasing": ("Solarize", lambda level, hp, rng: (256 - _solarize_threshold(level),)),
    "SolarizeAdd": ("SolarizeAdd", lambda level, hp, rng: (min(128, int(level / LEVEL_DENOM * 110)),)),
    "Color": ("Color", _enhance),
    "ColorIncreasing": ("Color", _enhance_increasing),
    "Contrast": ("Contrast", _enhance),
    "ContrastIncreasing": ("Contrast", _enhance_increasing),
    "Brightness": ("Brightness", _enhance),
    "BrightnessIncreasing": ("Brightness", _enhance_increasing),
    "Sharpness": ("Sharpness", _enhance),
    "SharpnessIncreasing": ("Sharpness", _enhance_increasing),
    "ShearX": ("ShearX", _scaled(0.3)),
    "ShearY": ("ShearY", _scaled(0.3)),
    "TranslateX": ("TranslateX", lambda level, hp, rng: _scaled(hp["translate_const"])(level, hp, rng)),
    "TranslateY": ("TranslateY", lambda level, hp, rng: _scaled(hp["translate_const"])(level, hp, rng)),
    "TranslateXRel": ("TranslateXRel", lambda level, hp, rng: _scaled(hp["translate_pct"])(level, hp, rng)),
    "TranslateYRel": ("TranslateYRel", lambda level, hp, rng: _scaled(hp["translate_pct"])(level, hp, rng)),
    "Desaturate": ("Desaturate", _between(0.5, 1.0)),
    "GaussianBlur": ("GaussianBlur", _between(0.1, 2.0)),
    "GaussianBlurRand": ("GaussianBlurRand", _between(0.0, 1.0)),
}


def hparams_for(input_size: int, mean: Sequence[float], translate_pct: float = 0.45) -> Dict[str, Any]:
    """What create_transform gives timm's ops: translation limits from the crop size, the mean colour as fill."""
    return {"translate_const": int(input_size * 0.45), "translate_pct": translate_pct,
            "fill": tuple(min(255, round(255 * m)) for m in mean)}


class AugmentOp:
    """One op at a magnitude: applied with probability `prob`, magnitude jittered by N(0, std) (uniform in
    [0, magnitude] when std is infinite), clipped to [0, magnitude_max or 10]."""

    def __init__(self, name: str, prob: float, magnitude: float, hparams: Dict[str, Any], magnitude_std: float = 0.0,
                 magnitude_max: Optional[float] = None) -> None:
        if name not in OPS:
            raise ValueError(f"unknown augmentation op '{name}'")
        self.name, self.prob, self.magnitude = name, prob, magnitude
        self.hparams, self.magnitude_std, self.magnitude_max = hparams, magnitude_std, magnitude_max

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        if self.prob < 1.0 and rng.random() > self.prob:
            return img
        magnitude = self.magnitude
        if self.magnitude_std == math.inf:
            magnitude = rng.uniform(0, magnitude)
        elif self.magnitude_std > 0:
            magnitude = rng.gauss(magnitude, self.magnitude_std)
        magnitude = max(0.0, min(magnitude, self.magnitude_max or LEVEL_DENOM))
        op, level_to_arg = OPS[self.name]
        args = level_to_arg(magnitude, self.hparams, rng) if level_to_arg else ()
        if op == "GaussianBlurRand":
            return _gaussian_blur_rand(img, *args, self.hparams, rng)
        return _APPLY[op](img, *args, self.hparams)


# --- the three policy families -------------------------------------------------------------------------------

RAND_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]
RAND_INCREASING_OPS = [_n if _n in ("AutoContrast", "Equalize", "Invert", "Rotate", "SolarizeAdd", "ShearX", "ShearY",
                                    "TranslateXRel", "TranslateYRel") else _n + "Increasing" for _n in RAND_OPS]
RAND_OP_SETS = {  # RandAugment's `t<name>` section: a plain list, or weights (chosen without replacement)
    "3a": ["SolarizeIncreasing", "Desaturate", "GaussianBlur"],
    "3aw": {"SolarizeIncreasing": 6, "Desaturate": 6, "GaussianBlur": 6, "Rotate": 3, "ShearX": 2, "ShearY": 2,
            "PosterizeIncreasing": 1, "AutoContrast": 1, "ColorIncreasing": 1, "SharpnessIncreasing": 1,
            "ContrastIncreasing": 1, "BrightnessIncreasing": 1, "Equalize": 1, "Invert": 1},
    "weights": {"Rotate": 3, "ShearX": 2, "ShearY": 2, "TranslateXRel": 1, "TranslateYRel": 1, "ColorIncreasing": .25,
                "SharpnessIncreasing": .25, "AutoContrast": .25, "SolarizeIncreasing": .05, "SolarizeAdd": .05,
                "ContrastIncreasing": .05, "BrightnessIncreasing": .05, "Equalize": .05, "PosterizeIncreasing": .05,
                "Invert": .05},
}
AUGMIX_OPS = ["AutoContrast", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
              "Equalize", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "ShearX", "ShearY", "TranslateXRel",
              "TranslateYRel"]

# The searched AutoAugment ImageNet policies (Cubuk et al. 2019, arXiv:1805.09501): 25 sub-policies of two
# (op, probability, magnitude) steps each. `v0` is the TPU EfficientNet variant; the `r` variants use the
# increasing posterize; `3a` is DeiT III's three-augment.
_V0 = """Equalize .8 1, ShearY .8 4 | Color .4 9, Equalize .6 3 | Color .4 1, Rotate .6 8 |
Solarize .8 3, Equalize .4 7 | Solarize .4 2, Solarize .6 2 | Color .2 0, Equalize .8 8 |
Equalize .4 8, SolarizeAdd .8 3 | ShearX .2 9, Rotate .6 8 |
Color .6 1, Equalize 1 2 | Invert .4 9, Rotate .6 0 | Equalize 1 9, ShearY .6 3 | Color .4 7, Equalize .6 0 |
Posterize .4 6, AutoContrast .4 7 | Solarize .6 8, Color .6 9 | Solarize .2 4, Rotate .8 9 |
Rotate 1 7, TranslateYRel .8 9 | ShearX 0 0, Solarize .8 4 | ShearY .8 0, Color .6 4 | Color 1 0, Rotate .6 2 |
Equalize .8 4, Equalize 0 8 | Equalize 1 4, AutoContrast .6 2 | ShearY .4 7, SolarizeAdd .6 7 |
Posterize .8 2, Solarize .6 10 | Solarize .6 8, Equalize .6 1 | Color .8 6, Rotate .4 5"""
_ORIGINAL = """PosterizeOriginal .4 8, Rotate .6 9 | Solarize .6 5, AutoContrast .6 5 | Equalize .8 8, Equalize .6 3 |
PosterizeOriginal .6 7, PosterizeOriginal .6 6 | Equalize .4 7, Solarize .2 4 | Equalize .4 4, Rotate .8 8 |
Solarize .6 3, Equalize .6 7 | PosterizeOriginal .8 5, Equalize 1 2 | Rotate .2 3, Solarize .6 8 |
Equalize .6 8, PosterizeOriginal .4 6 | Rotate .8 8, Color .4 0 | Rotate .4 9, Equalize .6 2 |
Equalize 0 7, Equalize .8 8 | Invert .6 4, Equalize 1 8 | Color .6 4, Contrast 1 8 | Rotate .8 8, Color 1 2 |
Color .8 8, Solarize .8 7 | Sharpness .4 7, Invert .6 8 | ShearX .6 5, Equalize 1 9 | Color .4 0, Equalize .6 3 |
Equalize .4 7, Solarize .2 4 | Solarize .6 5, AutoContrast .6 5 | Invert .6 4, Equalize 1 8 |
Color .6 4, Contrast 1 8 | Equalize .8 8, Equalize .6 3"""
AUTO_AUGMENT_POLICIES = {
    "v0": _V0,
    "v0r": re.sub(r"\bPosterize\b", "PosterizeIncreasing", _V0),
    "original": _ORIGINAL,
    "originalr": _ORIGINAL.replace("PosterizeOriginal", "PosterizeIncreasing"),
    "3a": "Solarize 1 5 | Desaturate 1 10 | GaussianBlurRand 1 10",
}


def policy_table(name: str) -> List[List[Tuple[str, float, int]]]:
    """[[(op, prob, magnitude), ...], ...] of an AutoAugment policy."""
    return [[(op, float(prob), int(mag)) for op, prob, mag in (step.split() for step in sub.split(","))]
            for sub in AUTO_AUGMENT_POLICIES[name].split("|")]


class AutoAugment:
    def __init__(self, policy: Sequence[Sequence[Tuple[str, float, int]]], hparams: Dict[str, Any],
                 magnitude_std: float = 0.0) -> None:
        self.policy = [[AugmentOp(op, prob, mag, hparams, magnitude_std) for op, prob, mag in sub]
                       for sub in policy]

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        for op in rng.choice(self.policy):
            img = op(img, rng)
        return img


class RandAugment:
    def __init__(self, ops: Sequence[AugmentOp], num_layers: int = 2,
                 choice_weights: Optional[np.ndarray] = None) -> None:
        self.ops, self.num_layers, self.choice_weights = ops, num_layers, choice_weights

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        return self.apply(img, rng, np.random.RandomState(rng.getrandbits(32)))

    def apply(self, img: Image.Image, rng: random.Random, np_rng: np.random.RandomState) -> Image.Image:
        """timm draws the ops from numpy's legacy generator, the rest from Python's: `np_rng` stands for the former."""
        chosen = np_rng.choice(len(self.ops), self.num_layers, replace=self.choice_weights is None,
                               p=self.choice_weights)
        for index in chosen:
            img = self.ops[index](img, rng)
        return img


class AugMix:
    def __init__(self, ops: Sequence[AugmentOp], alpha: float = 1.0, width: int = 3, depth: int = -1,
                 blended: bool = False) -> None:
        self.ops, self.alpha, self.width, self.depth, self.blended = ops, alpha, width, depth, blended

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        return self.apply(img, rng, np.random.RandomState(rng.getrandbits(32)))

    def _chain(self, img: Image.Image, rng: random.Random, np_rng: np.random.RandomState) -> Image.Image:
        depth = self.depth if self.depth > 0 else np_rng.randint(1, 4)
        for index in np_rng.choice(len(self.ops), depth, replace=True):
            img = self.ops[index](img, rng)
        return img

    def apply(self, img: Image.Image, rng: random.Random, np_rng: np.random.RandomState) -> Image.Image:
        weights = np.float32(np_rng.dirichlet([self.alpha] * self.width))
        mix = np.float32(np_rng.beta(self.alpha, self.alpha))
        if self.blended:  # each chain blended in turn, weights rescaled so the result is the same mixture
            cumulative, blend_weights = 1.0, []
            for w in (weights * mix)[::-1]:
                blend_weights.append(w / cumulative)
                cumulative *= 1 - w / cumulative
            original = img.copy()
            for w in np.array(blend_weights[::-1], dtype=np.float32):
                img = Image.blend(img, self._chain(original, rng, np_rng), w)
            return img
        # timm allocates (width, height, bands): it only works for square images, which the crop before it makes
        mixed = np.zeros((img.size[0], img.size[1], len(img.getbands())), dtype=np.float32)
        for w in weights:
            mixed += w * np.asarray(self._chain(img, rng, np_rng), dtype=np.float32)
        np.clip(mixed, 0, 255.0, out=mixed)
        return Image.blend(img, Image.fromarray(mixed.astype(np.uint8)), mix)


def _sections(policy: str, allowed: Collection[str]) -> List[Tuple[str, str]]:
    """`name-k1v1-k2v2...` -> [(key, value)], keys split from values at the first digit, as timm does."""
    out = []
    for part in policy.split("-")[1:]:
        if part.startswith("t") and "t" in allowed:
            out.append(("t", part[1:]))
            continue
        pieces = re.split(r"(\d.*)", part)
        if len(pieces) < 2:
            continue  # timm skips a section without a number
        key, value = pieces[:2]
        if key not in allowed:
            raise ArgumentError(f"--aa '{policy}': unknown section '{part}' (known: {', '.join(sorted(allowed))})")
        out.append((key, value))
    return out


def _number(policy: str, key: str, value: str, kind: Callable[[str], float]) -> float:
    try:
        return kind(value)
    except ValueError:
        raise ArgumentError(f"--aa '{policy}': '{key}{value}' needs {'an integer' if kind is int else 'a number'}") \
            from None


def _rand_augment(policy: str, hparams: Dict[str, Any]) -> RandAugment:
    magnitude, num_layers, prob, std, mmax, increasing, op_set = 10, 2, 0.5, 0.0, None, False, None
    for key, value in _sections(policy, {"m", "n", "p", "mstd", "mmax", "inc", "t"}):
        if key == "t":
            op_set = value
        elif key == "inc":
            increasing = bool(value)  # as timm: any inc section (inc0 too) selects the increasing set
        else:
            number = _number(policy, key, value, int if key in ("m", "n", "mmax") else float)
            if key == "m":
                magnitude = number
            elif key == "n":
                num_layers = number
            elif key == "p":
                prob = number
            elif key == "mstd":
                std = math.inf if number > 100 else number
            else:
                mmax = number
    names = RAND_OP_SETS.get(op_set) if op_set else None
    names = names or (RAND_INCREASING_OPS if increasing else RAND_OPS)
    weights = None
    if isinstance(names, dict):
        weights = np.array(list(names.values()), dtype=np.float64)
        names, weights = list(names), weights / weights.sum()
    ops = [AugmentOp(name, prob, magnitude, hparams, std, mmax) for name in names]
    return RandAugment(ops, num_layers, weights)


def _augmix(policy: str, hparams: Dict[str, Any]) -> AugMix:
    magnitude, width, depth, alpha, blended, std = 3, 3, -1, 1.0, False, math.inf  # uniform magnitudes by default
    for key, value in _sections(policy, {"m", "w", "d", "a", "b", "mstd"}):
        if key == "b":
            blended = bool(value)
            continue
        number = _number(policy, key, value, float if key in ("a", "mstd") else int)
        if key == "m":
            magnitude = number
        elif key == "w":
            width = number
        elif key == "d":
            depth = number
        elif key == "a":
            alpha = number
        else:
            std = number
    ops = [AugmentOp(name, 1.0, magnitude, dict(hparams, translate_pct=0.3), std) for name in AUGMIX_OPS]
    return AugMix(ops, alpha, width, depth, blended)


def build_auto_augment(policy: Optional[str], input_size: int,
                       mean: Sequence[float]) -> Optional[Callable[[Image.Image, random.Random], Image.Image]]:
    """The `--aa` transform (callable(img, rng) -> img), or None for '' / 'none'."""
    if not policy or policy.lower() == "none":
        return None
    hparams = hparams_for(input_size, mean)
    if policy.startswith("rand"):
        if policy.split("-")[0] != "rand":
            raise ArgumentError(f"--aa '{policy}': a RandAugment policy starts with 'rand-'")
        return _rand_augment(policy, hparams)
    if policy.startswith("augmix"):
        if policy.split("-")[0] != "augmix":
            raise ArgumentError(f"--aa '{policy}': an AugMix policy starts with 'augmix-'")
        return _augmix(policy, hparams)
    name = policy.split("-")[0]
    if name not in AUTO_AUGMENT_POLICIES:
        raise ArgumentError(f"--aa '{policy}': unknown policy (use rand-..., augmix-..., "
                         f"{', '.join(AUTO_AUGMENT_POLICIES)}, or '' for none)")
    std = 0.0
    for key, value in _sections(policy, {"mstd"}):
        std = _number(policy, key, value, float)
    return AutoAugment(policy_table(name), hparams, std)
