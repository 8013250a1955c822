"""Shared helpers for the parity tests: build both models from one random state dict, compare logits."""
import mindspore as ms
import numpy as np

import models_vit_mindspore
from util_mindspore.models.weights import load_arrays_into_model

FIGURES = []  # (what, max |diff|, bound), printed at the end of the run by conftest


def assert_within(what, value, bound):
    """Record a parity figure and assert it at its bound (the README states these bounds)."""
    FIGURES.append((what, float(value), float(bound)))
    assert value <= bound, f"{what}: {value:.3e} > {bound:.1e}"


def set_mode(mode):
    ms.set_context(mode={"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}[mode])


def both_modes(what, ours, images, expected, bound):
    """Graph mode against the reference at `bound`, and PyNative mode giving graph mode's logits (execution-mode
    equality, proven once per family)."""
    set_mode("graph")
    graph = ms_logits(ours, images)
    assert_within(f"{what} (graph)", np.abs(graph - expected).max(), bound)
    set_mode("pynative")
    assert_within(f"{what}: PyNative vs graph", np.abs(ms_logits(ours, images) - graph).max(), 1e-6)
    set_mode("graph")


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
