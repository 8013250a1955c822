"""The training data pipeline against upstream's, start-up time against the number of files, and one epoch of the
tiny model split into data time and step time.

    python benchmarks/bench_data.py                      # 300 fundus-sized JPEGs, batch 32, 2 workers, 2 rounds

1. Training pipeline img/s, alternately in fresh processes: ours (util_mindspore.data.datasets.Loader, train transform)
   against upstream's (torchvision ImageFolder + timm 0.9.2 create_transform as upstream's util/datasets.py calls
   it + DataLoader with the same number of workers), one pass over the images each, no model.
2. Time to the first batch (listing, header checks and one batch) for 1,000 and 20,000 files: hard links to the
   same JPEGs, so the test measures what grows with the number of files.
3. One epoch of vit_tiny_patch16 at 224 (TrainStep as main_finetune_mindspore.py builds it): time waiting for the
   loader, time in the step, and the epoch.
4. Threads: the pipeline with 1 and 2 workers, the CPU seconds per second they use, and Amdahl's law from the two:
   the share of a worker's time that runs in parallel (outside the GIL), hence where threads stop scaling.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from bench_predict import make_images  # noqa: E402
from run import machine  # noqa: E402


def data_args(data, workers, batch, input_size=224):
    return argparse.Namespace(data_path=data, input_size=input_size, aa="rand-m9-mstd0.5-inc1", reprob=0.25,
                              remode="pixel", recount=1, color_jitter=None, nb_classes=2, num_workers=workers,
                              batch_size=batch, check_images=False)


def ours_pipeline(args):
    from util_mindspore.data.datasets import Loader, build_dataset
    dataset = build_dataset("train", data_args(args.data, args.workers, args.batch_size))
    loader = Loader(dataset, args.batch_size, train=True, num_workers=args.workers)
    started, cpu = time.perf_counter(), sum(os.times()[:2])
    count = sum(len(images) for images, _, _ in loader)
    wall = time.perf_counter() - started
    args.cores_busy = round((sum(os.times()[:2]) - cpu) / wall, 2)  # CPU seconds per second: threads at work
    return count, wall


def upstream_pipeline(args):
    import torch
    from timm.data import create_transform
    from torchvision import datasets

    from util_mindspore.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    torch.set_num_threads(1)
    transform = create_transform(input_size=224, is_training=True, color_jitter=None,
                                 auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic", re_prob=0.25,
                                 re_mode="pixel", re_count=1, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    dataset = datasets.ImageFolder(os.path.join(args.data, "train"), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers)
    started = time.perf_counter()
    count = sum(len(images) for images, _ in loader)
    return count, time.perf_counter() - started


def startup(args):
    """build_datasets as main_finetune_mindspore.py calls it, then the first batch of the train loader."""
    from util_mindspore.data.datasets import Loader, build_datasets
    started = time.perf_counter()
    datasets = build_datasets(data_args(args.data, args.workers, args.batch_size), ["train"])
    next(iter(Loader(datasets["train"], args.batch_size, train=True, num_workers=args.workers)))
    return len(datasets["train"]), time.perf_counter() - started


def epoch(args):
    """One epoch of the tiny model, as train_one_epoch runs it, with the time spent waiting for data."""
    import mindspore as ms

    from util_mindspore.data.datasets import Loader, build_dataset
    from util_mindspore.data.mixup import one_hot
    from util_mindspore.models.factory import create_model
    from util_mindspore.training.lr_decay import param_groups_lrd
    from util_mindspore.training.optim import AdamW
    from util_mindspore.training.train_step import ClassifierLoss, TrainStep
    ms.set_context(mode=ms.GRAPH_MODE)
    model = create_model("vit_tiny_patch16", img_size=224, num_classes=2, drop_path_rate=0.1)
    scales, decays, _ = param_groups_lrd(model, 0.05, model.no_weight_decay(), 0.65)
    step = TrainStep(ClassifierLoss(model), AdamW(model.trainable_params(), scales, decays), clip_grad=None,
                     loss_scaling=False)
    step.set_train(True)
    dataset = build_dataset("train", data_args(args.data, args.workers, args.batch_size))
    loader = Loader(dataset, args.batch_size, train=True, num_workers=args.workers)
    lr = ms.Tensor(1e-4, ms.float32)
    images, targets, _ = next(iter(loader))  # compile outside the timed epoch
    step(ms.Tensor(images), ms.Tensor(one_hot(targets, 2)), lr, True)[0].asnumpy()
    data_s = step_s = 0.0
    started = waited = time.perf_counter()
    count = 0
    for images, targets, _ in loader:
        got = time.perf_counter()
        data_s += got - waited
        step(ms.Tensor(images), ms.Tensor(one_hot(targets, 2)), lr, True)[0].asnumpy()
        waited = time.perf_counter()
        step_s += waited - got
        count += len(images)
    return {"images": count, "epoch_s": round(waited - started, 2), "data_s": round(data_s, 2),
            "step_s": round(step_s, 2)}


def child(args):
    work = {"ours": ours_pipeline, "upstream": upstream_pipeline, "startup": startup}.get(args.child)
    if work:
        count, seconds = work(args)
        out = {"images": count, "seconds": round(seconds, 2), "img_per_s": round(count / seconds, 1),
               "cores_busy": getattr(args, "cores_busy", None)}
    else:
        out = epoch(args)
    out.update(what=args.child, workers=args.workers,
               peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    print(json.dumps(out))


def run_child(what, args, data, workers=None):
    command = [sys.executable, __file__, "--child", what, "--data", data, "--workers", str(workers or args.workers),
               "--batch_size", str(args.batch_size)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        return {"what": what, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def linked_copies(source_files, folder, count):
    """`count` names in two class folders, hard links to the source JPEGs (cycled)."""
    for k in range(count):
        target = os.path.join(folder, "train", f"class_{k % 2}", f"{k:06d}.jpg")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.link(source_files[k % len(source_files)], target)
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=300, type=int)
    parser.add_argument("--image_px", default=2000, type=int)
    parser.add_argument("--batch_size", default=32, type=int)
    parser.add_argument("--workers", default=2, type=int)
    parser.add_argument("--rounds", default=2, type=int)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    work = tempfile.mkdtemp(prefix="retfound_bench_data_")
    sources = []
    for c in range(2):
        folder = make_images(os.path.join(work, "photos", "train", f"class_{c}"), args.images // 2, args.image_px,
                             seed=c)
        sources += sorted(os.path.join(folder, f) for f in os.listdir(folder))
    data = os.path.join(work, "photos")
    pipeline = {}
    for _ in range(args.rounds):
        for what in ("upstream", "ours"):
            pipeline.setdefault(what, []).append(run_child(what, args, data))
    ours_one = run_child("ours", args, data, workers=1)
    starts = {n: run_child("startup", args, linked_copies(sources, os.path.join(work, f"n{n}"), n))
              for n in (1000, 20000)}
    one_epoch = run_child("epoch", args, data)

    def median(runs, key):
        return statistics.median(r[key] for r in runs if key in r)
    print(f"Machine: {machine()}\n")
    print(f"{args.images} JPEGs of {args.image_px} x {args.image_px * 3 // 4} px, training transform at 224, batch "
          f"{args.batch_size}, {args.workers} workers, {args.rounds} alternating rounds\n")
    up, ours = median(pipeline["upstream"], "img_per_s"), median(pipeline["ours"], "img_per_s")
    print("| pipeline | img/s | peak RSS |\n|---|---|---|")
    print(f"| upstream (ImageFolder + timm create_transform + DataLoader) | {up:.1f} | "
          f"{median(pipeline['upstream'], 'peak_rss_mb'):.0f} MB |")
    print(f"| ours (Loader, prefetching) | {ours:.1f} ({ours / up:.2f}x) | "
          f"{median(pipeline['ours'], 'peak_rss_mb'):.0f} MB |")
    print(f"| ours, 1 worker | {ours_one.get('img_per_s')} | |\n")
    busy = [r.get("cores_busy") for r in pipeline["ours"]]
    print(f"CPU seconds per second during our passes: {busy} with {args.workers} workers, "
          f"{ours_one.get('cores_busy')} with 1\n")
    print("| files | start-up to the first batch |\n|---|---|")
    for n, r in starts.items():
        print(f"| {n} | {r.get('seconds', r.get('error'))} s |")
    print(f"\nOne epoch, vit_tiny_patch16 at 224: {json.dumps(one_epoch)}")
    if "img_per_s" in ours_one:
        speedup = ours / ours_one["img_per_s"]
        parallel = 2 * (1 - 1 / speedup) if speedup > 1 else 0.0  # Amdahl with 2 workers
        print(f"2 workers / 1 worker: {speedup:.2f}x; Amdahl's parallel share {parallel:.2f}: threads stop scaling "
              f"near {1 / max(1e-9, 1 - parallel):.1f}x")


if __name__ == "__main__":
    main()
