"""Where ranking 20 candidates spends its time, and whether torch.compile helps.

    ADAPTERHUB_DATA=../shared/data python benchmarks/ranking_speed/score_profile.py music plain|compile|profile

Output of the three modes on this 2-core CPU: score_profile.txt."""
import sys, time, tempfile, statistics
from pathlib import Path
import torch
from adapterhub.bench.training import load_data, ranking_case
from adapterhub.bench.common import publish_random_adapters
from adapterhub.hub import Hub

scen = sys.argv[1] if len(sys.argv) > 1 else "music"
mode = sys.argv[2] if len(sys.argv) > 2 else "plain"
prefix, suffixes = ranking_case(load_data(scen))  # the same case as the bench's `score` rows
tmp = tempfile.mkdtemp()
hub = Hub(base="smollm2-135m", registry=Path(tmp) / "a")
name = publish_random_adapters(hub, 1, r=8)[0]
key = hub.load(name).key
print("threads", torch.get_num_threads(), "compute", hub.base.compute)
def run():
    return hub.score_candidates(key, prefix, suffixes, batch_size=20)
with torch.no_grad():
    ref = run()
    if mode == "compile":
        t = time.perf_counter()
        hub.decoder.forward = torch.compile(hub.decoder.forward, dynamic=True)
        out = run(); print("compile+first", time.perf_counter() - t, "max diff", max(abs(a - b) for a, b in zip(out, ref)))
    ts = []
    for _ in range(9):
        t = time.perf_counter(); run(); ts.append(time.perf_counter() - t)
    print(mode, "median s", statistics.median(ts), "cand/s", 20 / statistics.median(ts))
    if mode == "profile":
        from torch.profiler import profile
        with profile() as prof:
            for _ in range(3): run()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
