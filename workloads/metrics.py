"""Task metrics in numpy: what a model's outputs are worth on the workload's own test data."""

from __future__ import annotations

import numpy as np


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy: fraction of rows whose arg-max over the last axis equals the label."""
    logits, labels = np.asarray(logits), np.asarray(labels).reshape(-1)
    pred = logits.reshape(labels.size, -1).argmax(axis=1)
    return float((pred == labels).mean())


def confusion(pred: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """[classes, classes] counts, rows = truth, columns = prediction."""
    idx = np.asarray(labels).reshape(-1).astype(np.int64) * classes + np.asarray(pred).reshape(-1)
    return np.bincount(idx, minlength=classes * classes).reshape(classes, classes)


def mean_iou(pred: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """Mean intersection-over-union over the classes that occur in the truth or the prediction
    (integer class maps of equal shape; classes absent from both are left out)."""
    cm = confusion(pred, labels, classes).astype(np.float64)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    present = union > 0
    if not present.any():
        return 1.0
    return float((inter[present] / union[present]).mean())


def rmse(pred: np.ndarray, target: np.ndarray) -> float:
    pred = np.asarray(pred, np.float64).reshape(-1)
    target = np.asarray(target, np.float64).reshape(-1)
    return float(np.sqrt(np.mean((pred - target) ** 2)))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank statistic (Mann-Whitney U): the probability that a
    random positive scores above a random negative, ties counting one half."""
    from scipy.stats import rankdata

    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative labels")
    ranks = rankdata(s)  # average ranks for ties
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


__all__ = ["accuracy", "confusion", "mean_iou", "rmse", "auroc"]
