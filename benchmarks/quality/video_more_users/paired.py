"""A video version (default: the registry's current one; paired.txt has video@v8's run) on its
card's test rows: the raw and fused AUC minus the rule's (like-share+rate), with a PAIRED bootstrap
95% interval (the same resample for both scores), over rows and over whole users (a user's rows are
not independent, so that interval is the honest one). The card's
intervals are per score and overlap; this says whether the difference itself is distinguishable from 0.

    python benchmarks/quality/video_more_users/paired.py [DATA_DIR] [REF]   # ~8 min; from the repo root
    ... --cached   # the bootstrap again from the scores the last run kept in /tmp (data-derived: not committed)
"""
import json
import random
import sys

from adapterhub import baselines, datasets
from adapterhub.hub import Hub
from adapterhub.metrics import auc
from adapterhub.recommend import facts_of
from adapterhub.scoring import cap_examples, encode_examples, fused_scores, score_examples

CACHED = "--cached" in sys.argv
args = [a for a in sys.argv[1:] if a != "--cached"]
DATA = args[0] if args else None
REF = args[1] if len(args) > 1 else "video"
KEPT = f"/tmp/{REF.replace('@', '_')}_test_scores.json"   # data-derived: not committed
hub = Hub(base="smollm2-135m", registry="adapters")
card = hub.registry.card(REF)
load = card["data"]["load"]
data = datasets.load("video", DATA, seed=load["seed"], options=load["options"])
assert data.sha256 == card["data"]["sha256"], "not the data this adapter was trained on"
test = cap_examples(data.splits["test"], card["data"]["used"]["test"], card["train"]["seed"])
if CACHED:
    scores = json.load(open(KEPT))
else:
    ad = hub.load(REF)
    facts = facts_of(hub.registry, ad.key)
    probs = score_examples(hub, ad.key, encode_examples(hub, data, test, facts))
    scores = {"raw": probs, "fused": fused_scores(card["fused"], facts, "video", test, probs),
              "rule": baselines.like_share_plus_rate(data, test), "most-popular": baselines.most_popular(data, test)}
    json.dump(scores, open(KEPT, "w"))
y = [ex.label for ex in test]
users = [ex.user for ex in test]


def paired(idx_draws):
    """point difference and 95% interval of AUC(k) - AUC(rule) over the resampled row lists."""
    diffs = {k: [] for k in ("raw", "fused", "most-popular")}
    for idx in idx_draws:
        yy = [y[i] for i in idx]
        if len(set(yy)) < 2:
            continue
        rule = auc(yy, [scores["rule"][i] for i in idx])
        for k in diffs:
            diffs[k].append(auc(yy, [scores[k][i] for i in idx]) - rule)
    out = {}
    for k, d in diffs.items():
        d.sort()
        out[f"{k} - rule"] = {"diff": round(point[k] - point["rule"], 4),
                              "ci95": [round(d[int(0.025 * len(d))], 4), round(d[int(0.975 * len(d)) - 1], 4)],
                              "share_of_resamples_above_0": round(sum(x > 0 for x in d) / len(d), 3)}
    return out


point = {k: auc(y, s) for k, s in scores.items()}
rng = random.Random(0)
rows_draws = [[rng.randrange(len(y)) for _ in y] for _ in range(1000)]
# rows of one user are not independent: resampling whole users gives the honest (wider) interval
by_user: dict = {}
for i, u in enumerate(users):
    by_user.setdefault(u, []).append(i)
names = sorted(by_user)
user_draws = [[i for _ in names for i in by_user[names[rng.randrange(len(names))]]] for _ in range(1000)]
out = {"ref": REF, "n": len(test), "users": len(names), "auc": {k: round(v, 4) for k, v in point.items()},
       "paired bootstrap over rows": paired(rows_draws), "paired bootstrap over users": paired(user_draws)}
# TALLRec's own test half (the 536-row test split before more_users) inside these 4,000 rows
tallrec_test = {ex.user for ex in datasets.load("video", DATA, seed=load["seed"]).splits["test"]}
old = [i for i, u in enumerate(users) if u in tallrec_test]
out["TALLRec's test users only"] = {"n": len(old), **{k: round(auc([y[i] for i in old], [s[i] for i in old]), 4)
                                                      for k, s in scores.items()}}
print(json.dumps(out, indent=1))
