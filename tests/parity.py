"""Shared helpers for the parity tests: build both models from one random state dict, compare outputs.

Every figure is recorded (`assert_within`) and printed at the end of the run; with $RETFOUND_PARITY_FIGURES set
they are also written there as JSON, and `python tests/parity.py A.json B.json` prints two runs side by side
(.ci/run compares this CPU's kernels with the same suite limited to AVX2).
"""
import json
import sys

import mindspore as ms
import numpy as np

from util_mindspore.models.factory import create_model
from util_mindspore.models.weights import load_arrays_into_model

FIGURES = []  # (what, measured, bound), printed at the end of the run by conftest


def assert_within(what, value, bound):
    """Record a parity figure and assert it at its bound (the README states these bounds)."""
    FIGURES.append((what, float(value), float(bound)))
    assert value <= bound, f"{what}: {value:.3e} > {bound:.1e}"


def relative_error(ours, reference):
    """max |ours - reference| / max(1, max |reference|): the form of the parity bounds (README, Parity). Outputs
    of magnitude ~1 and below are compared absolutely, larger ones relative to their size, so a bound follows
    the values' magnitude, never the CPU's summation order at some magnitude."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.abs(ours - reference).max() / max(1.0, float(np.abs(reference).max())))


def set_mode(mode):
    ms.set_context(mode={"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}[mode])


def both_modes(what, ours, images, expected, bound):
    """Graph mode against the reference at `bound`, and PyNative mode giving graph mode's logits (execution-mode
    equality, proven once per family)."""
    set_mode("graph")
    graph = ms_logits(ours, images)
    assert_within(f"{what} (graph)", relative_error(graph, expected), bound)
    set_mode("pynative")
    assert_within(f"{what}: PyNative vs graph", relative_error(ms_logits(ours, images), graph), 1e-6)
    set_mode("graph")


def mindspore_twin(name, state_dict, **kwargs):
    """Our model with the reference's weights, loaded by name through the real loader; asserts a full load."""
    model = create_model(name, **kwargs)
    report = load_arrays_into_model(model, state_dict, source="reference state dict")
    assert report.missing == [] and report.unexpected == [] and report.reinitialized == [], str(report)
    assert sorted(report.loaded) == sorted(state_dict), "every reference tensor must be used"
    model.set_train(False)
    return model


def ms_logits(model, images):
    return model(ms.Tensor(images)).asnumpy()


def random_images(batch, size, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def write_figures(path):
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(FIGURES, fh, indent=0)


def compare(first, second):
    """Two runs' figures side by side, with each figure's bound: the lines where either run is near or past it."""
    runs = []
    for path in (first, second):
        with open(path, encoding="utf-8") as fh:
            runs.append({what: (value, bound) for what, value, bound in json.load(fh)})
    print(f"{'figure':<84} {'run 1':>10} {'run 2':>10} {'bound':>8}")
    for what in runs[0]:
        if what in runs[1]:
            (a, bound), (b, _) = runs[0][what], runs[1][what]
            mark = "  <-- past the bound" if max(a, b) > bound else "  <-- above half the bound" if \
                max(a, b) > bound / 2 else ""
            print(f"{what[:84]:<84} {a:>10.3e} {b:>10.3e} {bound:>8.1e}{mark}")


if __name__ == "__main__":
    compare(*sys.argv[1:3])
