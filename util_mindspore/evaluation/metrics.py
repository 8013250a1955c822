"""Upstream's evaluation metrics (scikit-learn), its metrics CSV, the predictions CSV, and bootstrap confidence
intervals of the metrics over the test images (beyond upstream; figures.py draws the pictures)."""
import csv
import io
import os
import warnings
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from util_mindspore.files.atomic import append_whole, atomic_write
from util_mindspore.files.names import printable, spreadsheet_safe

METRIC_COLUMNS = ["val_loss", "accuracy", "f1", "roc_auc", "hamming", "jaccard", "precision", "recall",
                  "average_precision", "kappa"]


def compute_metrics(labels: np.ndarray, probs: np.ndarray, loss: float) -> Dict[str, float]:
    """Upstream's metrics, each scikit-learn call made as upstream's engine_finetune.evaluate makes it (one-hot
    labels and predictions where upstream uses them), so every CSV column equals upstream's on the same data.

    Where a class is absent from the split, ROC-AUC is undefined: scikit-learn >= 1.6 returns nan (older versions
    raised, stopping upstream's run), and nan is what metrics_<mode>.csv gets. Deliberate difference: the score
    that picks checkpoint-best then uses the macro ROC-AUC of the classes the split does have (`roc_auc_present`),
    so a split without some class still selects a best epoch; upstream's `max_score < nan` never would.
    """
    # imported here: scikit-learn is slow to import, and training needs it only after the first epoch
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
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = probs.shape[1]
    preds = probs.argmax(axis=1)
    true_onehot, pred_onehot = np.eye(num_classes, dtype=np.int64)[labels], np.eye(num_classes, dtype=np.int64)[preds]
    with warnings.catch_warnings():  # undefined per-class values are expected on small splits; the CSV shows them
        warnings.simplefilter("ignore")
        metrics = {
            "val_loss": float(loss),
            "accuracy": accuracy_score(labels, preds),
            "f1": f1_score(true_onehot, pred_onehot, zero_division=0, average="macro"),
            "roc_auc": _roc_auc(roc_auc_score, true_onehot, probs),
            "hamming": hamming_loss(true_onehot, pred_onehot),
            "jaccard": jaccard_score(true_onehot, pred_onehot, average="macro"),
            "precision": precision_score(true_onehot, pred_onehot, zero_division=0, average="macro"),
            "recall": recall_score(true_onehot, pred_onehot, zero_division=0, average="macro"),
            "average_precision": average_precision_score(true_onehot, probs, average="macro"),
            "kappa": cohen_kappa_score(labels, preds),
        }
        metrics = {k: float(v) for k, v in metrics.items()}
        ranked = (true_onehot.min(axis=0) == 0) & (true_onehot.max(axis=0) == 1)  # classes with both outcomes
        auc_present = metrics["roc_auc"] if np.isfinite(metrics["roc_auc"]) or not ranked.any() else float(
            roc_auc_score(true_onehot[:, ranked], probs[:, ranked], average="macro"))
    metrics["roc_auc_present"] = auc_present
    metrics["score"] = (metrics["f1"] + auc_present + metrics["kappa"]) / 3.0
    return metrics


def _roc_auc(roc_auc_score: Callable[..., float], true_onehot: np.ndarray, probs: np.ndarray) -> float:
    try:
        return roc_auc_score(true_onehot, probs, multi_class="ovr", average="macro")
    except ValueError:  # scikit-learn < 1.6 raises where a class is absent; later versions return nan
        return float("nan")


