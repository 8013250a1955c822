"""Soft targets, and timm 0.9.2's Mixup / CutMix (modes batch, pair, elem) on host numpy batches.

Upstream trains with torch CrossEntropyLoss; with mixup or cutmix active its targets are the mixed,
label-smoothed class probabilities, without them plain one-hot (no smoothing). The train step always
takes probabilities, so both cases are one soft-target cross-entropy.

timm draws from numpy's global generator; here each Mixup draws from a RandomState of its own, in timm's order,
so the same seed gives timm's lambdas, boxes and mixed images (tests/data/test_mixup.py runs timm's on the same draws).
Deliberate difference: timm 0.9.2's pair and elem modes call the removed `np.bool` and stop on numpy >= 1.24;
these run.
"""
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from util_mindspore.errors import ArgumentError


def one_hot(targets: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
    off = smoothing / num_classes
    out = np.full((len(targets), num_classes), off, dtype=np.float32)
    out[np.arange(len(targets)), targets] = 1.0 - smoothing + off
    return out


def _cutmix_box(shape: Tuple[int, ...], lam: float, rng: np.random.RandomState,
                minmax: Optional[Sequence[float]] = None) -> Tuple[Tuple[int, int, int, int], float]:
    """timm's cutmix_bbox_and_lam (correct_lam=True): the box and the lambda of its real area."""
    height, width = shape[-2:]
    if minmax is not None:
        cut_h = rng.randint(int(height * minmax[0]), int(height * minmax[1]))
        cut_w = rng.randint(int(width * minmax[0]), int(width * minmax[1]))
        top, left = rng.randint(0, height - cut_h), rng.randint(0, width - cut_w)
        bottom, right = top + cut_h, left + cut_w
    else:
        ratio = np.sqrt(1 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = rng.randint(0, height), rng.randint(0, width)
        top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
        left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
    return (int(top), int(bottom), int(left), int(right)), lam


class Mixup:
    def __init__(self, mixup_alpha: float = 1.0, cutmix_alpha: float = 0.0,
                 cutmix_minmax: Optional[Sequence[float]] = None, prob: float = 1.0, switch_prob: float = 0.5,
                 mode: str = "batch", label_smoothing: float = 0.1, num_classes: int = 1000, seed: int = 0) -> None:
        if mode not in ("batch", "pair", "elem"):
            raise ArgumentError(f"--mixup_mode '{mode}': use batch, pair or elem")
        if cutmix_minmax is not None:
            if len(cutmix_minmax) != 2:
                raise ArgumentError("--cutmix_minmax takes two numbers (min max)")
            cutmix_alpha = 1.0  # as timm: minmax forces cutmix
        self.mixup_alpha, self.cutmix_alpha, self.cutmix_minmax = mixup_alpha, cutmix_alpha, cutmix_minmax
        self.prob, self.switch_prob, self.mode = prob, switch_prob, mode
        self.smoothing, self.num_classes = label_smoothing, num_classes
        self.rng = np.random.RandomState(seed)

    def _params_per_batch(self) -> Tuple[float, bool]:
        """(lam, use_cutmix) in timm's order of draws."""
        if not self.rng.rand() < self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cutmix = bool(self.rng.rand() < self.switch_prob)
            alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
            return float(self.rng.beta(alpha, alpha)), cutmix
        if self.mixup_alpha > 0:
            return float(self.rng.beta(self.mixup_alpha, self.mixup_alpha)), False
        return float(self.rng.beta(self.cutmix_alpha, self.cutmix_alpha)), True

    def _params_per_elem(self, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """(lams (n,), use_cutmix (n,)) in timm's order of draws."""
        lam = np.ones(n, dtype=np.float32)
        use_cutmix = np.zeros(n, dtype=bool)
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = self.rng.rand(n) < self.switch_prob
            lam_mix = np.where(use_cutmix, self.rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=n),
                               self.rng.beta(self.mixup_alpha, self.mixup_alpha, size=n))
        elif self.mixup_alpha > 0:
            lam_mix = self.rng.beta(self.mixup_alpha, self.mixup_alpha, size=n)
        else:
            use_cutmix = np.ones(n, dtype=bool)
            lam_mix = self.rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=n)
        return np.where(self.rng.rand(n) < self.prob, lam_mix.astype(np.float32), lam), use_cutmix

    def __call__(self, images: np.ndarray, targets: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(mixed images, soft targets) as timm's Mixup gives them; sample i mixes with sample n-1-i."""
        n = len(images)
        if n % 2:
            raise ArgumentError(f"--mixup / --cutmix need an even --batch_size (got {n} images), as timm's Mixup")
        out = images.astype(np.float32, copy=True)
        y1 = one_hot(targets, self.num_classes, self.smoothing)
        if self.mode == "batch":
            lam, cutmix = self._params_per_batch()
            lam = self._mix(out, images, list(range(n)), lam, cutmix, pair=False)
            return out, y1 * np.float32(lam) + y1[::-1] * np.float32(1.0 - lam)  # timm's float scalars
        pair = self.mode == "pair"
        lams, use_cutmix = self._params_per_elem(n // 2 if pair else n)
        for i in range(len(lams)):
            lams[i] = self._mix(out, images, [i], lams[i], bool(use_cutmix[i]), pair)
        if pair:
            lams = np.concatenate((lams, lams[::-1]))
        return out, y1 * lams[:, None] + y1[::-1] * (1.0 - lams[:, None])  # timm's float32 tensors

    def _mix(self, out: np.ndarray, images: np.ndarray, rows: Sequence[int], lam: Union[float, np.float32],
             cutmix: bool, pair: bool) -> Union[float, np.float32]:
        """Mix rows of `out` with their partners n-1-i in place (and the partner too, for pair); the real lam."""
        n = len(images)
        if lam == 1.0:
            return 1.0
        if cutmix:
            box, lam = _cutmix_box(images.shape, lam, self.rng, self.cutmix_minmax)
        for i in rows:
            j = n - 1 - i
            for dst, src in ((i, j), (j, i)) if pair else ((i, j),):
                if cutmix:
                    top, bottom, left, right = box
                    out[dst, :, top:bottom, left:right] = images[src, :, top:bottom, left:right]
                else:  # timm: a float32 lambda (elem, pair) mixes with 1 - lam in float32, a Python one in float64
                    rest = np.float32(1) - lam if isinstance(lam, np.float32) else np.float32(1.0 - lam)
                    out[dst] = images[dst] * np.float32(lam) + images[src] * rest
        return lam
