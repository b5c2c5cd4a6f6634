"""In-process A/B of a ranking forward change, the two variants
alternated in one process (separate processes drift 10-20% on this machine). One user's 20 candidates
(the training benchmark's ranking case) under one random r=8 adapter, bf16 compute; median of ROUNDS rounds,
each the median of 3 rankings.
  attention   packing.packed_self_attention (new) vs transformers' attention forward + packed_attention (old)
  last-layer  the last layer's MLP on read tokens only (new) vs on every token (old, last_hidden(prune=False))

    ADAPTERHUB_DATA=../shared/data python benchmarks/ranking_speed/inprocess_ab.py attention music 7

Measured (inprocess_ab.txt): attention 1.089x / 1.053x / 1.083x on music, 1.030x on news (max |dP| 0.012 / 0.019:
bf16 rounding; in fp32 1.4e-6); last-layer 1.033x / 1.011x / 1.018x on music, 0.987x on news (max |dP| 8e-6 / 0):
a 1-3% saving is about this A/B's noise."""
import sys
import tempfile
import time
from pathlib import Path

import torch

from adapterhub import packing
from adapterhub.bench.common import publish_random_adapters
from adapterhub.bench.training import load_data, ranking_case
from adapterhub.hub import Hub

what, scen = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
prefix, suffixes = ranking_case(load_data(scen))
hub = Hub(base="smollm2-135m", registry=Path(tempfile.mkdtemp()) / "a", quant="nf4", device="cpu")
key = hub.load(publish_random_adapters(hub, 1, r=8)[0]).key
attns = [layer.self_attn for layer in hub.decoder.layers]
new_forwards = [a.forward for a in attns]
last_hidden = packing.last_hidden


def use(new: bool) -> None:
    if what == "attention":
        for a, f in zip(attns, new_forwards):
            if new:
                a.forward = f
            elif "forward" in a.__dict__:
                del a.forward  # transformers' own forward again
    else:
        packing.last_hidden = last_hidden if new else (lambda d, p, prune=True: last_hidden(d, p, prune=False))


def rank():
    return hub.score_candidates(key, prefix, suffixes, batch_size=20)


def median_s(n: int = 3) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        rank()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[n // 2]


times = {False: [], True: []}
with torch.inference_mode():
    use(False); a = rank(); use(True); b = rank()
    print("max |dP|", max(abs(x - y) for x, y in zip(a, b)))
    for _ in range(rounds):
        for new in (False, True):
            use(new)
            times[new].append(median_s())
use(True)
old, new = sorted(times[False])[rounds // 2], sorted(times[True])[rounds // 2]
print(f"{what} {scen}: old {old * 1e3:.1f} ms, new {new * 1e3:.1f} ms: {old / new:.3f}x")
