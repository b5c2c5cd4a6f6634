"""What a card's bootstrap intervals cost: metrics_with_ci on a synthetic pointwise split (users with
a few examples each, several methods' scores), against the way it was computed before (every metric
of every resample, and a loop over the groups for the per-user AUC), alternating, in one run. The
AUC intervals come out the same both ways (checked before timing); the per-user AUC's differ by
design, since a user drawn twice now counts twice.

    python benchmarks/evaluation_speed/bootstrap_ci.py [--examples 300,3000 --methods 4 --rounds 3]   # ~5 min

One line per size goes to bootstrap_ci.jsonl here (seconds per call, old and new, and their ratio).
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from adapterhub import evaluation, metrics, scoring
from adapterhub.bench.common import Recorder
from adapterhub.datasets.common import Example
from adapterhub.errors import DataError
from adapterhub.evaluation import evaluate


def group_auc_loop(labels, scores, groups) -> float:
    """group_auc as it was: one mask and one auc() per group."""
    y, s, g = np.asarray(labels), np.asarray(scores, dtype=float), np.asarray(groups)
    values = [metrics.auc(y[g == n], s[g == n]) for n in dict.fromkeys(g.tolist()) if 0 < y[g == n].sum() < (g == n).sum()]
    if not values:
        raise DataError("no group has both positives and negatives")
    return float(np.mean(values))


def every_metric(task, metric, examples, scores) -> float:
    """The bootstrap's metric as it was: evaluate() computes them all, one is kept."""
    out = evaluate(task, examples, scores)
    if metric not in out:
        raise DataError(f"{metric} is undefined on this resample")
    return out[metric]


@contextmanager
def before():
    """metrics_with_ci as it was computed before: the same function, its two parts swapped back."""
    saved = scoring._one_metric, metrics.group_auc, evaluation.group_auc
    scoring._one_metric, metrics.group_auc, evaluation.group_auc = every_metric, group_auc_loop, group_auc_loop
    try:
        yield
    finally:
        scoring._one_metric, metrics.group_auc, evaluation.group_auc = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", default="300,3000", help="split sizes, comma-separated")
    ap.add_argument("--users", type=int, default=0, help="users (default: one per 8 examples)")
    ap.add_argument("--methods", type=int, default=4, help="methods scored on the split (base, adapter, ...)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of old and new")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = ap.parse_args()
    rec = Recorder("bootstrap_ci", args.out)
    for n in [int(x) for x in args.examples.split(",")]:
        rng = random.Random(n)
        users = args.users or max(2, n // 8)
        ex = [Example(f"u{rng.randrange(users)}", (), f"i{j}", int(rng.random() < 0.3)) for j in range(n)]
        scores = {f"m{k}": [rng.random() for _ in ex] for k in range(args.methods)}
        with before():
            want = scoring.metrics_with_ci("pointwise", ex, scores)
        got = scoring.metrics_with_ci("pointwise", ex, scores)
        # the AUC intervals agree exactly; the per-user AUC's differ by design: a user drawn twice now
        # counts twice in a resample's mean (before, evaluate() merged the two draws into one user)
        assert {m: r["auc_ci95"] for m, r in got.items()} == {m: r["auc_ci95"] for m, r in want.items()}, \
            "the two ways disagree"
        times = {"before": [], "now": []}
        for _ in range(args.rounds):
            for way in ("before", "now"):
                t = time.perf_counter()
                if way == "before":
                    with before():
                        scoring.metrics_with_ci("pointwise", ex, scores)
                else:
                    scoring.metrics_with_ci("pointwise", ex, scores)
                times[way].append(time.perf_counter() - t)
        old, new = statistics.median(times["before"]), statistics.median(times["now"])
        rec.record("metrics_with_ci_s", {"examples": n, "users": users, "methods": args.methods, "rounds": args.rounds},
                   new, unit="s", extra={"before_s": old, "speedup": old / new, "same_auc_intervals": True})
        print(f"{n} examples, {users} users, {args.methods} methods: {old:.2f} s before, {new:.2f} s now ({old / new:.1f}x)")


if __name__ == "__main__":
    main()
