"""What the LoRA work costs our ranking path: one music test user's 20 candidates through
Hub.score_candidates on the bare base and under one random r=8 adapter (q/k/v/o), median of 8,
alternated twice. Needs ../shared/data/music. python benchmarks/results/issue11/lora_cost_probe.py"""
import tempfile
import time
from pathlib import Path

from adapterhub import prompts
from adapterhub.bench.common import publish_random_adapters
from adapterhub.datasets import load
from adapterhub.hub import Hub

data = load("music", Path(__file__).resolve().parents[4] / "shared" / "data" / "music")
ex = data.splits["test"][0]
group = [e for e in data.splits["test"] if (e.group or e.user) == (ex.group or ex.user)][:20]
prefix = prompts.render("music", ex, data.items)[0]
suffixes = [prompts.render("music", c, data.items)[1] for c in group]
hub = Hub(base="smollm2-135m", registry=Path(tempfile.mkdtemp()) / "a", quant="nf4")
key = hub.load(publish_random_adapters(hub, 1)[0]).key


def median_ms(k, n=8):
    hub.score_candidates(k, prefix, suffixes, batch_size=20)  # warm-up
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        hub.score_candidates(k, prefix, suffixes, batch_size=20)
        ts.append(time.perf_counter() - t)
    return sorted(ts)[n // 2] * 1000


for _ in range(2):
    print(f"20 candidates: bare base {median_ms(None):.0f} ms, with the adapter {median_ms(key):.0f} ms")
