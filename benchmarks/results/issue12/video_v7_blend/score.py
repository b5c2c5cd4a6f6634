"""Score video@v7 (raw P(yes)) on the card's valid (1000) and test (536) examples; save per-example rows."""
import json, sys

from adapterhub import datasets, facts as facts_mod, baselines
from adapterhub.hub import Hub
from adapterhub.scoring import cap_examples, encode_examples, score_examples
hub = Hub(base="smollm2-135m", registry="adapters")
ad = hub.load("video@v7")
card = ad.card
data = datasets.load("video", (sys.argv[1] if len(sys.argv) > 1 else "../shared/data/video"), options=card["data"]["load"]["options"])
fx = facts_mod.load("adapters/video/v7/facts.json")
out = {}
for split, n in (("valid", 1000), ("test", None)):
    ex = cap_examples(data.splits[split], n, 0)
    enc = encode_examples(hub, data, ex, fx)
    p = score_examples(hub, ad.key, enc, progress=False)
    rows = []
    for e, pi in zip(ex, p):
        pc = facts_mod._pieces(fx, e.history, e.disliked, e.candidate)
        rows.append({"user": e.user, "label": int(e.label), "p": pi, **pc})
    out[split] = rows
    print(split, len(rows), flush=True)
json.dump(out, open("/tmp/video_v7_rows.json", "w"))
