"""Fine-tuning's epoch and the evaluation of a split (upstream engine_finetune.py's `train_one_epoch` and
`evaluate`): the epoch loop it shares with pre-training is util_mindspore/training/epoch_loop.py, the compiled step
util_mindspore/training/train_step.py; rank 0 writes the metrics, predictions and pictures."""
import argparse
import json
import logging
import os
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from mindspore import Tensor, nn

from util_mindspore.data.mixup import one_hot
from util_mindspore.evaluation import figures
from util_mindspore.evaluation import metrics as metrics_lib
from util_mindspore.evaluation.probabilities import cross_entropy, softmax
from util_mindspore.files.atomic import append_whole
from util_mindspore.process import distributed
from util_mindspore.process.progress import Progress
from util_mindspore.training import epoch_loop

if TYPE_CHECKING:
    from util_mindspore.data.datasets import Loader
    from util_mindspore.data.mixup import Mixup
    from util_mindspore.training.tensorboard_log import TensorBoardLog
    from util_mindspore.training.train_step import TrainStep

logger = logging.getLogger("retfound")


def train_one_epoch(train_step: "TrainStep", loader: "Loader", epoch: int, args: argparse.Namespace,
                    mixup_fn: Optional["Mixup"] = None,
                    tb_log: Optional["TensorBoardLog"] = None) -> Tuple[Dict[str, float], List[float]]:
    """Upstream's train_one_epoch (training/epoch_loop.py): one-hot targets, or mixup / cutmix's soft ones.
    Returns the epoch's stats and every iteration's lr."""
    def step_inputs(it: int, images: np.ndarray, targets: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        if mixup_fn is not None:
            return mixup_fn(images, targets)
        return images, one_hot(targets, args.nb_classes)
    return epoch_loop.train_one_epoch(train_step, loader, epoch, args, step_inputs, tb_log,
                                      diverged_hint="lower --lr / --blr, or check the data")


def predict(model: nn.Cell, loader: "Loader", args: argparse.Namespace,
            header: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Logits, labels, dataset indices and per-batch losses for this rank's part of the loader (or all of it)."""
    model.set_train(False)
    logits, labels, indices, losses = [], [], [], []
    progress = Progress(len(loader), header, distributed.is_main_process(args), unit="batch", print_freq=10)
    try:
        for images, targets, idx in loader:
            logits.append(model(Tensor(images)).asnumpy().astype(np.float64))
            labels.append(targets)
            indices.append(idx)
            losses.append(cross_entropy(logits[-1], targets))
            progress.update()
    finally:
        progress.close()
    empty = np.zeros((0, args.nb_classes))
    return (np.concatenate(logits) if logits else empty, np.concatenate(labels) if labels else np.zeros(0, np.int32),
            np.concatenate(indices) if indices else np.zeros(0, np.int64), np.asarray(losses, dtype=np.float64))


def evaluate(model: nn.Cell, loader: "Loader", args: argparse.Namespace, mode: str, class_names: Sequence[str],
             out_dir: str, epoch: Optional[int] = None, tb_log: Optional["TensorBoardLog"] = None,
             checkpoint: Optional[str] = None) -> Dict[str, float]:
    """Metrics on one split (upstream's, scikit-learn); rank 0 writes them with the predictions into `out_dir`
    (write_evaluation) and, given a TensorBoard writer, upstream's `perf/<metric>` scalars at `epoch`.
    With --dist_eval each rank predicts its disjoint slice and the rows are gathered: every image counted once.
    val_loss is upstream's: the mean of the per-batch mean losses (over every rank's batches under --dist_eval).
    `checkpoint` names what is evaluated (in the pictures' titles).
    """
    logits, labels, indices, losses = predict(model, loader, args, f"Evaluate [{mode}]")
    if args.dist_eval:
        logits = distributed.all_gather_rows(logits, args)
        labels = distributed.all_gather_rows(labels, args)
        indices = distributed.all_gather_rows(indices, args)
        losses = distributed.all_gather_rows(losses, args)
    probs = softmax(logits) if len(logits) else logits
    loss = float(np.mean(losses)) if len(losses) else 0.0
    results = metrics_lib.compute_metrics(labels, probs, loss)
    if distributed.is_main_process(args):
        paths = [loader.dataset.samples[int(i)][0] for i in indices]
        write_evaluation(out_dir, mode, results, paths, labels, probs, class_names, checkpoint, args)
        if tb_log is not None:
            tb_log.log_evaluation(results, epoch)
    logger.info("[%s] %d images  loss %.4f  accuracy %.4f  f1 %.4f  roc_auc %.4f  kappa %.4f  score %.4f",
                mode, len(labels), loss, results["accuracy"], results["f1"], results["roc_auc"], results["kappa"],
                results["score"])
    return results


def write_evaluation(out_dir: str, mode: str, results: Mapping[str, float], paths: Sequence[str], labels: np.ndarray,
                     probs: np.ndarray, class_names: Sequence[str], checkpoint: Optional[str] = None,
                     args: Optional[argparse.Namespace] = None) -> None:
    """metrics_<mode>.csv (a row appended), predictions_<mode>.csv; on test also the bootstrap confidence
    intervals (metrics_test_ci.csv) and the pictures (confusion matrix, ROC curves; PNG / JPG and PDF)."""
    os.makedirs(out_dir, exist_ok=True)
    metrics_lib.append_metrics_csv(os.path.join(out_dir, f"metrics_{mode}.csv"), results)
    metrics_lib.write_predictions_csv(os.path.join(out_dir, f"predictions_{mode}.csv"), paths, labels, probs,
                                      class_names)
    if mode != "test":
        return
    resamples = getattr(args, "bootstrap", metrics_lib.BOOTSTRAP_RESAMPLES)
    if resamples:
        intervals = metrics_lib.bootstrap_intervals(labels, probs, resamples, seed=getattr(args, "seed", 0))
        metrics_lib.write_intervals_csv(os.path.join(out_dir, "metrics_test_ci.csv"), results, intervals)
    what = f" ({checkpoint})" if checkpoint else ""
    figures.save_confusion_matrix(os.path.join(out_dir, "confusion_matrix_test.jpg"), labels, probs, class_names,
                                  title=f"Confusion matrix, test{what}")
    figures.save_roc_curves(os.path.join(out_dir, "roc_curves_test.png"), labels, probs, class_names,
                            title=f"ROC, one vs rest, test{what}")


def append_log(out_dir: str, row: Mapping[str, object]) -> None:
    """log.txt gains one JSON line, rewritten whole through a temporary file (never half a line)."""
    append_whole(os.path.join(out_dir, "log.txt"), json.dumps(row) + "\n")
