"""Measures for the load test (run.py): single calls on the idle server (the baseline), a free
loopback port, a process's RSS and CPU time, a percentile, what queueing alone would cost
(fifo_estimate), how long the server waited for a core (RunQueueWait), which light requests
overlapped heavy or over-limit ones, how much of a request's time the server itself counted (its
Server-Timing header: server_side), and which code the server ran (served_code)."""
from __future__ import annotations

import bisect
import contextlib
import hashlib
import math
import os
import re
import socket
import statistics
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_split(spec: str) -> tuple[set | None, set | None]:
    """(the server's CPUs, the client's) for run.py --server-cpus. 'all': both share every CPU this
    process may use (None, None); 'auto': on two or more, the client (locust, the driver) gets the
    first and the server the rest, as a client on another machine would leave them; else a list
    such as '1' or '1,2' for the server, the client on the others. ValueError for a split that leaves
    either side none, or where the OS sets no affinity (not Linux: 'all' and 'auto' share them)."""
    if spec == "all" or (spec == "auto" and not hasattr(os, "sched_getaffinity")):
        return None, None
    if not hasattr(os, "sched_getaffinity"):
        raise ValueError(f"--server-cpus {spec}: this OS sets no CPU affinity; use 'all'")
    cpus = sorted(os.sched_getaffinity(0))
    if spec == "auto" and len(cpus) < 2:
        return None, None
    try:
        server = set(cpus[1:]) if spec == "auto" else {int(c) for c in spec.split(",")}
    except ValueError:
        raise ValueError(f"--server-cpus {spec}: give 'auto', 'all' or CPU numbers with commas, e.g. '1,2'") from None
    client = set(cpus) - server
    if not server or not server <= set(cpus) or not client:
        raise ValueError(f"--server-cpus {spec}: the server and the client each need CPUs of their own, out of {cpus}")
    return server, client


