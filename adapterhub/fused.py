"""The fused score: a logistic blend of the adapter's Yes-No logit with the rules' features
(adapterhub.facts.features), fit on the valid split and stored, as plain numbers, in the card.

    model = fit(X, y, names=["llm_logit", *facts.feature_names(scenario)])
    scores = apply(model, X)          # logits; sigmoid() them for probabilities

Features are standardised with the fit data's mean and std (a constant feature keeps std 1, so it
gets weight 0); the L2 penalty is on the standardised weights, not the bias. The fit is full-batch
L-BFGS in float64 from zeros, so the same data gives the same model.
"""
from __future__ import annotations

import math
import random
from dataclasses import replace

import torch

from .errors import DataError


def fit(X, y, names=None, l2: float = 1e-3, max_iter: int = 200, groups=None) -> dict:
    """Logistic regression of labels y (0/1) on rows X -> {"features", "mean", "std", "weights", "bias", "fit"}.

    groups (one name per row, e.g. the impression): the weights are fit for ranking within each
    group instead (softmax cross-entropy over a group's rows, the positives as targets: a
    conditional logit), then one scale and bias map that score to a calibrated P(yes). The
    ranking metrics (per-impression AUC, NDCG) only see order within a group, and a pointwise fit
    spends its weights on what differs between groups (one user's prompts scoring higher than
    another's)."""
    x = torch.as_tensor(X, dtype=torch.float64)
    t = torch.as_tensor(y, dtype=torch.float64)
    if x.ndim != 2 or len(x) != len(t) or len(x) == 0:
        raise DataError(f"fit needs a (rows, features) matrix and one label per row, got X of shape "
                        f"{tuple(x.shape)} and {len(t)} labels")
    if not 0 < float(t.sum()) < len(t):
        raise DataError(f"fit needs both labels, got {int(t.sum())} positives of {len(t)}; fit on a split "
                        "with positives and negatives (the valid split)")
    names = list(names) if names is not None else [f"x{i}" for i in range(x.shape[1])]
    if len(names) != x.shape[1]:
        raise DataError(f"{len(names)} feature names for {x.shape[1]} features: {names}")
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    z = (x - mean) / std
    if groups is None:
        w, b = _lbfgs(lambda w, b: _bce(z @ w + b, t) + 0.5 * l2 * (w @ w), x.shape[1], max_iter)
        kind = "pointwise"
    else:
        rows = _ranked_groups(groups, t)
        if not rows:
            raise DataError("fit(groups=...) needs a group with both a positive and a negative; "
                            "fit without groups, or on a split with such groups (the valid split)")
        w, _ = _lbfgs(lambda w, b: _listwise(z @ w, t, rows) + 0.5 * l2 * (w @ w), x.shape[1], max_iter)
        s = (z @ w).unsqueeze(1)  # the ranking score; calibrate it: P(yes) = sigmoid(a * s + b)
        a, b = _lbfgs(lambda a, b: _bce(s @ a + b, t), 1, max_iter)
        w = w * a
        kind = "listwise"
    return {"features": names, "mean": mean.tolist(), "std": std.tolist(),
            "weights": w.tolist(), "bias": float(b), "fit": kind}


def _bce(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, t)


def _lbfgs(loss_fn, n: int, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise loss_fn(w, b) over w (n,) and a scalar b, from zeros -> (w, b), detached."""
    w = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(w, b)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _ranked_groups(groups, t: torch.Tensor) -> list[torch.Tensor]:
    """Row indices of each group that has a positive and a negative (the others rank nothing)."""
    if len(groups) != len(t):
        raise DataError(f"{len(groups)} group names for {len(t)} rows")
    index: dict[object, list[int]] = {}
    for i, g in enumerate(groups):
        index.setdefault(g, []).append(i)
    out = [torch.tensor(rows) for rows in index.values()]
    return [r for r in out if 0 < float(t[r].sum()) < len(r)]


def _listwise(scores: torch.Tensor, t: torch.Tensor, rows: list[torch.Tensor]) -> torch.Tensor:
    """Mean over groups of -mean_{positives} log softmax(group scores): the training loss's listwise term."""
    terms = [-(torch.log_softmax(scores[r], 0) * t[r]).sum() / t[r].sum() for r in rows]
    return torch.stack(terms).mean()


def apply(model: dict, X) -> list[float]:
    """Fused logits of rows X (the features in model["features"] order)."""
    x = torch.as_tensor(X, dtype=torch.float64)
    if x.ndim != 2 or x.shape[1] != len(model["weights"]):
        raise DataError(f"the fused model takes {len(model['weights'])} features ({', '.join(model['features'])}), "
                        f"got rows of shape {tuple(x.shape)}")
    z = (x - torch.tensor(model["mean"], dtype=torch.float64)) / torch.tensor(model["std"], dtype=torch.float64)
    return (z @ torch.tensor(model["weights"], dtype=torch.float64) + model["bias"]).tolist()


def sigmoid(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1.0 + math.exp(logit))


def bootstrap_ci(metric_fn, examples, scores, n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of metric_fn(examples, scores), resampling whole groups.

    A group is an example's `group` (an impression or ranking group); pointwise examples (no group)
    are resampled one by one. A group drawn twice gets a distinct name each time, so per-group
    metrics count it twice. Resamples on which the metric is undefined (one class only) are
    skipped. Seeded: the same inputs give the same interval.
    """
    scores = list(scores)
    if len(scores) != len(examples) or not examples:
        raise DataError(f"{len(scores)} scores for {len(examples)} examples")
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.group or f"#{i}", []).append(i)
    keys = list(groups)
    copies: dict[tuple[str, int], list] = {}   # (group, c) -> its examples renamed for their c-th draw

    def copy(key: str, c: int) -> list:
        if (key, c) not in copies:
            copies[key, c] = [replace(examples[i], group=f"{examples[i].group}#{c}") if c and examples[i].group
                              else examples[i] for i in groups[key]]
        return copies[key, c]

    rng = random.Random(f"{seed}:bootstrap")
    values = []
    for _ in range(n):
        drawn: dict[str, int] = {}
        ex_r, s_r = [], []
        for _ in keys:
            key = keys[rng.randrange(len(keys))]
            c = drawn[key] = drawn.get(key, -1) + 1
            ex_r += copy(key, c)
            s_r += [scores[i] for i in groups[key]]
        try:
            values.append(float(metric_fn(ex_r, s_r)))
        except DataError:
            continue
    if not values:
        raise DataError(f"the metric is undefined on all {n} bootstrap resamples")
    values.sort()
    lo = values[int(math.floor((1 - level) / 2 * (len(values) - 1)))]
    hi = values[int(math.ceil((1 + level) / 2 * (len(values) - 1)))]
    return lo, hi
