"""The pictures: what each shows (counts and percentages, per-class AUC, the best epoch), and a PDF beside each."""
import os

import numpy as np
from PIL import Image

from util_mindspore.evaluation import figures


def test_confusion_matrix_shows_counts_and_row_percentages_with_a_title_and_a_pdf(tmp_path, monkeypatch):
    texts = []
    original = figures.save_figure

    def capture(fig, path, **kwargs):
        texts.extend(t.get_text() for ax in fig.axes for t in ax.texts + [ax.title])
        original(fig, path, **kwargs)
    monkeypatch.setattr(figures, "save_figure", capture)
    labels = np.array([0, 0, 0, 1, 1, 2])
    probs = np.eye(3)[[0, 0, 1, 1, 2, 2]]
    path = str(tmp_path / "confusion_matrix_test.jpg")
    matrix = figures.save_confusion_matrix(path, labels, probs, ["a", "b", "c"], title="Confusion matrix, test")
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert "2\n66.7%" in texts and "1\n33.3%" in texts and "1\n100.0%" in texts
    assert any(t.startswith("Confusion matrix, test\n6 images, accuracy 0.667") for t in texts)
    assert Image.open(path).format == "JPEG" and open(figures.vector_path(path), "rb").read(4) == b"%PDF"


def test_roc_legend_gives_each_class_its_auc_and_lines_differ(tmp_path, monkeypatch):
    from sklearn.metrics import roc_auc_score
    seen = {}
    original = figures.save_figure

    def capture(fig, path, **kwargs):
        ax = fig.axes[0]
        seen["labels"] = [t.get_text() for t in ax.get_legend().get_texts()]
        seen["styles"] = [(line.get_color(), line.get_linestyle()) for line in ax.get_lines()]
        original(fig, path, **kwargs)
    monkeypatch.setattr(figures, "save_figure", capture)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    figures.save_roc_curves(str(tmp_path / "roc.png"), labels, probs, ["a", "b", "c"])
    for k, name in enumerate("abc"):
        auc = roc_auc_score(labels == k, probs[:, k])
        assert f"{name} (AUC {auc:.3f}, n={int((labels == k).sum())})" in seen["labels"]
    assert len(set(seen["styles"])) == len(seen["styles"])
    assert os.path.exists(tmp_path / "roc.pdf")


def test_training_curves_mark_the_best_epoch(tmp_path, monkeypatch):
    seen = {}
    original = figures.save_figure

    def capture(fig, path, **kwargs):
        seen["labels"] = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
        original(fig, path, **kwargs)
    monkeypatch.setattr(figures, "save_figure", capture)
    rows = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "val_score": s, "val_accuracy": s}
            for e, s in enumerate([0.3, 0.7, 0.5])]
    figures.save_training_curves(str(tmp_path / "curves.png"), rows, best_epoch=1)
    assert "best epoch 1" in seen["labels"] and os.path.exists(tmp_path / "curves.pdf")