def pin(pid: int, cpus: set) -> None:
    """Every thread of process `pid` onto `cpus` (Linux keeps an affinity per thread; threads started
    later take their creator's)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, FileNotFoundError):   # a thread that has just ended
            pass


def last_option(argv: list[str], name: str) -> str | None:
    """The value the last `name VALUE` or `name=VALUE` in argv gives (argparse's rule), or None."""
    value = None
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


@contextlib.contextmanager
def pinned(cpus: set | None):
    """This process's threads on `cpus` while inside (None: left as they are), torch's threads no more
    than the CPUs (more would spin on a shared core: the driver's checks on SmolLM2 then took over
    20 minutes), and both back as they were after: run.main may run in a process of the caller's."""
    if not cpus:
        yield
        return
    import torch
    before, threads = os.sched_getaffinity(0), torch.get_num_threads()
    pin(os.getpid(), cpus)
    torch.set_num_threads(min(threads, len(cpus)))
    try:
        yield
    finally:
        pin(os.getpid(), before)
        torch.set_num_threads(threads)


def wait_ready(client, url: str, server, timeout_s: float, log: Path | None = None) -> None:
    """Poll the server's /ready until it says 200; RuntimeError (with the end of its log) if it exits or
    is not ready within timeout_s."""
    end = time.monotonic() + timeout_s
    while True:
        try:
            if client.get(url + "/ready").status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        if server.poll() is not None or time.monotonic() > end:
            raise RuntimeError("the server did not become ready" + (":\n" + log.read_text()[-3000:] if log else ""))
        time.sleep(0.2)


def single_calls(client, url: str, p: dict, n: int, pause_s: float = 0.0, pid: int | None = None) -> dict:
    """Latency of light calls one at a time on the idle server (the baseline), and of the heavy one.
    `/score` is timed as the light users send it (1-3 rows over the adapters, locustfile.py), and
    with one row (`score_one_row_ms`, the baseline before 2026-12-06 night)."""
    import random
    rng = random.Random(1)
    out, server = {"score": [], "score_one_row": [], "rerank": []}, {"score": [], "rerank": []}
    cpu = cpu_s_of(pid) if pid else None
    for i in range(n):
        for kind in ("score", "score_one_row", "rerank"):
            rows = ([(p["refs"][i % 4], i % len(p["prompts"]))] if kind == "score_one_row" else
                    [(rng.choice(p["refs"]), rng.randrange(len(p["prompts"]))) for _ in range(rng.randint(1, 3))])
            body = ({"rows": [{"model": ref, "prompt": p["prompts"][j]} for ref, j in rows]} if kind != "rerank"
                    else {"model": p["refs"][i % 4], "query": p["histories"][i % 2], "documents": p["documents"]})
            time.sleep(pause_s)
            t = time.perf_counter()
            r = client.post(url + ("/v1/rerank" if kind == "rerank" else "/score"), json=body)
            out[kind].append(1000 * (time.perf_counter() - t))
            assert r.status_code == 200, r.text
            ms = server_ms(r.headers.get("server-timing")) if kind in server else None
            if ms is not None:
                server[kind].append(ms)
    # the server's CPU per call (pid given; with no pause, so no idle time is counted), before the heavy call
    cpu_ms = 1000 * (cpu_s_of(pid) - cpu) / (3 * n) if cpu is not None else None
    t = time.perf_counter()
    r = client.post(url + "/v1/rerank", json={"model": "video", "query": p["heavy_history"],
                                              "documents": p["heavy_documents"], "top_n": 10})
    assert r.status_code == 200, r.text
    return {"score_ms": statistics.median(out["score"]), "rerank_ms": statistics.median(out["rerank"]),
            "score_one_row_ms": statistics.median(out["score_one_row"]), "samples": out,
            "server_cpu_ms": cpu_ms, "mean_ms": statistics.mean(sum(out.values(), [])),
            "server_ms": {f"{k}_ms": statistics.median(v) for k, v in server.items() if v},  # its Server-Timing
            "heavy_alone_ms": 1000 * (time.perf_counter() - t)}


def rss_of(pid: int, children: bool = False) -> int:
    """Resident bytes of the process (children=True: and of its live children)."""
    if children:
        return rss_of(pid) + sum(rss_of(c) for c in children_of(pid))
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the server's forward processes); [] without /proc."""
    out = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def cpu_s_of(pid: int, children: bool = True) -> float | None:
    """CPU seconds the process has used (user + system, all its threads), and its live children's
    (the server's forward processes); None without /proc."""
    total = 0.0
    for p in [pid] + (children_of(pid) if children else []):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            if p == pid:
                return None
    return total


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


class RunQueueWait:
    """Samples, every `every_s`, how long the server's threads and its children have waited for a core
    (/proc/<pid>/task/<tid>/schedstat: the time runnable but not running) and how long they ran, to
    tell whether a slow request waited for the CPU. The series: 'loop' (the server's main thread, which
    runs the event loop), 'threads' (its other threads), one per child process (its threads summed),
    and any other process added with watch() (locust)."""

    def __init__(self, pid: int, every_s: float = 0.01):
        import threading
        self.pid, self.every_s, self.samples = pid, every_s, []   # (time.time(), {series: (wait s, run s)})
        self.others = {c: name_of(c) for c in children_of(pid)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, pid: int, name: str) -> None:
        self.others[pid] = name

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            series = {"loop": _stat_s(self.pid, self.pid), "threads": (0.0, 0.0)}
            for tid in _tasks(self.pid):
                if tid != self.pid:
                    series["threads"] = _add(series["threads"], _stat_s(self.pid, tid))
            for pid, name in list(self.others.items()):
                total = (0.0, 0.0)
                for tid in _tasks(pid):
                    total = _add(total, _stat_s(pid, tid))
                series[name] = total
            self.samples.append((time.time(), series))

    def during(self, t0: float, t1: float, field: int = 0) -> dict:
        """Each series' wait (field 0) or run time (1), ms, between the samples around [t0, t1]."""
        times = [t for t, _ in self.samples]
        i = max(0, bisect.bisect_left(times, t0) - 1)
        j = min(len(times) - 1, bisect.bisect_left(times, t1))
        if j <= i:
            return {}
        a, b = self.samples[i][1], self.samples[j][1]
        return {k: 1000 * (b[k][field] - a.get(k, (0.0, 0.0))[field]) for k in b}

    def summary(self, slowest: list[dict], judged: list[dict]) -> dict:
        """Mean wait (ms) of each series during the slowest requests and during all judged ones, and each
        series' share of a core over the whole sampling (run time / wall time)."""
        def mean(reqs):
            seen = [s for s in (self.during(a["t0"], a["t1"]) for a in reqs) if s]
            keys = set().union(*seen) if seen else set()
            return {k: round(sum(s.get(k, 0.0) for s in seen) / len(seen), 2) for k in sorted(keys)}
        share = {}
        if len(self.samples) > 1:
            (t0, _), (t1, _) = self.samples[0], self.samples[-1]
            share = {k: round(v / 1000 / (t1 - t0), 3) for k, v in self.during(t0, t1, field=1).items()}
        return {"slowest_1pct": mean(slowest), "all": mean(judged), "core_share": share}


def _add(a: tuple, b: tuple) -> tuple:
    return a[0] + b[0], a[1] + b[1]


def _tasks(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _stat_s(pid: int, tid: int) -> tuple[float, float]:
    """(seconds waiting for a core, seconds running) of one thread."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
            run, wait = fh.read().split()[:2]
        return int(wait) / 1e9, int(run) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def name_of(pid: int) -> str:
    """'resource_tracker', 'idle' (a SCHED_IDLE process: the bulk lane's) or 'child <pid>'."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            if b"resource_tracker" in fh.read():
                return "resource_tracker"
        with open(f"/proc/{pid}/stat") as fh:
            policy = int(fh.read().rsplit(")", 1)[1].split()[38])
        return "idle" if policy == 5 else f"child {pid}"
    except (OSError, IndexError, ValueError):
        return f"child {pid}"


def heavy_arrivals(light: list, heavy: list) -> float | None:
    """The share of these light requests during which a heavy request arrived."""
    starts = sorted(a["t0"] for a in heavy)
    if not light:
        return None
    hit = sum(bisect.bisect_right(starts, a["t1"]) > bisect.bisect_left(starts, a["t0"]) for a in light)
    return round(hit / len(light), 3)


def in_flight(light: list, other: list) -> float | None:
    """The share of these light requests that overlapped one of the `other` requests."""
    spans = [(a["t0"], a["t1"]) for a in other]
    return round(sum(overlaps_heavy(a, spans) for a in light) / len(light), 3) if light else None


def clumps(light: list, slowest: list, judged: list) -> dict | None:
    """How bunched the light requests were sent: the mean number of other light requests sent within
    2 ms and 5 ms of each of the slowest 1% and of all judged ones; and how many light requests were
    sent with two or more others within 2 ms, beside what independent (Poisson) sends at the same
    rate would give."""
    t = sorted(a["t0"] for a in light)
    if len(t) < 2 or t[-1] <= t[0] or not slowest:
        return None

    def near(a: dict, w: float) -> int:
        return bisect.bisect_right(t, a["t0"] + w) - bisect.bisect_left(t, a["t0"] - w) - 1
    out = {f"others_within_{int(w * 1000)}ms": {"slowest_1pct": round(statistics.mean(near(a, w) for a in slowest), 2),
                                                "all": round(statistics.mean(near(a, w) for a in judged), 2)}
           for w in (0.002, 0.005)}
    mu = (len(t) - 1) / (t[-1] - t[0]) * 0.004   # others expected in a 4 ms window
    out["sent_with_two_others_within_2ms"] = sum(near({"t0": x}, 0.002) >= 2 for x in t)
    out["if_independent"] = round(len(t) * (1 - math.exp(-mu) * (1 + mu)), 1)
    return out


def overlaps_heavy(a: dict, heavy: list[tuple[float, float]]) -> bool:
    return any(h0 < a["t1"] and a["t0"] < h1 for h0, h1 in heavy)


def server_ms(header: str | None) -> float | None:
    """The server's own time for a reply, from its Server-Timing header ('app;dur=1.23'), else None."""
    return server_parts(header).get("app")


def server_parts(header: str | None) -> dict:
    """Every part of a Server-Timing header: 'app;dur=9.1, queue;dur=4.0' -> {'app': 9.1, 'queue': 4.0}."""
    return {name: float(ms) for name, ms in re.findall(r"(\w+);dur=([0-9.]+)", header or "")}


def server_side(during: list, routes: dict, single: dict) -> dict:
    """The light p99 as the server timed it (from the moment its app had the request to the reply's
    start), over its own time for the single calls, per route and the larger; and the p99 of the time
    spent outside it (the client's ms minus the server's: the event loop's queue and the HTTP parsing
    before the app, the kernel, the client's own scheduling). single: route key -> median server ms."""
    timed = [a for a in during if a.get("server_ms") is not None]
    out = {"p99_ms": {}, "vs_single": {}, "outside_p99_ms": {}}
    for path, key in routes.items():
        mine = [a for a in timed if a["path"] == path]
        if mine and single.get(key):
            out["p99_ms"][path] = pct([a["server_ms"] for a in mine], 0.99)
            out["vs_single"][path] = out["p99_ms"][path] / single[key]
            out["outside_p99_ms"][path] = pct([a["ms"] - a["server_ms"] for a in mine], 0.99)
    out["p99_vs_single"] = max(out["vs_single"].values(), default=None)
    out["single_ms"], out["timed"] = single, len(timed)
    # where the time of the slowest 1% (by the client's clock) went, against all: mean ms per part of
    # the server's (queue, forward, resume: the forward awaited on the loop; plan and reply: the rest of
    # the app's time) and outside it
    slowest = sorted(timed, key=lambda a: -a["ms"])[:max(1, len(timed) // 100)]
    out["parts_ms"] = {"slowest_1pct": _mean_parts(slowest), "all": _mean_parts(timed)} if timed else None
    return out


def _mean_parts(answers: list) -> dict:
    parts = [a.get("server_parts") or {} for a in answers]
    out = {k: statistics.mean(p.get(k, 0.0) for p in parts) for k in ("queue", "forward", "resume")}
    out["plan_and_reply"] = statistics.mean(a["server_ms"] for a in answers) - sum(out.values())
    out["outside"] = statistics.mean(a["ms"] - a["server_ms"] for a in answers)
    return {k: round(v, 2) for k, v in out.items()}


def served_code(cwd: Path) -> dict:
    """The package `python -m adapterhub` runs from `cwd` (the working directory's own, when it has
    one) and a sha256 over its .py files: which code a record's server ran, snapshots included."""
    folder = cwd / "adapterhub"
    if not (folder / "__init__.py").is_file():
        import adapterhub
        folder = Path(adapterhub.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return {"folder": str(folder), "sha256": digest.hexdigest()[:16]}
