"""AudioSet tagging metrics: per-class AP and ROC-AUC, mAP, mAUC and d' = sqrt(2) * Phi^-1(mAUC).

Vectorised over classes: one sort of the (N, K) score matrix, then cumulative true/false positive
counts read at the end of every group of tied scores, which is exactly how scikit-learn's
`average_precision_score` (step-wise, ties as one threshold) and `roc_auc_score` (trapezoids, ties
as a diagonal) treat ties. Classes with no positives or no negatives have no AP/AUC: they are NaN
per class, left out of the means, and counted (`excluded_classes`); when no class can be scored the
means are NaN, which `summary()` gives as None (JSON has no NaN). A single-label set (every clip has
exactly one positive class, as in UrbanSound8K or ESC-50) is also scored by top-1 accuracy.
"""
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class TaggingMetrics:
    """Per-class and mean tagging metrics over one evaluation set."""

    average_precision: np.ndarray   # (K,), NaN where the class is excluded
    roc_auc: np.ndarray             # (K,), NaN where the class is excluded
    positives: np.ndarray           # (K,) number of positive clips per class
    mean_average_precision: float
    mean_roc_auc: float
    d_prime: float
    excluded_classes: int           # classes with no positive or no negative clip: not scored
    accuracy: float = math.nan      # top-1 accuracy where every clip has exactly one positive class (of 2+)

    def summary(self) -> dict[str, float | int | None]:
        """The headline numbers, as in the paper's tables, JSON-ready: a mean over no scorable class (or d'
        of a perfect mAUC) is None, never NaN; `accuracy` is there for single-label sets only."""
        figures = {"mAP": self.mean_average_precision, "mAUC": self.mean_roc_auc, "d_prime": self.d_prime}
        return {**{name: value if math.isfinite(value) else None for name, value in figures.items()},
                "excluded_classes": self.excluded_classes,
                **({"accuracy": self.accuracy} if not math.isnan(self.accuracy) else {})}


def d_prime(auc: float) -> float:
    """Sensitivity index from an AUC: sqrt(2) * Phi^-1(AUC) (NaN outside (0, 1))."""
    if not 0.0 < auc < 1.0:
        return math.nan
    return math.sqrt(2.0) * NormalDist().inv_cdf(auc)


def _counts_at_thresholds(targets: np.ndarray, scores: np.ndarray):
    """Cumulative TP/FP at each rank (scores descending), the tie-group-end mask, and the TP/FP at the
    previous group end; all (K, N): one row per class, so every pass runs over contiguous memory."""
    order = np.argsort(-scores, axis=1)   # the order inside a tie group never matters: read at group ends
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    tp = np.cumsum(np.take_along_axis(targets, order, axis=1), axis=1, dtype=np.float64)
    fp = np.arange(1, scores.shape[1] + 1, dtype=np.float64) - tp
    group_end = np.ones(scores.shape, dtype=bool)
    group_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    # tp and fp never decrease, so the running max over group ends is the value at the latest one.
    tp_prev = np.zeros_like(tp)
    fp_prev = np.zeros_like(fp)
    tp_prev[:, 1:] = np.maximum.accumulate(np.where(group_end, tp, 0.0), axis=1)[:, :-1]
    fp_prev[:, 1:] = np.maximum.accumulate(np.where(group_end, fp, 0.0), axis=1)[:, :-1]
    return tp, fp, group_end, tp_prev, fp_prev


def tagging_metrics(targets: np.ndarray, scores: np.ndarray) -> TaggingMetrics:
    """Metrics of clip scores (N, K) against multi-hot targets (N, K)."""
    targets = np.asarray(targets)
    scores = np.asarray(scores)
    if targets.shape != scores.shape or targets.ndim != 2:
        raise ValueError(f"targets {targets.shape} and scores {scores.shape} must both be (clips, classes)")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity; check the model's outputs before computing metrics")
    single_label = targets.shape[1] > 1 and targets.shape[0] > 0 and bool(((targets > 0).sum(axis=1) == 1).all())
    accuracy = (float((np.take_along_axis(targets > 0, scores.argmax(axis=1)[:, None], axis=1)).mean())
                if single_label else math.nan)
    targets = np.ascontiguousarray((targets > 0).T)      # (K, N)
    scores = np.ascontiguousarray(scores.T)
    positives = targets.sum(axis=1, dtype=np.float64)
    negatives = targets.shape[1] - positives
    valid = (positives > 0) & (negatives > 0)

    tp, fp, group_end, tp_prev, fp_prev = _counts_at_thresholds(targets, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / (tp + fp)
        ap = np.where(group_end, (tp - tp_prev) * precision, 0.0).sum(axis=1) / positives
        area = np.where(group_end, (fp - fp_prev) * (tp + tp_prev) / 2.0, 0.0).sum(axis=1)
        auc = area / (positives * negatives)
    ap = np.where(valid, ap, np.nan)
    auc = np.where(valid, auc, np.nan)
    mean_auc = float(np.nanmean(auc)) if valid.any() else math.nan
    return TaggingMetrics(
        average_precision=ap,
        roc_auc=auc,
        positives=positives.astype(np.int64),
        mean_average_precision=float(np.nanmean(ap)) if valid.any() else math.nan,
        mean_roc_auc=mean_auc,
        d_prime=d_prime(mean_auc),
        excluded_classes=int((~valid).sum()),
        accuracy=accuracy,
    )
