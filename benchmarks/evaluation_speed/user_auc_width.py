"""How much narrower the per-user AUC's bootstrap interval came out when a resample merged a user
drawn twice into one (evaluate()'s per-user AUC over `user`) than now, where each draw counts
(scoring._one_metric over the renamed draws): synthetic pointwise splits of 4,000 examples with a
real signal (score = uniform + 0.3 x label), 84 users (as video's test split), 400 and 1,000.
One line per split goes to user_auc_width.jsonl here.

    python benchmarks/evaluation_speed/user_auc_width.py      # ~3 min
"""
from __future__ import annotations

import random
from pathlib import Path

from bootstrap_ci import before

from adapterhub import scoring
from adapterhub.bench.common import Recorder
from adapterhub.datasets.common import Example


def main() -> None:
    rec = Recorder("user_auc_width", str(Path(__file__).resolve().parent))
    for n, users in ((4000, 84), (4000, 400), (4000, 1000)):
        rng = random.Random(1)
        ex, scores = [], []
        for j in range(n):
            y = int(rng.random() < 0.4)
            ex.append(Example(f"u{rng.randrange(users)}", (), f"i{j}", y))
            scores.append(rng.random() + 0.3 * y)
        now = scoring.metrics_with_ci("pointwise", ex, {"m": scores})["m"]
        with before():
            merged = scoring.metrics_with_ci("pointwise", ex, {"m": scores})["m"]
        width = {k: r["user_auc_ci95"][1] - r["user_auc_ci95"][0] for k, r in (("now", now), ("merged", merged))}
        rec.record("user_auc_ci95_width_ratio", {"examples": n, "users": users}, width["now"] / width["merged"], unit="x",
                   extra={"user_auc": now["user_auc"], "ci95_now": now["user_auc_ci95"], "ci95_merged": merged["user_auc_ci95"]})
        print(f"{n} examples, {users} users: per-user AUC {now['user_auc']:.3f}; interval merged "
              f"{merged['user_auc_ci95']}, now {now['user_auc_ci95']}: {width['now'] / width['merged']:.2f}x as wide")


if __name__ == "__main__":
    main()
