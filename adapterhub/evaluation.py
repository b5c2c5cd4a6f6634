"""Examples + scores -> a metrics dict (pure: no model code), and a Markdown table of them."""
from __future__ import annotations

from .datasets.common import Example
from .errors import DataError
from .metrics import (auc, group_auc, hr_at_k, logloss, mrr, mrr_multi, ndcg_at_k,
                      ndcg_at_k_multi, rank_of_positive)


def _groups(examples, scores) -> dict[str, list[tuple[int, float]]]:
    groups: dict[str, list[tuple[int, float]]] = {}
    for ex, s in zip(examples, scores):
        groups.setdefault(ex.group or ex.user, []).append((ex.label, float(s)))
    return groups


def evaluate(task: str, examples: list[Example], scores, ks=(1, 5, 10)) -> dict[str, float]:
    """Metrics for one split.

    pointwise:  auc (pooled), user_auc (the mean over users of the AUC within each user; users
                with one class only are skipped), logloss, n. logloss only when every score is in
                [0, 1] (a probability); heuristic scores outside that range are not squashed,
                logloss is just omitted.
    ranking:    hr@k, ndcg@k, mrr (each positive ranked against its group's negatives), auc pooled
                over all examples, n_groups, n_candidates (mean group size). Groups are
                `example.group` (or the user when empty); groups without a positive are skipped.
    impression: auc (mean per impression, single-class ones skipped), mrr, ndcg@5, ndcg@10
                (MIND definitions, several clicks allowed), n_groups.
    """
    scores = [float(s) for s in scores]
    if len(scores) != len(examples):
        raise DataError(f"{len(scores)} scores for {len(examples)} examples")
    labels = [ex.label for ex in examples]
    if task == "pointwise":
        out = {"auc": auc(labels, scores)}
        users = [ex.user for ex in examples]
        counts: dict[str, list[int]] = {}   # user -> [positives, examples]
        for y, u in zip(labels, users):
            c = counts.setdefault(u, [0, 0])
            c[0] += y
            c[1] += 1
        if any(0 < pos < n for pos, n in counts.values()):
            out["user_auc"] = group_auc(labels, scores, users)
        if all(0.0 <= s <= 1.0 for s in scores):
            out["logloss"] = logloss(labels, scores)
        out["n"] = len(examples)
        return out
    groups = _groups(examples, scores)
    if task == "ranking":
        ranks, sizes = [], []
        for members in groups.values():
            negs = [s for y, s in members if y == 0]
            pos = [s for y, s in members if y == 1]
            if pos:
                sizes.append(len(members))
                ranks += [rank_of_positive(p, negs) for p in pos]
        if not ranks:
            raise DataError(f"none of the {len(groups)} ranking groups has a positive example (label 1)", field="label")
        out = {}
        for k in ks:
            out[f"hr@{k}"] = sum(hr_at_k(r, k) for r in ranks) / len(ranks)
            out[f"ndcg@{k}"] = sum(ndcg_at_k(r, k) for r in ranks) / len(ranks)
        out["mrr"] = mrr(ranks)
        out["auc"] = auc(labels, scores)
        out["n_groups"] = len(sizes)
        out["n_candidates"] = sum(sizes) / len(sizes)
        return out
    if task == "impression":
        kept = [m for m in groups.values() if any(y for y, _ in m)]
        if not kept:
            raise DataError(f"none of the {len(groups)} impressions has a clicked candidate (label 1)", field="label")
        mean = lambda f: sum(f([y for y, _ in m], [s for _, s in m]) for m in kept) / len(kept)  # noqa: E731
        return {"auc": group_auc(labels, scores, [ex.group or ex.user for ex in examples]),
                "mrr": mean(mrr_multi),
                "ndcg@5": mean(lambda y, s: ndcg_at_k_multi(y, s, 5)),
                "ndcg@10": mean(lambda y, s: ndcg_at_k_multi(y, s, 10)),
                "n_groups": len(kept)}
    raise DataError(f"unknown task {task!r} (valid: pointwise, ranking, impression)", field="task")


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per method, the union of metric names as columns."""
    columns = list(dict.fromkeys(key for metrics in rows.values() for key in metrics))

    def cell(v) -> str:
        if v is None:
            return ""
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(metrics.get(c)) for c in columns) + " |")
    return "\n".join(lines)
