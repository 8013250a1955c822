"""metrics_<mode>.csv columns equal upstream engine_finetune.evaluate's scikit-learn calls on the same data."""
import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    cohen_kappa_score,
    f1_score,
    hamming_loss,
    jaccard_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from util_mindspore.evaluation import metrics as metrics_lib


def upstream_metrics(labels, probs):
    """The calls upstream's evaluate makes: one-hot labels and one-hot argmax predictions where it uses them."""
    num_classes = probs.shape[1]
    preds = probs.argmax(1)
    t, p1 = np.eye(num_classes, dtype=int)[labels], np.eye(num_classes, dtype=int)[preds]
    try:
        auc = roc_auc_score(t, probs, multi_class="ovr", average="macro")
    except ValueError:
        auc = math.nan
    return {"accuracy": accuracy_score(labels, preds), "f1": f1_score(t, p1, zero_division=0, average="macro"),
            "roc_auc": auc, "hamming": hamming_loss(t, p1), "jaccard": jaccard_score(t, p1, average="macro"),
            "precision": precision_score(t, p1, zero_division=0, average="macro"),
            "recall": recall_score(t, p1, zero_division=0, average="macro"),
            "average_precision": average_precision_score(t, probs, average="macro"),
            "kappa": cohen_kappa_score(labels, preds)}


def split(num_classes, n=40, absent=(), seed=0):
    rng = np.random.default_rng(seed)
    present = [c for c in range(num_classes) if c not in absent]
    labels = rng.choice(present, n)
    labels[:len(present)] = present
    logits = rng.normal(size=(n, num_classes)) + 1.5 * np.eye(num_classes)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs


@pytest.mark.parametrize("num_classes, absent", [(2, ()), (3, ()), (5, ()), (3, (1,)), (5, (0, 4))])
def test_every_column_equals_upstreams_formula(num_classes, absent):
    labels, probs = split(num_classes, absent=absent)
    ours = metrics_lib.compute_metrics(labels, probs, 0.5)
    expected = upstream_metrics(labels, probs)
    for name, value in expected.items():
        if math.isnan(value):
            assert math.isnan(ours[name]), name
        else:
            assert ours[name] == pytest.approx(value, abs=1e-12), name
    assert ours["val_loss"] == 0.5


def test_hamming_is_on_one_hot_vectors():
    """3 classes, 1 of 4 wrong: upstream's one-hot hamming is 2 * (1 - accuracy) / 3, not 1 - accuracy."""
    labels = np.array([0, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 2, 0]] * 0.8 + 0.2 / 3
    assert metrics_lib.compute_metrics(labels, probs, 0.0)["hamming"] == pytest.approx(2 * 0.25 / 3)


def test_absent_class_writes_nan_auc_and_scores_by_the_present_classes():
    labels, probs = split(3, absent=(2,))
    ours = metrics_lib.compute_metrics(labels, probs, 0.0)
    assert math.isnan(ours["roc_auc"])
    present_auc = roc_auc_score(np.eye(3)[labels][:, :2], probs[:, :2], average="macro")
    assert ours["roc_auc_present"] == pytest.approx(present_auc)
    assert ours["score"] == pytest.approx((ours["f1"] + present_auc + ours["kappa"]) / 3)
    complete = metrics_lib.compute_metrics(*split(3), 0.0)
    assert complete["roc_auc_present"] == complete["roc_auc"]


def test_metrics_csv_writes_nan_as_upstream(tmp_path):
    labels, probs = split(3, absent=(0,))
    path = str(tmp_path / "metrics_val.csv")
    metrics_lib.append_metrics_csv(path, metrics_lib.compute_metrics(labels, probs, 0.25))
    header, row = open(path).read().splitlines()
    assert header.split(",") == metrics_lib.METRIC_COLUMNS
    assert row.split(",")[3] == "nan"


def test_fast_metrics_equal_the_scikit_learn_calls_on_resamples_with_ties_and_absent_classes():
    """The bootstrap's metrics (computed from the confusion matrix and rankings) equal compute_metrics' scikit-learn
    calls, ties in the scores and classes absent from a resample included."""
    from util_mindspore.evaluation.metrics import compute_metrics, fast_metrics
    rng = np.random.default_rng(1)
    worst = 0.0
    for trial in range(200):
        n, c = int(rng.integers(2, 40)), int(rng.integers(2, 6))
        labels = rng.integers(0, c, n)
        probs = rng.dirichlet(np.ones(c), n)
        if trial % 3 == 0:  # ties
            probs = np.round(probs, 1) + 1e-9
            probs /= probs.sum(1, keepdims=True)
        expected, ours = compute_metrics(labels, probs, 0.0), fast_metrics(labels, probs)
        for name, value in ours.items():
            if not (np.isnan(value) and np.isnan(expected[name])):
                worst = max(worst, abs(value - expected[name]))
    assert worst <= 1e-12


def test_bootstrap_intervals_are_reproducible_cover_the_value_and_are_written(tmp_path):
    from util_mindspore.evaluation.metrics import (
        bootstrap_intervals,
        compute_metrics,
        read_intervals_csv,
        write_intervals_csv,
    )
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 120)
    probs = np.eye(3)[labels] * 0.3 + rng.dirichlet(np.ones(3), 120) * 0.7  # better than chance, not perfect
    first, again = bootstrap_intervals(labels, probs, 200, seed=0), bootstrap_intervals(labels, probs, 200, seed=0)
    assert first == again and bootstrap_intervals(labels, probs, 200, seed=1) != first
    results = compute_metrics(labels, probs, 0.5)
    for name, (low, high, defined) in first.items():
        assert low <= results[name] <= high and defined == 200, name
    path = str(tmp_path / "metrics_test_ci.csv")
    write_intervals_csv(path, results, first)
    back = read_intervals_csv(path)
    assert back["accuracy"] == (results["accuracy"], first["accuracy"][0], first["accuracy"][1])
    assert open(path).readline().strip() == "metric,value,ci_low,ci_high,confidence,resamples,defined_in"
