"""Measures for the load test (run.py): a free loopback port, a process's RSS and CPU time, a
percentile, and what queueing alone would cost (fifo_estimate)."""
from __future__ import annotations

import os
import socket
import statistics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_s_of(pid: int) -> float | None:
    """CPU seconds the process has used (user + system, all its threads); None without /proc."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * q))]


def fifo_estimate(samples: dict, per_s: float, busy_share: float = 1.0, n: int = 20000, seed: int = 0) -> float:
    """The p99 latency, over the median single call, of a server that runs one request at a time in
    arrival order with no other cost: Poisson arrivals at `per_s`; each request takes a single call's
    time (drawn from the single calls, /score and /v1/rerank 3:1, as the light users send them), of
    which `busy_share` holds the server (its CPU time; the rest is the client and the network, which
    overlap other requests). What queueing alone would cost the light users, with no heavy client:
    an open-loop estimate (locust's users think between requests, so they arrive less bunched than
    Poisson), not a bound."""
    import random
    rng = random.Random(seed)
    calls = samples["score"] * 3 + samples["rerank"]
    t = free = 0.0
    latencies = []
    for _ in range(n):
        t += rng.expovariate(per_s)
        call = rng.choice(calls) / 1000
        start = max(t, free)
        free = start + busy_share * call
        latencies.append(1000 * (start - t + call))
    return pct(latencies, 0.99) / statistics.median(calls)
