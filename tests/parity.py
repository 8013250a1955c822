"""Shared helpers for the parity tests: build both models from one random state dict, compare logits."""
import mindspore as ms
import numpy as np

import models_vit_mindspore
from util_mindspore.weights import load_arrays_into_model

FIGURES = []  # (what, max |diff|), printed at the end of the run by conftest


def record(what, value):
    FIGURES.append((what, float(value)))


def set_mode(mode):
    ms.set_context(mode={"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}[mode])


def mindspore_twin(name, state_dict, **kwargs):
    """Our model with the reference's weights, loaded by name through the real loader; asserts a full load."""
    model = models_vit_mindspore.create_model(name, **kwargs)
    report = load_arrays_into_model(model, state_dict, source="reference state dict")
    assert report.missing == [] and report.unexpected == [] and report.reinitialized == [], str(report)
    assert sorted(report.loaded) == sorted(state_dict), "every reference tensor must be used"
    model.set_train(False)
    return model


def ms_logits(model, images):
    return model(ms.Tensor(images)).asnumpy()


def random_images(batch, size, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)
