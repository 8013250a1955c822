"""Upstream's evaluation metrics (scikit-learn), its metrics CSV, and the pictures we write beside it."""
import csv
import io
import os
import warnings

import numpy as np

from util_mindspore.atomic_files import append_whole, atomic_write
from util_mindspore.file_names import printable

METRIC_COLUMNS = ["val_loss", "accuracy", "f1", "roc_auc", "hamming", "jaccard", "precision", "recall",
                  "average_precision", "kappa"]


def compute_metrics(labels, probs, loss):
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


def _roc_auc(roc_auc_score, true_onehot, probs):
    try:
        return roc_auc_score(true_onehot, probs, multi_class="ovr", average="macro")
    except ValueError:  # scikit-learn < 1.6 raises where a class is absent; later versions return nan
        return float("nan")


def _csv_text(rows):
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def append_metrics_csv(path, metrics):
    """Upstream appends a row in place; a crash mid-append would leave half a row, so the file is rewritten
    whole (it holds one row per epoch) through a temporary file."""
    append_whole(path, _csv_text([[metrics[k] for k in METRIC_COLUMNS]]), initial=_csv_text([METRIC_COLUMNS]))


def keep_first_rows(path, rows, header=True):
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


def count_rows(path, header=True):
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf8") as fh:
        return max(sum(1 for _ in fh) - (1 if header else 0), 0)


def write_predictions_csv(path, paths, labels, probs, class_names):
    """path,label,prediction,prob_<class>...: one row per image, labels and predictions by class name (names as
    file_names.printable writes them)."""
    names = [printable(c) for c in class_names]
    with atomic_write(path, newline="", encoding="utf8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "prediction"] + [f"prob_{c}" for c in names])
        for p, label, row in zip(paths, labels, probs):
            # repr: exact floats, so metrics recomputed from this file equal the CSV's
            writer.writerow([printable(p), names[int(label)], names[int(np.argmax(row))]] +
                            [repr(float(v)) for v in row])


def read_predictions_csv(path):
    """(paths, label indices, probabilities, class names) back from write_predictions_csv's file."""
    with open(path, newline="", encoding="utf8") as fh:
        rows = list(csv.reader(fh))
    class_names = [c[len("prob_"):] for c in rows[0][3:]]
    index = {c: i for i, c in enumerate(class_names)}
    paths = [r[0] for r in rows[1:]]
    labels = np.array([index[r[1]] for r in rows[1:]], dtype=np.int64)
    probs = np.array([[float(v) for v in r[3:]] for r in rows[1:]], dtype=np.float64)
    return paths, labels, probs, class_names


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save_figure(fig, path, dpi):
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, dpi=dpi, format=os.path.splitext(path)[1][1:])
    _pyplot().close(fig)


def save_confusion_matrix(path, labels, probs, class_names):
    """Row-normalised confusion matrix, as upstream's confusion_matrix_test.jpg."""
    from sklearn.metrics import confusion_matrix
    plt = _pyplot()
    cm = confusion_matrix(labels, np.asarray(probs).argmax(axis=1), labels=list(range(len(class_names))))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 3, 1.2 * len(class_names) + 2))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    names = [printable(c) for c in class_names]
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("Actual")
    _save_figure(fig, path, 150)


def save_roc_curves(path, labels, probs, class_names):
    from sklearn.metrics import roc_curve
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for i, name in enumerate(class_names):
        positives = np.asarray(labels) == i
        if positives.any() and (~positives).any():
            fpr, tpr, _ = roc_curve(positives, np.asarray(probs)[:, i])
            ax.plot(fpr, tpr, label=printable(name))
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title("ROC, one vs rest")
    ax.legend(loc="lower right")
    _save_figure(fig, path, 150)


def save_training_curves(path, log_rows):
    """Train loss, val loss and val score per epoch from log.txt rows."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in log_rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r.get("train_loss") for r in log_rows], label="train loss")
    left.plot(epochs, [r.get("val_loss") for r in log_rows], label="val loss")
    left.set_xlabel("epoch")
    left.legend()
    right.plot(epochs, [r.get("val_score") for r in log_rows], label="val score (F1+AUC+kappa)/3")
    right.plot(epochs, [r.get("val_accuracy") for r in log_rows], label="val accuracy")
    right.set_xlabel("epoch")
    right.legend()
    _save_figure(fig, path, 120)
