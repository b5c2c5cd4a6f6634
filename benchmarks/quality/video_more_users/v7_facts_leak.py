# how much do video@v7's like-rates (computed with the new valid/test users' ratings in) flatter the rule?
import json
from adapterhub.datasets import load
from adapterhub.metrics import auc
import sys
from pathlib import Path
DATA = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/video"   # run from the repo root
v7 = json.load(open("adapters/video/v7/facts.json"))
d = load("video", DATA, options={"more_users": True})
g7, g8 = v7["global_like_rate"], d.extra["global_like_rate"]
for split in ("valid", "test"):
    ex = d.splits[split]
    y = [e.label for e in ex]
    share = [len(e.history) / max(1, len(e.history) + len(e.disliked)) for e in ex]
    r7 = [v7["items"].get(e.candidate, {}).get("r", g7) for e in ex]
    r8 = [d.extra["like_rate"].get(e.candidate, g8) for e in ex]
    print(split, len(ex), "rule v7-facts %.4f  v8-facts %.4f | like-rate v7 %.4f v8 %.4f" % (
        auc(y, [a + b for a, b in zip(share, r7)]), auc(y, [a + b for a, b in zip(share, r8)]), auc(y, r7), auc(y, r8)))
