"""Convert a generated ViT-L checkpoint in the published RETFound-MAE layout; time and peak RSS vs copying it.

    python benchmarks/bench_convert.py [--workdir /tmp/bench_convert] [--reader auto|torch-free]

Writes the checkpoint once (needs torch: pip install -e ".[dev]"), then measures, each in a fresh process and
alternating: copying the file (shutil.copyfile over the previous copy), and download_and_convert_weights on it
(force=True: over the previous conversion). Prints one JSON line with the medians. Every process is started
from this small one: Linux carries ru_maxrss across exec, so a parent holding the 1.2 GB tensors would inflate
the children's peak RSS. Each starts after os.sync(), so none pays for writing back the previous one's output.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CHILD = r"""
import json, os, resource, shutil, sys, time
sys.path.insert(0, {root!r})
if {block_torch!r}:
    sys.modules["torch"] = None
what, src, dst = sys.argv[1:4]
if what == "convert":
    from util_mindspore.checkpoints.conversion import download_and_convert_weights
start = time.perf_counter()
if what == "copy":
    shutil.copyfile(src, dst)
else:
    download_and_convert_weights(src, cache_dir=dst, force=True)
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


WRITER = r"""
import sys
sys.path.insert(0, {root!r})
import torch
from util_mindspore.reference.checkpoint_layouts import mae_pretrained
torch.manual_seed(0)
mae_pretrained(sys.argv[1], name="RETFound_mae")
"""


def write_checkpoint(path):
    subprocess.run([sys.executable, "-c", WRITER.format(root=ROOT), path], check=True)


def measure(what, src, dst, block_torch):
    code = CHILD.format(root=ROOT, block_torch=block_torch)
    os.sync()
    done = subprocess.run([sys.executable, "-c", code, what, src, dst], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/bench_convert")
    parser.add_argument("--reader", default="auto", choices=["auto", "torch-free"])
    parser.add_argument("--rounds", default=3, type=int)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    src = os.path.join(args.workdir, "RETFound_mae_vitl.pth")
    if not os.path.exists(src):
        write_checkpoint(src)
    size_mb = os.path.getsize(src) / 2 ** 20
    copies, converts = [], []
    for _ in range(args.rounds):
        copies.append(measure("copy", src, os.path.join(args.workdir, "copy.pth"), False))
        converts.append(measure("convert", src, os.path.join(args.workdir, "cache"), args.reader == "torch-free"))
    copy_s = statistics.median(r["seconds"] for r in copies)
    convert_s = statistics.median(r["seconds"] for r in converts)
    print(json.dumps({"file_mb": round(size_mb, 1), "reader": args.reader, "rounds": args.rounds,
                      "copy_s": round(copy_s, 2), "convert_s": round(convert_s, 2),
                      "ratio": round(convert_s / copy_s, 2),
                      "convert_peak_rss_mb": round(max(r["peak_rss_mb"] for r in converts))}))


if __name__ == "__main__":
    main()
