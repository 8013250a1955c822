"""`train_one_epoch` of MAE pre-training (upstream engine_pretrain.py, for MindSpore): the shared epoch loop
(util_mindspore/epoch_loop.py) with the masking noise drawn on the host, so a run is reproducible from its seed."""
import numpy as np

from util_mindspore import epoch_loop


def masking_noise(seed, epoch, step, rank, batch, patches):
    """The uniform draw upstream's random_masking takes from torch.rand (batch, patches): from numpy, seeded by
    (seed, epoch, step, rank), so a resumed run masks as the uninterrupted one would."""
    return np.random.default_rng([seed, epoch, step, rank]).random((batch, patches), dtype=np.float32)


def train_one_epoch(train_step, loader, epoch, args, num_patches, tb_log=None):
    """Upstream's train_one_epoch (util_mindspore/epoch_loop.py), each step's masking noise drawn by
    masking_noise. Returns the epoch's mean loss and lr."""
    def step_inputs(it, images, _):
        return images, masking_noise(args.seed, epoch, it, args.rank, len(images), num_patches)
    return epoch_loop.train_one_epoch(train_step, loader, epoch, args, step_inputs, tb_log)[0]
