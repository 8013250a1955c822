"""ImageFolder data (`<data_path>/{train,val,test}/<class>/*`, classes sorted by name) and a batch loader.

What can be found without decoding pixels is found before training starts, in one message: a missing split, an
empty class, class names that differ between splits, --nb_classes not matching, files that are not images (their
headers, read by Pillow's Image.open without the pixels). Start-up therefore costs listing and headers only. A
file whose pixels cannot be decoded (a truncated JPEG) stops the run when it is reached, in one line naming it
(upstream's DataLoader stops there too, with a traceback), never with a wrong label; `--check_images` decodes
every image before training instead. Only regular files are taken: a FIFO or device named like an image is
never opened.

The loader decodes with Pillow in a pool of threads (Pillow releases the GIL while decoding and resizing) and a
producer thread keeps a bounded queue of ready batches filled while the training step runs. It shards by rank
(a new seeded shuffle each epoch) and, for evaluation, gives each rank a disjoint slice so every image is seen
exactly once (no padding). Threads live for one pass over the data: they end with it, on an error and on Ctrl-C.
"""
import argparse
import logging
import os
import queue
import random
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from util_mindspore.data.transforms import Transform, build_transform
from util_mindspore.errors import DataError, first_line
from util_mindspore.files.names import printable
from util_mindspore.process.seeding import TorchCPUGenerator

logger = logging.getLogger("retfound")

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def is_regular_file(path: str) -> bool:
    """Whether `path` (after links) is a regular file: a FIFO or device named like an image is never opened."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def list_images(folder: str, hidden: bool = True) -> List[str]:
    """Image files under `folder` in torchvision ImageFolder's order: os.walk following symbolic links, sorted by
    folder then name. Only regular files (after links) are taken; a folder reached twice through links (a loop)
    is walked once, where torchvision would go round it until the path grows too long; a link to a folder outside
    `folder` (`loop -> ..`, `x -> ../other_class`) is skipped with a warning naming it, where torchvision would give
    the images it reaches this folder's label. `hidden=False` also skips hidden folders (`.ipynb_checkpoints`)."""
    walked, seen, root = [], set(), os.path.realpath(folder)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        seen.add(os.path.realpath(dirpath))
        kept = []
        for d in dirnames:
            path = os.path.join(dirpath, d)
            real = os.path.realpath(path)
            if real in seen or (not hidden and d.startswith(".")):
                continue
            if os.path.islink(path) and not _inside(real, root):
                logger.warning("skipping %s: a link to %s, outside %s", printable(path), printable(real),
                               printable(folder))
                continue
            kept.append(d)
        dirnames[:] = kept
        walked.append((dirpath, dirnames, filenames))
    return [os.path.join(dirpath, name) for dirpath, _, filenames in sorted(walked) for name in sorted(filenames)
            if name.lower().endswith(IMG_EXTENSIONS) and is_regular_file(os.path.join(dirpath, name))]


def subsample_indices(targets: Sequence[int], ratio: float, seed: int, stratified: bool = False) -> np.ndarray:
    """Upstream's --dataratio subset of the training split (its util/datasets.py), index for index.

    Uniform: the first max(1, int(n * ratio)) of randperm(n) seeded `seed`. Stratified: per class, in class order,
    max(1, round(n_c * ratio)) indices from a randperm of that class drawn from one generator seeded `seed`, then
    all of them shuffled by a randperm seeded `seed + 1`. A ratio of 1 (or outside (0, 1)) keeps everything.
    """
    targets = np.asarray(targets)
    n = len(targets)
    if not 0.0 < ratio < 1.0:
        return np.arange(n)
    if not stratified:
        return TorchCPUGenerator(seed).randperm(n)[:max(1, int(n * ratio))]
    generator, keep = TorchCPUGenerator(seed), []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        keep.extend(members[generator.randperm(len(members))[:max(1, int(round(len(members) * ratio)))]].tolist())
    keep = np.asarray(keep, dtype=np.int64)
    return keep[TorchCPUGenerator(seed + 1).randperm(len(keep))]