def _csv_text(rows: Iterable[Iterable[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def append_metrics_csv(path: str, metrics: Mapping[str, float]) -> None:
    """Upstream appends a row in place; a crash mid-append would leave half a row, so the file is rewritten
    whole (it holds one row per epoch) through a temporary file."""
    append_whole(path, _csv_text([[metrics[k] for k in METRIC_COLUMNS]]), initial=_csv_text([METRIC_COLUMNS]))


def keep_first_rows(path: str, rows: int, header: bool = True) -> None:
    """Cut a CSV (or, header=False, a text file of lines) back to its first `rows` data rows: what a resumed run
    does to the rows written after the checkpoint it resumes from, so none is written twice."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf8") as fh:
        lines = fh.readlines()
    keep = rows + (1 if header else 0)
    if len(lines) > keep:
        with atomic_write(path, encoding="utf8") as fh:
            fh.writelines(lines[:keep])


def count_rows(path: str, header: bool = True) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf8") as fh:
        return max(sum(1 for _ in fh) - (1 if header else 0), 0)


def write_predictions_csv(path: str, paths: Sequence[str], labels: np.ndarray, probs: np.ndarray,
                          class_names: Sequence[str]) -> None:
    """path,label,prediction,prob_<class>...: one row per image, labels and predictions by class name (names as
    file_names.printable writes them)."""
    names = [spreadsheet_safe(printable(c)) for c in class_names]
    with atomic_write(path, newline="", encoding="utf8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "prediction"] + [f"prob_{c}" for c in names])
        for p, label, row in zip(paths, labels, probs):
            # repr: exact floats, so metrics recomputed from this file equal the CSV's
            writer.writerow([spreadsheet_safe(printable(p)), names[int(label)], names[int(np.argmax(row))]] +
                            [repr(float(v)) for v in row])


def read_predictions_csv(path: str) -> Tuple[List[str], np.ndarray, np.ndarray, List[str]]:
    """(paths, label indices, probabilities, class names) back from write_predictions_csv's file."""
    with open(path, newline="", encoding="utf8") as fh:
        rows = list(csv.reader(fh))
    class_names = [c[len("prob_"):] for c in rows[0][3:]]
    index = {c: i for i, c in enumerate(class_names)}
    paths = [r[0] for r in rows[1:]]
    labels = np.array([index[r[1]] for r in rows[1:]], dtype=np.int64)
    probs = np.array([[float(v) for v in r[3:]] for r in rows[1:]], dtype=np.float64)
    return paths, labels, probs, class_names


# --- bootstrap confidence intervals --------------------------------------------------------------------------------

BOOTSTRAP_RESAMPLES = 1000
CI_COLUMNS = ["metric", "value", "ci_low", "ci_high", "confidence", "resamples", "defined_in"]
BOOTSTRAP_METRICS = METRIC_COLUMNS[1:] + ["score"]


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC of one column: the Mann-Whitney statistic, ties counted one half (sklearn's trapezoids)."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.nan
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average_rank = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(average_rank, counts)
    return (ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _binary_average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    """average_precision_score of one column: sum over distinct thresholds of (recall step) x precision; 0 when
    the column has no positives, as scikit-learn returns."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        return 0.0
    order = np.argsort(-score, kind="mergesort")
    s, y = score[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each distinct threshold
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1.0)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fast_metrics(labels: np.ndarray, probs: np.ndarray) -> Dict[str, float]:
    """compute_metrics' columns (but val_loss) from the confusion matrix and per-class rankings: the same values
    as the scikit-learn calls (tests/evaluation/test_metrics.py checks them to 1e-12), fast enough for 1,000
    resamples."""
    labels = np.asarray(labels, np.int64)
    n, c = probs.shape
    preds = probs.argmax(axis=1)
    cm = np.bincount(labels * c + preds, minlength=c * c).reshape(c, c).astype(np.float64)
    tp = np.diag(cm)
    fp, fn = cm.sum(axis=0) - tp, cm.sum(axis=1) - tp

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    rows, cols = cm.sum(axis=1), cm.sum(axis=0)
    expected_agreement = float((rows * cols).sum()) / n
    kappa = (float(tp.sum()) - expected_agreement) / (n - expected_agreement) if n != expected_agreement else np.nan
    onehot = np.eye(c, dtype=bool)[labels]
    out = {
        "accuracy": float(tp.sum()) / n,
        "f1": float(ratio(2 * tp, 2 * tp + fp + fn).mean()),
        "roc_auc": float(np.mean([_binary_auc(onehot[:, k], probs[:, k]) for k in range(c)])),
        "hamming": float((fp + fn).sum()) / (n * c),
        "jaccard": float(ratio(tp, tp + fp + fn).mean()),
        "precision": float(ratio(tp, tp + fp).mean()),
        "recall": float(ratio(tp, tp + fn).mean()),
        "average_precision": float(np.mean([_binary_average_precision(onehot[:, k], probs[:, k]) for k in range(c)])),
        "kappa": kappa,
    }
    aucs = [_binary_auc(onehot[:, k], probs[:, k]) for k in range(c)]
    present = [a for a in aucs if np.isfinite(a)]
    auc_present = out["roc_auc"] if np.isfinite(out["roc_auc"]) or not present else float(np.mean(present))
    out["score"] = (out["f1"] + auc_present + out["kappa"]) / 3.0
    return out


def bootstrap_intervals(labels: np.ndarray, probs: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                        confidence: float = 0.95) -> Dict[str, Tuple[float, float, int]]:
    """{metric: (low, high, resamples where it is defined)}: percentile intervals of each metric over `resamples`
    draws of the test images with replacement (numpy's default_rng(seed): the same intervals every run)."""
    labels, probs = np.asarray(labels, np.int64), np.asarray(probs, np.float64)
    rng = np.random.default_rng(seed)
    draws = {name: [] for name in BOOTSTRAP_METRICS}
    for _ in range(int(resamples)):
        pick = rng.integers(0, len(labels), len(labels))
        for name, value in fast_metrics(labels[pick], probs[pick]).items():
            draws[name].append(value)
    tail = (1.0 - confidence) / 2.0 * 100.0
    intervals = {}
    for name, values in draws.items():
        values = np.asarray(values, np.float64)
        values = values[np.isfinite(values)]
        low, high = (np.percentile(values, [tail, 100.0 - tail]) if len(values) else (np.nan, np.nan))
        intervals[name] = (float(low), float(high), int(len(values)))
    return intervals


def write_intervals_csv(path: str, results: Mapping[str, float], intervals: Mapping[str, Tuple[float, float, int]],
                        confidence: float = 0.95, resamples: Optional[int] = None) -> None:
    """metrics_test_ci.csv: each metric's value (as in metrics_test.csv), its bootstrap interval, and in how many
    resamples it was defined (ROC-AUC is not where a class is drawn no image)."""
    rows = [CI_COLUMNS]
    for name, (low, high, defined) in intervals.items():
        total = resamples or max(d for _, _, d in intervals.values())
        rows.append([name, repr(float(results[name])), repr(low), repr(high), confidence, total, defined])
    with atomic_write(path, newline="", encoding="utf8") as fh:
        csv.writer(fh).writerows(rows)


def read_intervals_csv(path: str) -> Dict[str, Tuple[float, float, float]]:
    """{metric: (value, low, high)} from write_intervals_csv's file."""
    with open(path, newline="", encoding="utf8") as fh:
        rows = list(csv.DictReader(fh))
    return {r["metric"]: (float(r["value"]), float(r["ci_low"]), float(r["ci_high"])) for r in rows}
