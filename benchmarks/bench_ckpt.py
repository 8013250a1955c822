"""What the .ckpt end marker costs: saving and reading a training-checkpoint-sized file with our writer and
reader (CRC-32 read-back included), beside torch.save / torch.load of the same arrays, alternating, one process.

    python benchmarks/bench_ckpt.py --gb 1.2 --rounds 2
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from util_mindspore.checkpoints import ckpt_format  # noqa: E402


def timed(fn):
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=1.2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import torch
    count = 48
    per = int(args.gb * 2 ** 30 / 4 / count)
    arrays = {f"blocks.{i}.w": np.random.default_rng(i).standard_normal(per, dtype=np.float32) for i in range(count)}
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    times = {"ours save": [], "ours read": [], "crc pass": [], "torch save": [], "torch load": []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as folder:
        ours, theirs = os.path.join(folder, "a.ckpt"), os.path.join(folder, "a.pth")
        for _ in range(args.rounds):
            times["ours save"].append(timed(lambda: ckpt_format.save_arrays_ckpt(arrays, ours)))
            times["torch save"].append(timed(lambda: torch.save(tensors, theirs)))
            times["ours read"].append(timed(lambda: ckpt_format.read_ckpt_entries(ours)))
            times["torch load"].append(timed(lambda: torch.load(theirs, weights_only=True)))
            with open(ours, "rb") as fh:
                times["crc pass"].append(timed(lambda f=fh: ckpt_format._crc32_of(f.fileno(), os.path.getsize(ours))))
    print(f"| {args.gb:.1f} GB of float32, median of {args.rounds} | seconds |")
    print("|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    main()