class ImageFolder:
    """torchvision's ImageFolder, checked: `root/<class>/<images>`, classes sorted by name, hidden folders skipped.

    Args:
        root: the split's folder.
        transform: (picture, per-image random generator) -> CHW float32 array.
    """

    def __init__(self, root: str, transform: Optional[Transform] = None) -> None:
        self.root, self.transform = root, transform
        if not os.path.isdir(root):
            raise DataError(f"{root}: split folder not found (expected <data_path>/{{train,val,test}}/<class>/*)")
        self.classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise DataError(f"{root}: no class folders inside")
        self.samples = []
        for index, name in enumerate(self.classes):
            folder = os.path.join(root, name)
            files = list_images(folder)
            if not files:
                raise DataError(f"{folder}: class '{name}' has no images ({', '.join(IMG_EXTENSIONS)})")
            self.samples.extend((path, index) for path in files)
        self.targets = np.array([t for _, t in self.samples], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.samples)

    def keep_only(self, indices: Sequence[int]) -> None:
        """This dataset reduced to `indices`, in that order (upstream's torch Subset)."""
        self.samples = [self.samples[int(i)] for i in indices]
        self.targets = self.targets[np.asarray(indices, dtype=np.int64)]

    def load(self, index: int, rng: random.Random) -> Tuple[np.ndarray, int]:
        """The transformed image `index` and its class; a file that cannot be decoded is a one-line DataError."""
        path, target = self.samples[index]
        try:
            with Image.open(path) as img:
                img.load()
                return self.transform(img, rng), target
        except DECODE_ERRORS as exc:
            raise DataError(f"{path}: cannot be decoded ({first_line(exc)}); --check_images lists every such file "
                            "before training") from exc

    def find_unreadable(self, workers: int = 4, decode: bool = False) -> List[str]:
        """Paths Pillow cannot open: from their headers (fast), or decode=True, from every pixel (finds truncated
        files too, and costs a full decode of the data set)."""
        def bad(path: str) -> Optional[str]:
            try:
                with Image.open(path) as img:
                    if decode:
                        img.load()
                return None
            except DECODE_ERRORS:
                return path
        with ThreadPoolExecutor(workers) as pool:
            return [p for p in pool.map(bad, [p for p, _ in self.samples]) if p]


class UnlabelledImages(ImageFolder):
    """Every image under a folder, in any layout (searched recursively), for MAE pre-training; upstream's ImageFolder
    (`<folder>/train/<class>/*`) is such a folder too. Labels are all 0: pre-training has none."""

    def __init__(self, root: str, transform: Optional[Transform] = None) -> None:  # not ImageFolder's: no class folders
        self.root, self.transform, self.classes = root, transform, []
        if not os.path.isdir(root):
            raise DataError(f"--data_path {root}: not a folder")
        self.samples = [(path, 0) for path in list_images(root, hidden=False)]
        if not self.samples:
            raise DataError(f"--data_path {root}: no images found ({', '.join(IMG_EXTENSIONS)})")
        self.targets = np.zeros(len(self.samples), dtype=np.int32)


def build_dataset(split: str, args: argparse.Namespace) -> ImageFolder:
    """One split of `<args.data_path>/<split>` with its transform, reduced by --dataratio for training.

    Args:
        split: train, val or test (train: the training transform and --dataratio).
        args: main_finetune_mindspore.py's arguments (data_path, input_size, augmentation flags, seed).
    """
    dataset = ImageFolder(os.path.join(args.data_path, split), build_transform(split == "train", args))
    ratio = float(getattr(args, "dataratio", 1.0))
    if split == "train" and ratio < 1.0:
        total = len(dataset)
        dataset.keep_only(subsample_indices(dataset.targets, ratio, args.seed, getattr(args, "stratified", False)))
        logger.info("--dataratio %s%s: training on %d of %d images", args.dataratio,
                    " --stratified" if getattr(args, "stratified", False) else "", len(dataset), total)
    return dataset


