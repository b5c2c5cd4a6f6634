import json, math, sys, collections

from adapterhub.metrics import auc
rows = json.load(open("/tmp/video_v7_rows.json"))
for split in ("valid", "test"):
    by = collections.defaultdict(list)
    for r in rows[split]: by[r["user"]].append(r)
    res = collections.defaultdict(list)
    for u, R in by.items():
        y = [r["label"] for r in R]
        if 0 < sum(y) < len(y):
            res["llm"].append((auc(y, [r["p"] for r in R]), len(R)))
            res["like_rate"].append((auc(y, [r["like_rate"] for r in R]), len(R)))
            res["pop"].append((auc(y, [r["popularity"] for r in R]), len(R)))
    for k, v in res.items():
        print(split, k, "mean within-user AUC %.4f (weighted %.4f) over %d users" % (sum(a for a, _ in v) / len(v), sum(a * n for a, n in v) / sum(n for _, n in v), len(v)))
