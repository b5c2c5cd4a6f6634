import json, math, sys, random

from adapterhub import fused
from adapterhub.metrics import auc as _auc
rows = json.load(open("/tmp/video_v7_rows.json"))
def auc(y, s):
    return _auc(y, s)
def feats(r):
    p = min(max(r["p"], 1e-7), 1 - 1e-7)
    return {"llm": math.log(p / (1 - p)), "like_share": r["like_share"], "like_rate": r["like_rate"],
            "lpop": math.log1p(r["popularity"]), "lsr": r["like_share"] + r["like_rate"]}
sets = [("lsr",), ("llm", "lpop", "lsr"), ("llm", "lsr"), ("llm", "like_share", "like_rate"),
        ("llm", "like_share", "like_rate", "lpop"), ("like_share", "like_rate"), ("like_share", "like_rate", "lpop")]
V, T = rows["valid"], rows["test"]
users = sorted({r["user"] for r in V}); random.Random(0).shuffle(users)
folds = [set(users[i::5]) for i in range(5)]
yv, yt = [r["label"] for r in V], [r["label"] for r in T]
print("valid n", len(V), "users", len(users), "test n", len(T), "users", len({r['user'] for r in T}))
print("raw llm: valid %.4f test %.4f" % (auc(yv, [feats(r)["llm"] for r in V]), auc(yt, [feats(r)["llm"] for r in T])))
for s in sets:
    X = lambda R: [[feats(r)[k] for k in s] for r in R]
    # CV on valid by users
    cv = [0.0] * len(V)
    for f in folds:
        tr = [i for i, r in enumerate(V) if r["user"] not in f]; te = [i for i, r in enumerate(V) if r["user"] in f]
        m = fused.fit([X(V)[i] for i in tr], [yv[i] for i in tr], names=list(s))
        for i, z in zip(te, fused.apply(m, [X(V)[i] for i in te])):
            cv[i] = z
    m = fused.fit(X(V), yv, names=list(s))
    print("%-40s valid-CV %.4f  valid(in-sample) %.4f  test %.4f  w %s" % (
        "+".join(s), auc(yv, cv), auc(yv, fused.apply(m, X(V))), auc(yt, fused.apply(m, X(T))),
        [round(w, 2) for w in m["weights"]]))
