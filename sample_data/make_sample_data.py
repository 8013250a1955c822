"""Generate the bundled synthetic fundus-like data set, deterministically (seeded).

Three classes a tiny ViT can learn on CPU in a few minutes: `normal`, `haemorrhage` (dark red blots) and
`exudate` (bright yellow flecks), on an orange retina disc with an optic disc and vessels.
    python sample_data/make_sample_data.py            # writes sample_data/fundus3/{train,val,test}/<class>/*.jpg
"""
import argparse
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("exudate", "haemorrhage", "normal")
SPLITS = {"train": 60, "val": 15, "test": 20}


def fundus(rng, size, kind):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2 + rng.normal(0, size * 0.02, 2)
    r = np.hypot(xx - c[0], yy - c[1]) / (size * 0.46)
    base = np.array([200, 90, 40], np.float32) * rng.uniform(0.8, 1.1) + rng.normal(0, 8, 3)
    shade = np.clip(1.05 - 0.55 * r ** 2, 0, None)[..., None]
    img = base * shade * (r < 1)[..., None]
    img += rng.normal(0, 4, img.shape)
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    side = rng.choice([-1, 1])
    od = (c[0] + side * size * 0.22, c[1] + rng.normal(0, size * 0.03))
    odr = size * rng.uniform(0.06, 0.08)
    for _ in range(4):  # vessels leaving the optic disc
        angle = rng.uniform(0, 2 * np.pi)
        pts = [od]
        for _ in range(6):
            angle += rng.normal(0, 0.3)
            pts.append((pts[-1][0] + np.cos(angle) * size * 0.08, pts[-1][1] + np.sin(angle) * size * 0.08))
        draw.line(pts, fill=(120, 30, 20), width=max(1, size // 64))
    draw.ellipse([od[0] - odr, od[1] - odr, od[0] + odr, od[1] + odr], fill=(250, 210, 150))
    if kind != "normal":
        for _ in range(int(rng.integers(35, 55))):  # dense: even a small random crop shows lesions
            rad, ang = size * 0.4 * np.sqrt(rng.uniform(0.02, 1)), rng.uniform(0, 2 * np.pi)
            x, y = c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)
            if kind == "haemorrhage":
                s = size * rng.uniform(0.035, 0.06)
                draw.ellipse([x - s, y - s, x + s, y + s], fill=(45, 5, 20))
            else:
                s = size * rng.uniform(0.02, 0.035)
                draw.ellipse([x - s, y - s, x + s, y + s], fill=(255, 240, 120))
    return canvas.filter(ImageFilter.GaussianBlur(0.6))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "fundus3"))
    parser.add_argument("--size", default=96, type=int)
    parser.add_argument("--seed", default=2023, type=int)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for split, count in SPLITS.items():
        for kind in CLASSES:
            folder = os.path.join(args.out, split, kind)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                fundus(rng, args.size, kind).save(os.path.join(folder, f"{kind}_{split}_{i:03d}.jpg"), quality=90)
    print(f"wrote {sum(SPLITS.values()) * len(CLASSES)} images to {args.out}")


if __name__ == "__main__":
    main()
