"""Light requests beside heavy ones on the bulk lane, with the bulk lane's thread at the OS's idle
priority or at its normal one, with and without busy processes on every core. The second case is the
risk of idle priority: a thread that holds the GIL but gets no core holds up every other thread of
the server.

    OMP_NUM_THREADS=1 python benchmarks/serving_load/bulk_priority.py [--seconds 15 --rounds 2 --hogs 2]

One process, one Batcher (random:small, two random adapters, --bulk-tokens 64): a thread sends a heavy
row (about 1,000 tokens: the bulk lane's) back to back; the main thread sends one light row every
20 ms and times it. Configurations alternate; prints the light p50 / p99 ms and the heavy rows done,
and appends them to results/bulk_priority.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(hub, idle: bool, seconds: float, hogs: list) -> dict:
    from adapterhub.batcher import Batcher
    from measures import pct
    heavy = ("news", " ".join(["red thing blue thing"] * 58))   # ~990 tokens
    light = ("music", "The user liked A B C. Will the user like D? Answer:")
    done, stop, ms, failed = [0], threading.Event(), [], []
    with Batcher(hub, window_ms=0, bulk_tokens=64, bulk_idle=idle) as batcher:
        def heavy_client():
            try:
                while not stop.is_set():
                    batcher.score([heavy])
                    done[0] += 1
            except BaseException as e:  # noqa: BLE001 - raised below, in the main thread
                failed.append(e)
        t = threading.Thread(target=heavy_client, daemon=True)
        t.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            batcher.score([light])
            ms.append(1000 * (time.perf_counter() - t0))
            time.sleep(0.02)
        stop.set()
        for h in hogs:   # before the join: an idle thread beside them may take long to finish its row
            h.kill()
            h.wait()
        t.join(60)
    if failed:
        raise failed[0]
    return {"light_p50_ms": pct(ms, 0.5), "light_p99_ms": pct(ms, 0.99), "light_max_ms": max(ms),
            "light": len(ms), "heavy_done": done[0]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="seconds per configuration")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the four configurations (alternating)")
    ap.add_argument("--hogs", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count() or 2, help="busy processes in the 'busy' runs (default: one per CPU)")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    from adapterhub.hub import Hub
    from adapterhub.registry import Registry
    from measures import served_code
    from run import publish
    code = served_code(Path.cwd())
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(base="random:small", registry=Path(tmp) / "adapters", quant="fp32", device="cpu")
        for i, name in enumerate(("news", "music")):
            publish(Registry(Path(tmp) / "adapters"), hub, name, seed=i + 1, scale=0.1)
            hub.load(name)
        order = [(idle, busy) for busy in (False, True) for idle in (False, True)]
        for r in range(args.rounds):
            for idle, busy in (order if r % 2 == 0 else order[::-1]):
                hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs if busy else 0)]
                try:
                    row = {"run": datetime.now(timezone.utc).isoformat(timespec="seconds"), "code": code,
                           "bulk_priority": "idle" if idle else "normal", "busy_processes": len(hogs), "round": r + 1,
                           **one(hub, idle, args.seconds, hogs)}
                finally:
                    for h in hogs:
                        h.kill()
                        h.wait()
                print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
                Path(args.out).mkdir(parents=True, exist_ok=True)
                with open(Path(args.out) / "bulk_priority.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
