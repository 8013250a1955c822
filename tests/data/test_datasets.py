"""The data pipeline: prefetched batches equal sequential ones, threads end, start-up reads headers only."""
import argparse
import os
import random
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.helpers import make_dataset
from util_mindspore.data.datasets import DataError, Loader, build_dataset, build_datasets, subsample_indices


def data_args(data, **extra):
    values = dict(data_path=data, input_size=32, aa="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel", recount=1,
                  color_jitter=None, nb_classes=3, num_workers=2, batch_size=4, check_images=False)
    values.update(extra)
    return argparse.Namespace(**values)


def loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith(("retfound-loader", "retfound-decode"))]


def sequential(loader):
    """What the loader must yield: each batch decoded one image at a time, with the per-image RNGs."""
    indices = loader.indices()
    for b in range(len(loader)):
        chunk = indices[b * loader.batch_size:(b + 1) * loader.batch_size]
        items = [loader.dataset.load(int(i), random.Random(hash((loader.seed, loader.epoch, loader.rank, int(i)))))
                 for i in chunk]
        yield np.stack([x for x, _ in items]), np.array([t for _, t in items], np.int32), np.asarray(chunk)


@pytest.mark.parametrize("train", [True, False])
def test_prefetched_batches_equal_sequential_ones_in_order(tmp_path, train):
    data = make_dataset(tmp_path / "data", per_split={"train": 7, "test": 7})
    dataset = build_dataset("train" if train else "test", data_args(data))
    loader = Loader(dataset, 4, train=train, num_workers=3, seed=5, prefetch=2)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        got, expected = list(loader), list(sequential(loader))
        assert len(got) == len(expected) == (5 if train else 6)
        for (x, y, i), (ex, ey, ei) in zip(got, expected):
            np.testing.assert_array_equal(x, ex)
            np.testing.assert_array_equal(y, ey)
            np.testing.assert_array_equal(i, ei)
    assert not loader_threads()


def test_ranks_of_an_evaluation_see_every_image_once(tmp_path):
    data = make_dataset(tmp_path / "data", per_split={"test": 3})
    dataset = build_dataset("test", data_args(data))
    seen = [int(i) for rank in range(3) for _, _, idx in Loader(dataset, 2, train=False, rank=rank, world_size=3)
            for i in idx]
    assert sorted(seen) == list(range(len(dataset)))


def test_threads_end_when_a_pass_is_left_early_or_fails(tmp_path):
    data = make_dataset(tmp_path / "data", per_split={"train": 8})
    dataset = build_dataset("train", data_args(data))
    loader = Loader(dataset, 2, train=True, num_workers=2, prefetch=2)
    batches = iter(loader)
    next(batches)
    assert loader_threads()  # the producer is ahead, decoding
    batches.close()  # what a `break` or an exception in the training step does
    assert not loader_threads()
    with open(dataset.samples[5][0], "r+b") as fh:  # a PNG cut after its header: opens, cannot be decoded
        fh.truncate(60)
    with pytest.raises(DataError, match=r"5\.png: cannot be decoded .*--check_images") as err:
        for _ in range(2):
            loader.set_epoch(_)
            list(loader)
    assert "\n" not in str(err.value)
    assert not loader_threads()


def test_start_up_reads_headers_and_check_images_reads_pixels(tmp_path):
    data = make_dataset(tmp_path / "data")
    with open(os.path.join(data, "val", "a", "0.png"), "wb") as fh:
        fh.write(b"not a png")
    with open(os.path.join(data, "test", "b", "1.png"), "r+b") as fh:
        fh.truncate(60)
    os.mkfifo(os.path.join(data, "train", "c", "pipe.png"))  # never opened: it would block
    splits = ["train", "val", "test"]
    with pytest.raises(DataError, match=r"^1 unreadable image file\(s\): .*val/a/0\.png$"):
        build_datasets(data_args(data), splits)
    with pytest.raises(DataError, match=r"^2 unreadable image file\(s\): .*val/a/0\.png, .*test/b/1\.png$"):
        build_datasets(data_args(data, check_images=True), splits)
    os.remove(os.path.join(data, "val", "a", "0.png"))
    datasets = build_datasets(data_args(data), splits)  # the truncated file is found when it is decoded
    assert all(not p.endswith("pipe.png") for p, _ in datasets["train"].samples)


def test_memory_of_a_pass_is_bounded_by_the_queue(tmp_path):
    """Batches are produced no further ahead than the queue's depth."""
    data = make_dataset(tmp_path / "data", per_split={"train": 12})
    dataset = build_dataset("train", data_args(data))
    made = []
    original = dataset.load

    def counting(index, rng):
        made.append(index)
        return original(index, rng)
    dataset.load = counting
    loader = Loader(dataset, 2, train=True, num_workers=2, prefetch=2)
    batches = iter(loader)
    next(batches)
    time.sleep(0.5)  # let the producer run as far ahead as it may
    # one batch consumed, two queued, one being put: at most 4 batches of 2 decoded
    assert len(made) <= 8
    batches.close()


