"""Logits into probabilities, in float64 as every table we write holds them: the softmax (optionally at a
calibration temperature) and torch's cross-entropy of a batch. Needs numpy only, so a deployment reading an
exported model's outputs uses the same function as evaluation and prediction."""
import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over the last axis, in float64 (temperature 1: the model's own
    probabilities; a fitted temperature: the calibrated ones)."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    shifted = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """torch.nn.CrossEntropyLoss of one batch: the mean over its images of -log p(label)."""
    probs = softmax(logits)
    labels = np.asarray(labels, dtype=np.int64)
    return float(np.mean(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-300))))