def build_datasets(args: argparse.Namespace, splits: Sequence[str]) -> Dict[str, ImageFolder]:
    """The datasets of `splits`, checked together; raises DataError listing every problem found.

    Args:
        args: main_finetune_mindspore.py's arguments (data_path, nb_classes, num_workers, check_images, ...).
        splits: the splits to build, the first one naming the classes (train, or test for --eval).
    """
    datasets = {split: build_dataset(split, args) for split in splits}
    first = splits[0]
    for split in splits[1:]:
        if datasets[split].classes != datasets[first].classes:
            raise DataError(f"class folders differ between {first} ({', '.join(datasets[first].classes)}) and "
                            f"{split} ({', '.join(datasets[split].classes)}) in {args.data_path}")
    classes = datasets[first].classes
    if args.nb_classes != len(classes):
        raise DataError(f"--nb_classes {args.nb_classes} does not match the {len(classes)} class folders in "
                        f"{os.path.join(args.data_path, first)} ({', '.join(classes)})")
    decode = getattr(args, "check_images", False)
    unreadable = [p for split in splits for p in datasets[split].find_unreadable(max(2, args.num_workers), decode)]
    if unreadable:
        raise DataError(f"{len(unreadable)} unreadable image file(s): {', '.join(unreadable)}")
    return datasets


_END = object()


class Loader:
    """Batches of (images float32 NCHW, targets int32, indices) from an ImageFolder.

    train=True: this rank's shard of a permutation seeded by (seed, epoch), drop_last as upstream.
    train=False: this rank's contiguous slice in order, last batch kept: every image exactly once overall.
    Up to `prefetch` batches (default: half of num_workers, at least 2) are decoded ahead of the consumer.
    """

    def __init__(self, dataset: ImageFolder, batch_size: int, train: bool, num_workers: int = 2, seed: int = 0,
                 rank: int = 0, world_size: int = 1, prefetch: Optional[int] = None) -> None:
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_workers = max(1, num_workers)
        self.prefetch = prefetch or max(2, self.num_workers // 2)
        self.epoch = 0
        n = len(dataset)
        if train:
            self.per_rank = n // world_size
            if self.per_rank < batch_size:
                raise DataError(f"{dataset.root}: {n} images give {self.per_rank} per process, fewer than "
                                f"--batch_size {batch_size}: lower --batch_size")
        else:
            bounds = np.linspace(0, n, world_size + 1).astype(int)
            self.eval_indices = np.arange(bounds[rank], bounds[rank + 1])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        """This rank's image indices for the current epoch, in the order they are batched."""
        if not self.train:
            return self.eval_indices
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset))
        return order[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]

    def __len__(self) -> int:
        if self.train:
            return self.per_rank // self.batch_size
        return (len(self.eval_indices) + self.batch_size - 1) // self.batch_size

    def _batch(self, pool: ThreadPoolExecutor, chunk: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        # one RNG per image, derived from (seed, epoch, rank, index): augmentation is reproducible
        rngs = [random.Random(hash((self.seed, self.epoch, self.rank, int(i)))) for i in chunk]
        items = list(pool.map(self.dataset.load, chunk, rngs))
        return (np.stack([im for im, _ in items]), np.array([t for _, t in items], dtype=np.int32),
                np.asarray(chunk))

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        indices = self.indices()
        chunks = [indices[b * self.batch_size:(b + 1) * self.batch_size] for b in range(len(self))]
        ready, stop = queue.Queue(self.prefetch), threading.Event()

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                with ThreadPoolExecutor(self.num_workers, thread_name_prefix="retfound-decode") as pool:
                    for chunk in chunks:
                        if not put(self._batch(pool, chunk)):
                            return
                put(_END)
            except BaseException as exc:  # handed to the consumer, raised there
                put(exc)

        producer = threading.Thread(target=produce, name="retfound-loader", daemon=True)
        producer.start()
        try:
            while True:
                item = ready.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            producer.join()