def upstream_subset(targets, ratio, seed, stratified):
    """upstream util/datasets.py's choice of training images, computed with torch as upstream does."""
    torch = pytest.importorskip("torch")
    n = len(targets)
    if not 0.0 < ratio < 1.0:
        return list(range(n))
    if not stratified:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max(1, int(n * ratio))].tolist()
    labels, generator, kept = torch.as_tensor(targets), torch.Generator().manual_seed(seed), []
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).view(-1)
        kept += members[torch.randperm(len(members), generator=generator)[:max(1, int(round(len(members) * ratio)))]
                        ].tolist()
    return torch.tensor(kept)[torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed + 1))].tolist()


@pytest.mark.parametrize("stratified", [False, True])
@pytest.mark.parametrize("ratio", [0.05, 0.25, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("seed", [0, 3])
def test_dataratio_picks_upstreams_indices(ratio, seed, stratified):
    targets = np.repeat(np.arange(4), [13, 40, 7, 25])
    np.random.default_rng(seed).shuffle(targets)
    np.testing.assert_array_equal(subsample_indices(targets, ratio, seed, stratified),
                                  upstream_subset(targets.tolist(), ratio, seed, stratified))


def test_dataratio_subsamples_train_only_and_keeps_labels(tmp_path):
    data = make_dataset(tmp_path / "data", per_split={"train": 10, "val": 4, "test": 4})
    args = data_args(data, dataratio="0.4", stratified=True, seed=0)
    full = build_dataset("train", data_args(data))
    train = build_dataset("train", args)
    expected = upstream_subset(full.targets.tolist(), 0.4, 0, True)
    assert train.samples == [full.samples[i] for i in expected]
    assert train.targets.tolist() == [full.targets[i] for i in expected]
    assert len(build_dataset("val", args)) == 12


def test_image_order_and_links_as_torchvision(tmp_path):
    """torchvision's ImageFolder follows links and sorts by folder, then name; a link loop is walked once."""
    datasets = pytest.importorskip("torchvision.datasets")
    data = make_dataset(tmp_path / "data", per_split={"train": 3})
    cls = tmp_path / "data" / "train" / "a"
    os.makedirs(cls / "sub")
    os.rename(cls / "2.png", cls / "sub" / "0.png")
    outside = tmp_path / "elsewhere"
    os.makedirs(outside)
    os.rename(tmp_path / "data" / "train" / "b" / "1.png", outside / "x.png")
    os.symlink(outside / "x.png", tmp_path / "data" / "train" / "b" / "linked.png")
    os.symlink(outside, cls / "linked_folder")
    os.symlink(tmp_path / "data" / "train" / "c", tmp_path / "data" / "train" / "d")  # a linked class folder
    expected = datasets.ImageFolder(os.path.join(data, "train")).samples
    ours = build_dataset("train", data_args(data, nb_classes=4))
    # deliberate difference: a link to a folder outside its class folder is skipped (torchvision takes its images
    # with this class's label); a link to an image file is followed as torchvision follows it
    assert [(p, int(t)) for p, t in ours.samples] == [(p, t) for p, t in expected if "linked_folder" not in p]
    assert any("linked_folder" in p for p, _ in expected) and any(p.endswith("linked.png") for p, _ in ours.samples)
    assert ours.classes == ["a", "b", "c", "d"]
    os.symlink(cls, cls / "sub" / "loop")  # a loop: torchvision would list a/sub/loop/sub/loop/... until ELOOP
    looped = build_dataset("train", data_args(data, nb_classes=4))
    assert looped.samples == ours.samples  # the folder the loop leads back to was walked already


def test_a_link_that_leaves_its_class_folder_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    """train/red/loop -> .. would make every image of the other classes a 'red' training image; it is skipped."""
    data = make_dataset(tmp_path / "data", per_split={"train": 2, "val": 1, "test": 1})
    os.symlink("..", os.path.join(data, "train", "a", "loop"))
    os.symlink(os.path.join(data, "val", "b"), os.path.join(data, "train", "a", "other_split"))
    with caplog.at_level("WARNING", logger="retfound"):
        dataset = build_dataset("train", data_args(data))
    assert len(dataset) == 6 and [int(t) for _, t in dataset.samples] == [0, 0, 1, 1, 2, 2]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "skipping" in warned and "train/a/loop" in warned and "train/a/other_split" in warned


def test_hidden_folders_are_not_classes(tmp_path):
    """torchvision's ImageFolder makes `.ipynb_checkpoints` a class; Jupyter leaves one in every folder it opens."""
    data = make_dataset(tmp_path / "data", per_split={"train": 2, "val": 1, "test": 1})
    for split in ("train", "val", "test"):
        os.makedirs(os.path.join(data, split, ".ipynb_checkpoints"))
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(data, split, ".ipynb_checkpoints", "x.png"))
    datasets = build_datasets(data_args(data), ["train", "val", "test"])
    assert datasets["train"].classes == ["a", "b", "c"] and len(datasets["train"]) == 6
