# video train rows: the candidate's like-rate counts the row's own rating. How much does that flatter it?
from collections import Counter
from adapterhub.datasets import load
from adapterhub.datasets.movielens import read_ratings
from adapterhub.metrics import auc
import sys
from pathlib import Path
DATA = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/video"   # run from the repo root
d = load("video", DATA, options={"more_users": True})
ratings = read_ratings(Path(DATA) / "movielens-100k" / "u.data")
train_users = {e.user for e in d.splits["train"]}
n, liked = Counter(), Counter()
for u in train_users:
    for _, _, m, r in ratings[u]:
        n[m] += 1; liked[m] += r > 3
g = d.extra["global_like_rate"]
rows = d.splits["train"]
y = [e.label for e in rows]
with_own = [d.extra["like_rate"].get(e.candidate, g) for e in rows]
without = [(liked[e.candidate] - e.label) / (n[e.candidate] - 1) if n[e.candidate] > 1 else g for e in rows]
few = sum(n[e.candidate] < 20 for e in rows)
print(len(rows), "train rows; like-rate AUC with own rating %.4f, without %.4f; rows whose movie has <20 train ratings: %d" % (auc(y, with_own), auc(y, without), few))
