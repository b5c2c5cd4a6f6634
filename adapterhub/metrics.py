"""Recommendation metrics as pure functions (numpy only; bad input is a DataError).

Ranks are 1-based. Ties in ranking metrics are broken pessimistically: a positive tied with
negatives is ranked after them, so a constant scorer earns no credit. (Baselines with integer
scores add a tiny seeded jitter to break their ties at random.) AUC counts ties as 1/2.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import DataError


def auc(labels, scores) -> float:
    """ROC AUC = P(score of a random positive > a random negative), ties count 1/2."""
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"AUC needs both classes, got {n_pos} positives and {n_neg} negatives")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]   # 1-based, ties get their mean rank
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logloss(labels, probs, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; probabilities are clipped to [eps, 1 - eps]."""
    y = np.asarray(labels, dtype=float)
    p = np.clip(np.asarray(probs, dtype=float), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def rank_of_positive(pos_score: float, neg_scores) -> int:
    """1 + number of negatives scoring >= the positive (pessimistic ties)."""
    return 1 + int(np.sum(np.asarray(neg_scores, dtype=float) >= pos_score))


def hr_at_k(rank: int, k: int) -> float:
    return 1.0 if rank <= k else 0.0


def ndcg_at_k(rank: int, k: int) -> float:
    """One relevant item: DCG = 1 / log2(rank + 1), the ideal DCG is 1."""
    return 1.0 / math.log2(rank + 1) if rank <= k else 0.0


def mrr(ranks) -> float:
    return float(np.mean([1.0 / r for r in ranks]))


def _order(labels, scores) -> np.ndarray:
    """Labels sorted by descending score; among ties negatives first (pessimistic)."""
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    return y[np.lexsort((y, -s))]


def ndcg_at_k_multi(labels, scores, k: int) -> float:
    """nDCG@k with several positives, gains 2^y - 1 as in MIND's evaluation script."""
    y = _order(labels, scores)
    ideal = np.sort(np.asarray(labels, dtype=float))[::-1]
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float(np.sum((2 ** y[:k] - 1) * discount[: len(y[:k])]))
    idcg = float(np.sum((2 ** ideal[:k] - 1) * discount[: len(ideal[:k])]))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_multi(labels, scores) -> float:
    """MIND's MRR: the mean over clicked items of 1 / their rank in the whole list."""
    y = _order(labels, scores)
    n_pos = y.sum()
    return float(np.sum(y / np.arange(1, len(y) + 1)) / n_pos) if n_pos else 0.0


def group_auc(labels, scores, groups) -> float:
    """Mean AUC over groups, skipping groups with one class only (MIND's 'AUC').

    All groups in one sort (a bootstrap calls this hundreds of times): each group's AUC is auc()'s,
    bit for bit (the same half-integer rank sums over the same products), and the mean is taken over
    the groups in order of first appearance, as a loop over them would."""
    y, s = np.asarray(labels, dtype=float), np.asarray(scores, dtype=float)
    if not np.isin(y, (0.0, 1.0)).all():
        raise DataError(f"labels must be 0 or 1, got {sorted(set(y[~np.isin(y, (0.0, 1.0))].tolist()))[:5]}",
                        field="label")
    _, first, code = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    code = code.reshape(-1)
    order = np.lexsort((s, code))                     # by group, then score
    cs, ss = code[order], s[order]
    n = len(ss)
    # tie blocks: runs of one score (NaNs count as one score, as np.unique has them) within one group
    same = (cs[1:] == cs[:-1]) & ((ss[1:] == ss[:-1]) | (np.isnan(ss[1:]) & np.isnan(ss[:-1])))
    starts = np.flatnonzero(np.r_[True, ~same])
    ends = np.r_[starts[1:], n]
    group_start = np.searchsorted(cs, cs)             # where each element's group begins in the sort
    block = np.repeat(np.arange(len(starts)), ends - starts)
    ranks = np.empty(n)                               # 1-based within the group, ties get their mean rank
    ranks[order] = (starts[block] + ends[block] + 1) / 2 - group_start
    k = len(first)
    pos = np.bincount(code, weights=(y == 1), minlength=k)
    neg = np.bincount(code, weights=(y == 0), minlength=k)
    rank_sum = np.bincount(code, weights=np.where(y == 1, ranks, 0.0), minlength=k)
    appearance = np.argsort(first, kind="stable")     # the groups in order of first appearance
    kept = appearance[(pos[appearance] > 0) & (neg[appearance] > 0)]
    if not len(kept):
        raise DataError("no group has both positives and negatives: AUC is undefined for every group")
    p, q = pos[kept], neg[kept]
    return float(np.mean((rank_sum[kept] - p * (p + 1) / 2) / (p * q)))
