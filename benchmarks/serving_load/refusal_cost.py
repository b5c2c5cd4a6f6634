"""What refusing an over-limit request costs the server, idle: `adapterhub serve` on random:small
(fp32, one torch thread) at 127.0.0.1, sent the load test's two over-limit requests back to back
(a ranking over --max-request-tokens, and a prompt over the base's positions); p50 latency and the
server's CPU per refusal (from /proc, in 10 ms ticks: 400 refusals give ~0.03 ms).

    OMP_NUM_THREADS=1 python benchmarks/serving_load/refusal_cost.py [--n 400] [--label TEXT]

Each kind's figures go to results/refusal_cost.jsonl here (one line per kind, with the served code).

`python -m adapterhub` runs the package of the working directory, so to compare two trees, run it
from each (cd TREE && PYTHONPATH=. python PATH/TO/refusal_cost.py), alternating.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measures import cpu_s_of, free_port, served_code, wait_ready  # noqa: E402
from run import KEY, NAMES, plan, publish  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="refusals of each kind")
    ap.add_argument("--label", default=None, help="a label for the records (e.g. which tree)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="folder for refusal_cost.jsonl")
    args = ap.parse_args()
    import httpx
    from adapterhub.bench.common import Recorder
    from adapterhub.hub import Hub
    from adapterhub.registry import Registry
    registry = Path(tempfile.mkdtemp()) / "adapters"
    hub = Hub(base="random:small", registry=registry, quant="fp32", device="cpu")
    for i, name in enumerate(NAMES):
        publish(Registry(registry), hub, name, seed=i + 1, scale=0.1)
    p = plan(hub, argparse.Namespace(think_s=[0.5, 1.5], heavy_history=6, max_batch_tokens=1024,
                                     max_request_tokens=16384))
    rec = Recorder("refusal_cost", args.out, base="random:small", device="cpu", quant="fp32")
    code = served_code(Path.cwd())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "adapterhub", "serve", "--registry", str(registry), "--base", "random:small",
         "--quant", "fp32", "--host", "127.0.0.1", "--port", str(port), "--preload", ",".join(NAMES),
         "--api-key", KEY, "--no-access-log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        client = httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        wait_ready(client, url, server, 120)
        kinds = {"ranking over --max-request-tokens": ("/v1/rerank", {"model": "news", "query": p["histories"][0],
                                                                      "documents": p["too_many_documents"]}),
                 "prompt over the base's positions": ("/score", {"model": "news", "prompts": [p["too_long_prompt"]]})}
        for name, (path, body) in kinds.items():
            for _ in range(20):  # warm: the candidates' token ids are kept after the first
                assert client.post(url + path, json=body).status_code == 400
            ms, cpu = [], cpu_s_of(server.pid)
            for _ in range(args.n):
                t = time.perf_counter()
                r = client.post(url + path, json=body)
                ms.append(1000 * (time.perf_counter() - t))
                assert r.status_code == 400, r.text
            cpu_ms = 1000 * (cpu_s_of(server.pid) - cpu) / args.n
            items = len(p["too_many_documents"]) if path == "/v1/rerank" else 1
            print(f"{name}: p50 {statistics.median(ms):.2f} ms, server CPU {cpu_ms:.2f} ms per refusal "
                  f"({items} items)", flush=True)
            rec.record("refusal_p50_ms", {"kind": name, "n": args.n, "items": items}, statistics.median(ms),
                       extra={"server_cpu_ms": cpu_ms, "server_code": code, "label": args.label})
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
