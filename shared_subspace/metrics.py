"""Continual-learning metrics on the accuracy matrix R, with their textbook definitions.

R is T x T: R[i, j] = score on task j after training on tasks 0..i (0-based). Only the lower
triangle (j <= i) is needed; the entry just above the diagonal, R[j-1, j], is the score on task j
before training on it (forward transfer). `base[j]` is the score of the untrained starting model.

    ACC  = 1/T sum_j R[T-1, j]                                   (Lopez-Paz & Ranzato 2017)
    BWT  = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])             (Lopez-Paz & Ranzato 2017)
    FWT  = 1/(T-1) sum_{j>0} (R[j-1, j] - base[j])               (Lopez-Paz & Ranzato 2017)
    forgetting, Avalanche: f_j = R[j, j] - R[T-1, j]             (right after training - latest)
    forgetting, Mammoth:   f_j = max_{j<=l<=T-1} R[l, j] - R[T-1, j] (best score ever - latest; >= 0)
"""
from __future__ import annotations

import numpy as np

__all__ = ["as_matrix", "acc", "bwt", "fwt", "forgetting_avalanche", "forgetting_mammoth", "summary"]


def as_matrix(R) -> np.ndarray:
    """R as a float T x T array; raises ValueError if it is not square, empty, or its lower triangle has NaN."""
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square T x T with T >= 1, got shape {R.shape}")
    if np.isnan(R[np.tril_indices(len(R))]).any():
        raise ValueError("accuracy matrix has NaN in its lower triangle (j <= i): was every seen task scored?")
    return R


def acc(R) -> float:
    """Average accuracy after the last task: ACC = 1/T sum_j R[T-1, j]."""
    R = as_matrix(R)
    return float(R[-1].mean())


def bwt(R) -> float:
    """Backward transfer: BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j]).

    Negative = forgetting. 0.0 for a one-task stream (nothing to look back on).
    """
    R = as_matrix(R)
    T = len(R)
    if T == 1:
        return 0.0
    return float(np.mean(R[-1, :-1] - np.diag(R)[:-1]))


def fwt(R, base) -> float:
    """Forward transfer: FWT = 1/(T-1) sum_{j>0} (R[j-1, j] - base[j]).

    How much training on earlier tasks helps (or hurts) a task before it is trained on, relative
    to the untrained starting model. Needs the entries just above the diagonal (NaN -> ValueError).
    """
    R = as_matrix(R)
    base = np.asarray(base, dtype=float)
    T = len(R)
    if base.shape != (T,):
        raise ValueError(f"base must hold one score per task ({T}), got shape {base.shape}")
    if T == 1:
        return 0.0
    before = np.array([R[j - 1, j] for j in range(1, T)])
    if np.isnan(before).any() or np.isnan(base[1:]).any():
        raise ValueError("FWT needs R[j-1, j] (score before training task j) and base[j]: run with forward_transfer=True")
    return float(np.mean(before - base[1:]))


def forgetting_avalanche(R) -> np.ndarray:
    """Per-task forgetting as in Avalanche: f_j = R[j, j] - R[T-1, j], for j < T-1.

    Score right after training on task j minus its latest score. Returns T-1 values.
    """
    R = as_matrix(R)
    return np.diag(R)[:-1] - R[-1, :-1]


def forgetting_mammoth(R) -> np.ndarray:
    """Per-task forgetting as in Mammoth's `forgetting`: f_j = max_{j<=l<=T-1} R[l, j] - R[T-1, j].

    Best score task j ever had since it was trained (Mammoth's max runs over every row, the last
    included), minus its latest score. Returns T-1 values, each >= 0 and >= the Avalanche value.
    Chaudhry et al. (2018) take the max over l < T-1 only; the two differ only when the last score is the best.
    """
    R = as_matrix(R)
    T = len(R)
    return np.array([R[j:, j].max() - R[-1, j] for j in range(T - 1)])


def summary(R, base=None) -> dict:
    """ACC, BWT, mean forgetting (both flavours) and, when `base` and R[j-1, j] are known, FWT."""
    R = as_matrix(R)
    out = {"ACC": acc(R), "BWT": bwt(R),
           "forgetting_avalanche": float(forgetting_avalanche(R).mean()) if len(R) > 1 else 0.0,
           "forgetting_mammoth": float(forgetting_mammoth(R).mean()) if len(R) > 1 else 0.0}
    if base is not None:
        try:
            out["FWT"] = fwt(R, base)
        except ValueError:
            out["FWT"] = float("nan")
    return out
