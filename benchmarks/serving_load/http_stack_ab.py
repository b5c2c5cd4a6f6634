"""uvicorn's pure-Python stack (h11 parser, asyncio loop) against its C one (httptools, uvloop: what
`serve` takes when they are installed, as the 'serve' extra does), on the idle server: the latency and
the server's CPU per light single call, and per over-limit refusal. Alternating turns, a fresh server
each. README.md here, "uvicorn's C parser and event loop".

    flock /tmp/adapterhub-heavy.lock python benchmarks/serving_load/http_stack_ab.py     # random:small, ~2 min
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

STACKS = {"python (h11, asyncio)": ["--http", "h11", "--loop", "asyncio"], "C (httptools, uvloop)": []}


def started(registry: Path, port: int, extra: list[str], log: Path) -> subprocess.Popen:
    from run import KEY, NAMES
    return subprocess.Popen(
        [sys.executable, "-m", "adapterhub", "serve", "--registry", str(registry), "--base", "random:small",
         "--quant", "fp32", "--host", "127.0.0.1", "--port", str(port), "--preload", ",".join(NAMES),
         "--api-key", KEY, "--no-access-log", "--max-request-tokens", "16384", "--max-batch-tokens", "1024", *extra],
        stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=dict(os.environ, OMP_NUM_THREADS="1"))


def one_turn(client, url: str, server: subprocess.Popen, p: dict, n: int) -> dict:
    from measures import cpu_s_of, wait_ready
    from run import REFS, single_calls
    wait_ready(client, url, server, 120)
    for ref in REFS:  # warm-up
        client.post(url + "/score", json={"model": ref, "prompts": p["prompts"][:2]})
        client.post(url + "/v1/rerank", json={"model": ref, "query": p["histories"][0], "documents": p["documents"]})
    light = single_calls(client, url, p, n, pid=server.pid)
    over, cpu = [], cpu_s_of(server.pid)
    for _ in range(n // 2):
        for path, body in (("/score", {"model": "news", "prompts": [p["too_long_prompt"]]}),
                           ("/v1/rerank", {"model": "news", "query": p["histories"][0],
                                           "documents": p["too_many_documents"]})):
            t = time.perf_counter()
            r = client.post(url + path, json=body)
            over.append(1000 * (time.perf_counter() - t))
            assert r.status_code == 400, r.text
    return {"score_ms": light["score_ms"], "rerank_ms": light["rerank_ms"], "cpu_ms": light["server_cpu_ms"],
            "refusal_ms": statistics.median(over),
            "refusal_cpu_ms": 1000 * (cpu_s_of(server.pid) - cpu) / len(over) if cpu is not None else None}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=3, help="turns of each stack, alternating")
    ap.add_argument("--singles", type=int, default=30, help="single calls of each kind per turn")
    args = ap.parse_args(argv)
    import httpx
    from adapterhub.hub import Hub
    from adapterhub.registry import Registry
    from measures import free_port
    from run import KEY, NAMES, plan, publish
    tmp = Path(tempfile.mkdtemp())
    registry = tmp / "adapters"
    hub = Hub(base="random:small", registry=registry, quant="fp32")
    reg = Registry(registry)
    for i, name in enumerate(NAMES):
        publish(reg, hub, name, seed=i + 1, scale=0.1)
    p = plan(hub, argparse.Namespace(max_batch_tokens=1024, max_request_tokens=16384, heavy_history=6,
                               think_s=[0.5, 1.5]))
    results: dict = {name: [] for name in STACKS}
    for turn in range(args.turns):
        for name, extra in STACKS.items():
            port = free_port()
            server = started(registry, port, extra, tmp / "server.log")
            try:
                with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
                    results[name].append(one_turn(client, f"http://127.0.0.1:{port}", server, p, args.singles))
            finally:
                server.terminate()
                server.wait(30)
            print(turn, name, {k: round(v, 2) for k, v in results[name][-1].items() if v is not None}, flush=True)
    print("\nmeans over turns (ms): single /score, single /v1/rerank, server CPU per light call, refusal, its CPU")
    for name, turns in results.items():
        keys = ("score_ms", "rerank_ms", "cpu_ms", "refusal_ms", "refusal_cpu_ms")
        print(f"{name:24s}", "  ".join(f"{statistics.mean(t[k] for t in turns):6.2f}" for k in keys
                                      if all(t[k] is not None for t in turns)))


if __name__ == "__main__":
    main()
