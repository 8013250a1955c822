"""Soft targets, and timm's Mixup / CutMix (modes batch, pair, elem) on host numpy batches.

Upstream trains with torch CrossEntropyLoss; with mixup or cutmix active its targets are the mixed,
label-smoothed class probabilities, without them plain one-hot (no smoothing). The train step always
takes probabilities, so both cases are one soft-target cross-entropy.
"""
import numpy as np


def one_hot(targets, num_classes, smoothing=0.0):
    off = smoothing / num_classes
    out = np.full((len(targets), num_classes), off, dtype=np.float32)
    out[np.arange(len(targets)), targets] = 1.0 - smoothing + off
    return out


def _cutmix_box(shape, lam, rng, minmax=None):
    height, width = shape[-2:]
    if minmax is not None:
        cut_h = int(rng.integers(int(height * minmax[0]), int(height * minmax[1])))
        cut_w = int(rng.integers(int(width * minmax[0]), int(width * minmax[1])))
        cy, cx = int(rng.integers(0, height - cut_h)), int(rng.integers(0, width - cut_w))
        top, bottom, left, right = cy, cy + cut_h, cx, cx + cut_w
    else:
        ratio = np.sqrt(1 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
        left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    # lam corrected by the real box area, as timm's cutmix_bbox_and_lam(correct_lam=True)
    lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
    return (int(top), int(bottom), int(left), int(right)), lam


class Mixup:
    def __init__(self, mixup_alpha=1.0, cutmix_alpha=0.0, cutmix_minmax=None, prob=1.0, switch_prob=0.5,
                 mode="batch", label_smoothing=0.1, num_classes=1000, seed=0):
        if mode not in ("batch", "pair", "elem"):
            raise ValueError(f"--mixup_mode '{mode}': use batch, pair or elem")
        if cutmix_minmax is not None:
            if len(cutmix_minmax) != 2:
                raise ValueError("--cutmix_minmax takes two numbers (min max)")
            cutmix_alpha = 1.0
        self.mixup_alpha, self.cutmix_alpha, self.cutmix_minmax = mixup_alpha, cutmix_alpha, cutmix_minmax
        self.prob, self.switch_prob, self.mode = prob, switch_prob, mode
        self.smoothing, self.num_classes = label_smoothing, num_classes
        self.rng = np.random.default_rng(seed)

    def _params(self):
        """(lam, use_cutmix) as timm's _params_per_batch."""
        if self.rng.random() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cutmix = self.rng.random() < self.switch_prob
            alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        elif self.mixup_alpha > 0:
            cutmix, alpha = False, self.mixup_alpha
        elif self.cutmix_alpha > 0:
            cutmix, alpha = True, self.cutmix_alpha
        else:
            return 1.0, False
        return float(self.rng.beta(alpha, alpha)), cutmix

    def __call__(self, images, targets):
        """(mixed images, soft targets). Sample i mixes with sample n-1-i, as in timm."""
        n = len(images)
        y1 = one_hot(targets, self.num_classes, self.smoothing)
        y2 = y1[::-1]
        if self.mode == "pair" and n % 2:
            raise ValueError("--mixup_mode pair needs an even --batch_size")
        out, lams = images.astype(np.float32, copy=True), np.ones(n, dtype=np.float32)
        if self.mode == "batch":
            lam, cutmix = self._params()
            lams[:] = self._mix(out, images, range(n), lam, cutmix, pair=False)
        else:
            pair = self.mode == "pair"
            for i in range(n // 2 if pair else n):
                lam, cutmix = self._params()
                lams[i] = self._mix(out, images, [i], lam, cutmix, pair)
                if pair:
                    lams[n - 1 - i] = lams[i]
        soft = y1 * lams[:, None] + y2 * (1.0 - lams[:, None])
        return out, soft.astype(np.float32)

    def _mix(self, out, images, rows, lam, cutmix, pair):
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
                else:
                    out[dst] = images[dst] * lam + images[src] * (1.0 - lam)
        return lam
