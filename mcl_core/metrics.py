"""Out-of-distribution detection metrics and classification accuracy.

Convention, fixed once for the whole project: a score is higher for inputs
that look more in-distribution (IND), and the IND test set is the positive
class. AUROC is therefore the probability that a random IND score exceeds a
random OOD score (ties count one half), FPR95 is the fraction of OOD inputs
accepted at the threshold that keeps 95 % of IND inputs, AUPR-in ranks by
the score with IND positive, and AUPR-out ranks by the negated score with
OOD positive (SPEC section 8).

``ood_metrics`` returns fractions in [0, 1] from scikit-learn;
``official_metrics`` reproduces, in percent, the approximations of the
authors' released ``Metric`` class (SPEC section 9.6).
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

log = logging.getLogger(__name__)

# threshold count of the released AUPR sums (SPEC 9.6)
OFFICIAL_AUPR_STEPS = 30000


def _as_scores(x, name: str) -> np.ndarray:
    """Validate a 1-D, non-empty, finite score array; torch or numpy."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty; at least one score is needed")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(
            f"{name} holds {int(bad.sum())} NaN or infinite values of "
            f"{x.size}; only finite scores are accepted"
        )
    return x


def ood_metrics(ind_scores, ood_scores) -> dict[str, float]:
    """AUROC, FPR at 95 % TPR, AUPR-in and AUPR-out as fractions (SPEC 8).

    Args:
        ind_scores: (N_in,) scores of the in-distribution test set.
        ood_scores: (N_out,) scores of the OOD set; higher = more IND.

    Returns:
        ``{"auroc", "fpr95", "aupr_in", "aupr_out"}``, each in [0, 1].
    """
    ind = _as_scores(ind_scores, "ind_scores")
    ood = _as_scores(ood_scores, "ood_scores")
    y = np.concatenate([np.ones(ind.size), np.zeros(ood.size)])  # IND = 1
    s = np.concatenate([ind, ood])

    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {
        "auroc": float(roc_auc_score(y, s)),
        "fpr95": float(fpr[np.argmax(tpr >= 0.95)]),
        "aupr_in": float(average_precision_score(y, s)),
        "aupr_out": float(average_precision_score(1 - y, -s)),
    }


def accuracy(pred, target) -> float:
    """Fraction of predictions equal to the target class."""
    pred = _as_labels(pred, "pred")
    target = _as_labels(target, "target")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {pred.shape} "
            f"and {target.shape}"
        )
    return float(np.mean(pred == target))


def _as_labels(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be 1-D and non-empty, got {x.shape}")
    return x


def official_metrics(ind_scores, ood_scores) -> dict[str, float]:
    """The released ``Metric`` approximations, in percent (SPEC 9.6).

    * fpr: threshold at ``sorted(ind)[N_in // 20]``; reported only when
      the IND rate at or above it lies in [0.9495, 0.9505], else 100;
    * auroc: the released merge walk of the two sorted lists. It equals
      ``sum_k #(ind >= ood_(k)) / (N_in N_out)`` over the sorted OOD scores
      except the largest (and except the smallest when it lies at or below
      every IND score), so it is biased low by about ``100 / N_out`` (up to
      ``200 / N_out`` for separated scores) and counts ties as correctly
      ranked;
    * aupr_in / aupr_out: 30,000 evenly spaced thresholds between the
      smallest and largest score, precision from rates ``TPR / (TPR + FPR)``
      and a rectangle sum.

    Returns:
        ``{"fpr", "auroc", "aupr_in", "aupr_out"}`` in percent.
    """
    ind = np.sort(_as_scores(ind_scores, "ind_scores"))
    ood = np.sort(_as_scores(ood_scores, "ood_scores"))
    lo, hi = min(ind[0], ood[0]), max(ind[-1], ood[-1])
    if lo == hi:
        raise ValueError(
            f"all scores equal {lo}; the released AUPR has no thresholds"
        )
    return {
        "fpr": _official_fpr(ind, ood),
        "auroc": _official_auroc(ind, ood),
        "aupr_in": _official_aupr(ind, ood, lo, hi, outlier=False),
        "aupr_out": _official_aupr(ind, ood, lo, hi, outlier=True),
    }


def _count_at_least(sorted_x: np.ndarray, t) -> np.ndarray:
    return sorted_x.size - np.searchsorted(sorted_x, t, side="left")


def _official_fpr(ind: np.ndarray, ood: np.ndarray) -> float:
    threshold = ind[ind.size // 20]
    tpr = _count_at_least(ind, threshold) / ind.size
    if not 0.9495 <= tpr <= 0.9505:
        log.warning(
            "official FPR: IND rate %.4f at the threshold is not 0.95 "
            "(ties or N_in = %d not a multiple of 20); reporting 100",
            tpr, ind.size,
        )
        return 100.0
    return 100.0 * _count_at_least(ood, threshold) / ood.size


def _official_auroc(ind: np.ndarray, ood: np.ndarray) -> float:
    # the walk credits, for every OOD score but the largest, the IND rate
    # at or above it; a credit due on the walk's first step is dropped
    credits = _count_at_least(ind, ood[:-1]).astype(np.float64)  # (N_out-1,)
    if ood.size > 1 and ind[0] >= ood[0]:
        credits[0] = 0.0
    return 100.0 * credits.sum() / (ind.size * ood.size)


def _official_aupr(
    ind: np.ndarray, ood: np.ndarray, lo: float, hi: float, *, outlier: bool
) -> float:
    gap = (hi - lo) / OFFICIAL_AUPR_STEPS
    if outlier:
        # OOD positive: scores strictly below a threshold sweeping downwards
        thresholds = np.arange(hi, lo, -gap)
        tp = np.searchsorted(ood, thresholds, side="left") / ood.size
        fp = np.searchsorted(ind, thresholds, side="left") / ind.size
        empty = np.flatnonzero(tp + fp == 0)
        if empty.size:
            tp, fp = tp[:empty[0]], fp[:empty[0]]
    else:
        thresholds = np.arange(lo, hi, gap)
        tp = _count_at_least(ind, thresholds) / ind.size
        fp = _count_at_least(ood, thresholds) / ood.size
        keep = tp + fp > 0
        tp, fp = tp[keep], fp[keep]
    if tp.size == 0:
        raise ValueError("the released AUPR found no usable threshold")

    # rectangle sum over recall steps, starting from recall 1
    precision = tp / (tp + fp)
    recall_prev = np.concatenate([[1.0], tp[:-1]])
    area = np.sum((recall_prev - tp) * precision) + tp[-1] * precision[-1]
    return 100.0 * float(area)
