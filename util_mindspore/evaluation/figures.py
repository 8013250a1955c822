"""The pictures an evaluation and a training run write, fit for a paper: each as the raster upstream writes (JPG /
PNG) and as a PDF beside it (vector, for journals). Colours are Okabe-Ito's (readable with colour-blindness), and
every curve also differs by its line style."""
import os
import types
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import numpy as np

from util_mindspore.files.atomic import atomic_write
from util_mindspore.files.names import printable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Okabe & Ito's palette, then line styles: eight classes stay apart in colour, and in grey print by their style
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
LINE_STYLES = ("-", "--", "-.", ":")


def pyplot() -> types.ModuleType:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def vector_path(path: str) -> str:
    """The PDF written beside a raster picture: confusion_matrix_test.jpg -> confusion_matrix_test.pdf."""
    return os.path.splitext(path)[0] + ".pdf"


def save_figure(fig: "Figure", path: str, dpi: int = 150, vector: bool = True) -> None:
    """Write `fig` to `path` (its extension says the format) and, with `vector`, a PDF beside it; each file whole
    or not at all."""
    fig.tight_layout()
    targets = [path] + ([vector_path(path)] if vector else [])
    for target in targets:
        with atomic_write(target, "wb") as fh:
            fig.savefig(fh, dpi=dpi, format=os.path.splitext(target)[1][1:])
    pyplot().close(fig)


def save_confusion_matrix(path: str, labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                          title: str = "Confusion matrix") -> np.ndarray:
    """Counts and row percentages in each cell, rows the true classes, coloured by the row fraction (the matrix
    upstream's confusion_matrix_test.jpg shows, with the counts a paper reports)."""
    from sklearn.metrics import confusion_matrix
    plt = pyplot()
    k = len(class_names)
    cm = confusion_matrix(labels, np.asarray(probs).argmax(axis=1), labels=list(range(k)))
    fraction = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.3 * k + 3.2, 1.2 * k + 2.4))
    image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{100 * fraction[i, j]:.1f}%", ha="center", va="center", fontsize=10,
                    color="white" if fraction[i, j] > 0.5 else "black")
    names = [printable(c) for c in class_names]
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), [f"{n} (n={int(cm[i].sum())})" for i, n in enumerate(names)])
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(f"{printable(title)}\n{int(cm.sum())} images, accuracy {np.trace(cm) / max(cm.sum(), 1):.3f}",
                 fontsize=11)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    save_figure(fig, path)
    return cm


def save_roc_curves(path: str, labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                    title: str = "ROC, one vs rest") -> None:
    """One ROC curve per class (one vs rest) with its AUC in the legend; a class the split lacks or fills alone has
    no curve and says so."""
    from sklearn.metrics import roc_auc_score, roc_curve
    plt = pyplot()
    labels, probs = np.asarray(labels), np.asarray(probs)
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    for i, name in enumerate(class_names):
        positives = labels == i
        style = dict(color=PALETTE[i % len(PALETTE)], linestyle=LINE_STYLES[(i // len(PALETTE) + i) % 4],
                     linewidth=1.8)
        if positives.any() and (~positives).any():
            fpr, tpr, _ = roc_curve(positives, probs[:, i])
            auc = roc_auc_score(positives, probs[:, i])
            ax.plot(fpr, tpr, label=f"{printable(name)} (AUC {auc:.3f}, n={int(positives.sum())})", **style)
        else:
            ax.plot([], [], label=f"{printable(name)} (no curve: {int(positives.sum())} images)", **style)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1.0, label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(printable(title), fontsize=11)
    ax.legend(loc="lower right", fontsize=9)
    save_figure(fig, path)


def save_training_curves(path: str, log_rows: Sequence[Mapping[str, object]], best_epoch: Optional[int] = None) -> None:
    """Train and val loss, val score and accuracy per epoch from log.txt rows; the best epoch (checkpoint-best)
    marked on both panels."""
    plt = pyplot()
    epochs = [r["epoch"] for r in log_rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r.get("train_loss") for r in log_rows], color=PALETTE[0], label="train loss")
    left.plot(epochs, [r.get("val_loss") for r in log_rows], color=PALETTE[1], linestyle="--", label="val loss")
    right.plot(epochs, [r.get("val_score") for r in log_rows], color=PALETTE[2], label="val score (F1+AUC+kappa)/3")
    right.plot(epochs, [r.get("val_accuracy") for r in log_rows], color=PALETTE[3], linestyle="--",
               label="val accuracy")
    if best_epoch is not None:
        best = next((r for r in log_rows if r["epoch"] == best_epoch), None)
        for ax in (left, right):
            ax.axvline(best_epoch, color="0.4", linestyle=":", linewidth=1.2,
                       label=f"best epoch {best_epoch}" if ax is right else None)
        if best is not None and best.get("val_score") is not None:
            right.plot([best_epoch], [best["val_score"]], marker="*", markersize=12, color=PALETTE[2])
    from matplotlib.ticker import MaxNLocator
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=9)
    left.set_title("Loss", fontsize=11)
    right.set_title("Validation", fontsize=11)
    save_figure(fig, path, dpi=120)


def save_reconstructions(path: str, panels: Sequence[np.ndarray], names: Sequence[str], title: str) -> None:
    """One row per image: original, masked, reconstruction, reconstruction with the visible patches pasted (the
    four panels of RETFound_visualize.ipynb), PNG and PDF."""
    plt = pyplot()
    originals = panels[0]
    rows = len(originals)
    headings = ("original", "masked", "reconstruction", "reconstruction + visible")
    fig, axes = plt.subplots(rows, 4, figsize=(12, 3.1 * rows + 0.6), squeeze=False)
    for r in range(rows):
        for c in range(4):
            ax = axes[r][c]
            ax.imshow(panels[c][r])
            ax.axis("off")
            if r == 0:
                ax.set_title(headings[c], fontsize=12)
        axes[r][0].text(-0.04, 0.5, printable(names[r]), transform=axes[r][0].transAxes, rotation=90, ha="right",
                        va="center", fontsize=9)
    fig.suptitle(printable(title), fontsize=12)
    save_figure(fig, path, dpi=100)
