"""Does video have a signal its rule (like-share+rate) lacks? Two candidate features, no LLM:

  genre_taste  liked / rated history movies that share a genre with the candidate, shrunk to the
               user's like-share with 2 pseudo-counts
  item_cf      the candidate's like-rate among u.data users (valid and test users left out) who liked
               the user's liked history movies, shrunk to its like-rate with 5 pseudo-counts

Each alone and blended with the fused score's features (fused.fit on valid), AUC on valid and test.

    python benchmarks/quality/video_rule_features.py [DATA_DIR]    # default ../shared/data/video
"""
import bisect
import collections
import sys
from pathlib import Path

from adapterhub import baselines, datasets, facts, fused


def auc(labels, scores) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = sorted(s for s, y in zip(scores, labels) if not y)
    hits = sum(bisect.bisect_left(neg, p) + 0.5 * (bisect.bisect_right(neg, p) - bisect.bisect_left(neg, p))
               for p in pos)
    return hits / (len(pos) * len(neg))


def main(path: str) -> None:
    data = datasets.load("video", path, options={"valid_from_train": 0.15})  # the shipped versions' split
    fx = facts.compute(data)
    genres = {i: set(filter(None, item.category.split("|"))) for i, item in data.items.items()}
    judged = {e.user for s in ("valid", "test") for e in data.splits[s]}
    rated = collections.defaultdict(dict)
    for line in open(Path(path) / "movielens-100k" / "u.data"):
        user, item, rating, _ = line.split("\t")
        if user not in judged:
            rated[user][item] = int(rating) > 3
    seen, liked = collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    for ratings in rated.values():
        for h in (i for i, like in ratings.items() if like):
            seen[h].update(ratings)
            liked[h].update(i for i, like in ratings.items() if like)
    rates, overall = data.extra["like_rate"], data.extra["global_like_rate"]

    def row(ex):
        share = baselines.like_share(len(ex.history), len(ex.disliked))
        g = genres[ex.candidate]
        up = sum(1 for h in ex.history if genres[h] & g)
        down = sum(1 for h in ex.disliked if genres[h] & g)
        rate = rates.get(ex.candidate, overall)
        n = sum(seen[h][ex.candidate] for h in ex.history)
        k = sum(liked[h][ex.candidate] for h in ex.history)
        return facts.features(fx, "video", ex.history, ex.disliked, ex.candidate) + \
            [(up + 2 * share) / (up + down + 2), (k + 5 * rate) / (n + 5)]

    names = ["log1p_popularity", "like_share_plus_rate", "genre_taste", "item_cf"]
    split = {s: ([row(e) for e in data.splits[s]], [e.label for e in data.splits[s]]) for s in ("valid", "test")}
    for s in ("valid", "test"):
        print(f"{s}: {len(split[s][1])} rows, {len({e.user for e in data.splits[s]})} users")
    for j, name in enumerate(names):
        print(f"{name:>22} alone: valid {auc(split['valid'][1], [r[j] for r in split['valid'][0]]):.3f}  "
              f"test {auc(split['test'][1], [r[j] for r in split['test'][0]]):.3f}")
    for cols in ([0, 1], [0, 1, 2], [0, 1, 3], [0, 1, 2, 3]):
        pick = {s: [[r[c] for c in cols] for r in split[s][0]] for s in split}
        model = fused.fit(pick["valid"], split["valid"][1])
        got = {s: auc(split[s][1], fused.apply(model, pick[s])) for s in split}
        print(f"blend of {' + '.join(names[c] for c in cols)} (fit on valid): valid {got['valid']:.3f}  "
              f"test {got['test']:.3f}  weights {[round(w, 2) for w in model['weights']]}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[3] / "shared" / "data" / "video"))
