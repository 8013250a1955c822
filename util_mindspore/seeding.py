"""One seed for Python, numpy and MindSpore: weights are drawn from numpy's (util_mindspore/initializers.py), so
every rank of a data-parallel run that seeds alike builds the same initial model."""
import random

import mindspore as ms
import numpy as np


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)
