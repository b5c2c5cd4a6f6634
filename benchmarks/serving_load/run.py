"""Load test of `adapterhub serve` on locust, headless, 127.0.0.1 only, bounded in time (README.md here).

    python benchmarks/serving_load/run.py                              # random:small, 32 users, 60 s
    python benchmarks/serving_load/run.py --base smollm2-135m --quant fp32 --users 8 --think-s 3,5 --duration-s 240 \
        --max-request-tokens 4096                                       # the real base, at a load 2 cores carry

1. Publishes four random adapters (video, music, news, ecommerce) into a registry in a temp folder.
2. Starts `adapterhub serve` on 127.0.0.1 at a free port (a subprocess), with an API key, an admin key
   and runtime loading on; by default on CPUs of its own (locust and this driver on the first, the
   server on the rest, its bulk lane at idle priority: --server-cpus, --bulk-priority); times single
   light calls on the idle server (the baseline), and one heavy one.
3. Runs locust headless (locustfile.py: light users, one heavy user, one over-limit user) for
   --duration-s (and --tail-s more, not judged). At 40% of the run it promotes news v2 (published,
   not current, before the load) and reloads 'news' over the admin API; at 60% it unloads 'music'
   (later requests load it again).
4. Checks every answer against the adapter it names scored alone (a hub in this process), and reports:
   wrong answers, errors, light p50/p99 while the heavy client runs against the single call (after
   the ramp: locust starts the users over --ramp-s; the ramp's own p99 is reported apart; the single
   call is timed again after the load, to show how far the machine's speed drifted), the heavy
   requests' latency, the over-limit refusals' latency, what else ran on the server's CPUs, the
   server's RSS (with its forward processes), and, with --core-waits, how long its event loop,
   threads and processes waited for a core. One JSON line goes to results/loadtest.jsonl.
   --light-only runs the light users alone (the floor).
Goals (exit code 1 when missed): 0 wrong, 0 errors, light p99 <= 3x the single call, refusals fast.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cpu_others import CpuOthers
from load_plan import ADMIN_KEY, KEY, NAMES, REFS, TOL, check, plan, publish  # noqa: F401 - reused via run
from measures import (RunQueueWait, children_of, clumps, cpu_split, fifo_estimate, free_port, heavy_arrivals, in_flight,
                      last_option, name_of, overlaps_heavy, pct, pin, pinned,
                      rss_of, served_code, server_side, single_calls, wait_ready)

HERE = Path(__file__).resolve().parent
MAX_USERS, MAX_DURATION_S = 256, 900


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="random:small", help="base spec (default random:small)")
    ap.add_argument("--quant", default="fp32", help="base quantization (fp32: answers comparable to 1e-5)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--users", type=int, default=32, help=f"locust users, one heavy and one over-limit among them "
                    f"(at most {MAX_USERS})")
    ap.add_argument("--duration-s", type=float, default=60.0, help=f"seconds of load (at most {MAX_DURATION_S})")
    ap.add_argument("--tail-s", type=float, default=2.0, help="seconds locust runs past --duration-s, not judged: "
                    "the requests in flight while it stops wait on its own shutdown work (README here)")
    ap.add_argument("--think-s", default="0.5,1.5", help="a light user's pause between requests, min,max seconds")
    ap.add_argument("--ramp-s", type=float, default=5.0, help="seconds over which locust starts the users; the "
                    "latency goal is judged after it (and one think time), the ramp's figures are reported apart")
    ap.add_argument("--max-batch-tokens", type=int, default=None, help="the server's --max-batch-tokens")
    ap.add_argument("--max-request-tokens", type=int, default=16384, help="the server's --max-request-tokens")
    ap.add_argument("--bulk-tokens", default=None, help="the server's --bulk-tokens (N or none; default: the server's)")
    ap.add_argument("--heavy-history", type=int, default=6, help="items in the heavy client's history")
    ap.add_argument("--server-threads", type=int, default=1, help="the server's torch threads (OMP_NUM_THREADS; "
                    "default 1: locust needs a core of its own, and torch's threads spin when they share one)")
    ap.add_argument("--singles", type=int, default=20, help="single calls of each kind timed on the idle server")
    ap.add_argument("--single-pause-s", type=float, default=0.2, help="the pause before each single call of the "
                    "paced baseline")
    ap.add_argument("--server-args", default="", help="more options for `adapterhub serve`, e.g. '--http h11 --loop "
                    "asyncio' (the pure-Python stack) or '--gil-switch-ms 1'")
    ap.add_argument("--light-only", action="store_true", help="light users only, no heavy and no over-limit client: "
                    "the floor under the goal (every light request after the ramp is judged; goals not judged)")
    ap.add_argument("--core-waits", action="store_true", help="sample every 10 ms how long the server's threads "
                    "and processes waited for a core (run_queue_wait_ms; costs this driver ~0.06-0.10 of a core, "
                    "beside the server, so off by default)")
    ap.add_argument("--server-cpus", default="auto", help="'auto' (default): locust and this driver on the first "
                    "CPU, the server on the rest, as a client on another machine would leave them (on one CPU: "
                    "shared); 'all': all three share every CPU; or the server's CPUs, e.g. '1'")
    ap.add_argument("--bulk-priority", choices=("auto", "normal", "idle"), default="auto", help="the server's "
                    "--bulk-priority; auto (default): idle when the server has CPUs of its own, as docs/SERVING.md "
                    "advises, else normal")
    ap.add_argument("--scale", type=float, default=0.1, help="std of the random LoRA weights")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for loadtest.jsonl")
    args = ap.parse_args(argv)
    args.think_s = [float(x) for x in args.think_s.split(",")]
    from adapterhub.serve.config import Limits
    args.max_batch_tokens = args.max_batch_tokens or Limits().max_batch_tokens  # the server's, to plan as it does
    if args.singles < 1 or args.tail_s < 0:
        ap.error("--singles must be at least 1, --tail-s at least 0")
    if not 3 <= args.users <= MAX_USERS or not 0 < args.duration_s <= MAX_DURATION_S:
        ap.error(f"--users must be 3..{MAX_USERS} and --duration-s 0..{MAX_DURATION_S}")
    try:
        server_cpus, client_cpus = cpu_split(args.server_cpus)
    except ValueError as e:
        ap.error(str(e))
    extra_server_args = shlex.split(args.server_args)
    # a --bulk-priority in --server-args is the one the server uses (they come after ours)
    bulk_priority = last_option(extra_server_args, "--bulk-priority") or (
        args.bulk_priority if args.bulk_priority != "auto" else "idle" if server_cpus else "normal")
    import httpx
    from adapterhub.bench.common import Recorder
    from adapterhub.hub import Hub
    from adapterhub.registry import Registry
    # the client side pinned before the checker's torch threads start: they take this thread's CPUs
    with tempfile.TemporaryDirectory() as tmp, pinned(client_cpus):
        tmp = Path(tmp)
        registry = tmp / "adapters"
        checker = Hub(base=args.base, registry=registry, quant=args.quant, device=args.device)
        reg = Registry(registry)
        for i, name in enumerate(NAMES):
            publish(reg, checker, name, seed=i + 1, scale=args.scale)
        p = plan(checker, args)
        (tmp / "plan.json").write_text(json.dumps(p))
        tol = TOL.get(str(checker.base.compute_dtype).split(".")[-1], 1e-5)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server_args = ["--max-request-tokens", str(args.max_request_tokens), "--max-batch-tokens", str(args.max_batch_tokens),
                       *(["--bulk-tokens", args.bulk_tokens] if args.bulk_tokens else []), "--bulk-priority",
                       bulk_priority, *extra_server_args]
        server = subprocess.Popen(
            [sys.executable, "-m", "adapterhub", "serve", "--registry", str(registry), "--base", args.base,
             "--quant", args.quant, "--device", args.device, "--host", "127.0.0.1", "--port", str(port),
             "--preload", ",".join(NAMES), "--api-key", KEY, "--admin-key", ADMIN_KEY, "--allow-runtime-loading",
             "--no-access-log", "--max-queue", str(args.users * 2), *server_args],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w"),
            env=dict(os.environ, OMP_NUM_THREADS=str(args.server_threads)))
        if server_cpus:   # its one thread now; the threads it starts later take its CPUs
            pin(server.pid, server_cpus)
        headers = {"Authorization": f"Bearer {KEY}"}
        client = httpx.Client(headers=headers, timeout=300)
        admin_log: dict = {}
        try:
            wait_ready(client, url, server, 300, tmp / "server.log")
            if server_cpus:   # (again: every thread it has started by now)
                pin(server.pid, server_cpus)
            for ref in REFS:  # warm-up: the first call of each adapter is not a figure
                client.post(url + "/score", json={"model": ref, "prompts": p["prompts"][:2]})
                client.post(url + "/v1/rerank", json={"model": ref, "query": p["histories"][0], "documents": p["documents"]})
            baseline = single_calls(client, url, p, args.singles, pid=server.pid)
            paced = single_calls(client, url, p, args.singles, pause_s=args.single_pause_s)
            rss = [rss_of(server.pid, children=True)]   # with its forward processes
            forward_processes = sum(name_of(c) != "resource_tracker" for c in children_of(server.pid))
            sampling = threading.Event()

            others = CpuOthers(server.pid, server_cpus) if server_cpus else None

            def sample():
                while not sampling.wait(0.5):
                    rss.append(rss_of(server.pid, children=True))
                    if others is not None:
                        others.sample()

            def admin():
                admin_client = httpx.Client(headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120)
                time.sleep(0.4 * args.duration_s)
                reg.promote(f"news@{version}")
                t = time.time()
                r = admin_client.post(url + "/v1/load_lora_adapter", json={"lora_name": "news", "reload": True})
                admin_log["promotion"] = {"status": r.status_code, "loaded": r.json().get("loaded"), "t0": t,
                                          "ms": round(1000 * (time.time() - t), 1)}
                time.sleep(0.2 * args.duration_s)
                t = time.time()
                r = admin_client.post(url + "/v1/unload_lora_adapter", json={"lora_name": "music"})
                admin_log["unload"] = {"status": r.status_code, "unloaded": r.json().get("unloaded"), "t0": t}
            # news v2 is written before the load, as a trained version is, and promoted during it: the
            # writing is this driver's work, on locust's core, where it would hold locust's requests up
            version = publish(reg, checker, "news", seed=99, scale=args.scale, promote=False)
            threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=admin, daemon=True)]
            for th in threads:
                th.start()
            env = dict(os.environ, LOAD_PLAN=str(tmp / "plan.json"), LOAD_ANSWERS=str(tmp / "answers.jsonl"))
            load_from = time.time()
            steady_from = load_from + args.ramp_s + args.think_s[1]   # every user started and past its first pause
            waits = RunQueueWait(server.pid) if args.core_waits else contextlib.nullcontext()
            with waits:
                locust = subprocess.Popen(
                    [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless", "--host", url,
                     "-u", str(args.users), "-r", f"{args.users / max(args.ramp_s, 1e-3):g}", "-t", f"{math.ceil(args.duration_s + args.tail_s)}s", "--stop-timeout", "30",
                     "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0",
                     *(["Light"] if args.light_only else [])],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                if args.core_waits:
                    waits.watch(locust.pid, "locust")
                    waits.watch(os.getpid(), "driver")   # this process: the samplers, the admin calls
                locust_out, locust_err = locust.communicate(timeout=args.duration_s + 180)
            sampling.set()
            threads[1].join(60)
            rss.append(rss_of(server.pid, children=True))
            after = single_calls(client, url, p, args.singles)  # the same, idle again: how far the machine drifted
            metrics = client.get(url + "/metrics").text
            t = time.monotonic()
            server.send_signal(signal.SIGTERM)
            server.wait(60)
            drain_s = time.monotonic() - t
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        if not (tmp / "answers.jsonl").exists():
            raise RuntimeError("locust wrote no answers:\n" + locust_out[-2000:] + locust_err[-3000:])
        answers = [json.loads(line) for line in (tmp / "answers.jsonl").read_text().splitlines()]
        for a in answers:
            a["tol"] = tol
        result = check(answers, p, checker)
    light = [a for a in answers if a["user"] == "light"]
    heavy = [a for a in answers if a["user"] == "heavy"]
    over = [a for a in answers if a["user"] == "over_limit"]
    heavy_spans = [(a["t0"], a["t1"]) for a in heavy]
    # the goal's figure: the steady state. While locust starts its users, their first requests come
    # together (a burst of up to --users at once): reported apart, as the ramp's. And only until
    # --duration-s: in the tail after it, locust's own stop holds up the requests then in flight
    end = load_from + args.duration_s
    timed = [a for a in light if a["t0"] < end]
    ramp = [a for a in timed if a["status"] == 200 and a["t0"] < steady_from]
    during = [a for a in timed if a["status"] == 200 and a["t0"] >= steady_from
              and (args.light_only or overlaps_heavy(a, heavy_spans))]
    steady = [a for a in timed if a["t0"] >= steady_from]
    over_steady = [a for a in over if steady_from <= a["t0"] < end]
    last_sent = max((a["t0"] for a in answers), default=end)   # (locust stops ~0.5 s after this driver's clock says)
    # the share of a single call's time that holds the server: its CPU over its latency, both the mean of
    # the same back-to-back calls (/proc counts CPU in 10 ms ticks: ~60 calls give a few % precision)
    cpu_ms = baseline["server_cpu_ms"]   # None where /proc cannot be read
    busy = None if cpu_ms is None else min(1.0, max(0.0, cpu_ms / baseline["mean_ms"]))
    # the FIFO estimate draws paced calls: each holds the server for the measured CPU on average
    hold = None if cpu_ms is None else min(1.0, max(0.0, cpu_ms / paced["mean_ms"]))
    routes = {"/score": "score_ms", "/v1/rerank": "rerank_ms"}
    start = min((a["t0"] for a in answers), default=0.0)
    slowest = sorted(during, key=lambda a: -a["ms"])[:max(1, len(during) // 100)]
    ms = {path: [a["ms"] for a in during if a["path"] == path] for path in routes}
    p99 = {path: pct(ms[path], 0.99) or 0 for path in routes}

    def against(single: dict) -> dict:  # each route's p99 over a single call of that route
        return {path: p99[path] / single[key] for path, key in routes.items()}
    ratios = against(baseline)
    summary = {
        "base": args.base, "quant": args.quant, "compute_dtype": str(checker.base.compute_dtype), "users": args.users,
        "duration_s": args.duration_s, "tail_s": args.tail_s, "think_s": args.think_s, "max_request_tokens": args.max_request_tokens,
        "max_batch_tokens": args.max_batch_tokens, "bulk_tokens": args.bulk_tokens or "default", "server_threads": args.server_threads,
        "cpus": {"server": sorted(server_cpus), "client": sorted(client_cpus)} if server_cpus else "all",
        "bulk_priority": bulk_priority,
        "heavy_tokens": p["heavy_tokens"], "server_args": args.server_args, "server_code": served_code(Path.cwd()),
        "requests": len(answers), "light": len(light), "light_per_s": len(timed) / max(1e-9, end - min((a["t0"] for a in answers), default=0.0)),
        "errors": sum(a["status"] != 200 for a in light + heavy), "wrong": result["wrong"],
        "checked": sum(a["status"] == 200 for a in light), "max_abs_diff": result["max_abs_diff"], "tol": tol,
        "versions": result["versions"], "min_gap_between_versions": result["min_gap_between_versions"],
        "single_score_ms": baseline["score_ms"], "single_rerank_ms": baseline["rerank_ms"],
        "single_score_one_row_ms": baseline["score_one_row_ms"],
        # the idle server's own spread: the slowest of the single calls over their median, per route
        "single_max_vs_median": {k: max(v) / statistics.median(v) for k, v in baseline["samples"].items() if v},
        "p99_vs_single_one_row_score": p99["/score"] / baseline["score_one_row_ms"],
        "single_after_score_ms": after["score_ms"], "single_after_rerank_ms": after["rerank_ms"],
        "p99_vs_single_after": max(against(after).values()),
        "single_paced_score_ms": paced["score_ms"], "single_paced_rerank_ms": paced["rerank_ms"],
        "server_cpu_ms_per_single": baseline["server_cpu_ms"], "server_busy_share": busy, "fifo_hold_share": hold,
        "fifo_estimate_p99_vs_single": fifo_estimate(paced["samples"], len(steady) / max(1e-9, max(a["t0"] for a in steady)
                                                                                 - steady_from), hold) if steady and hold is not None else None,
        "p99_vs_single_paced": max(against(paced).values()),
        "heavy_alone_ms": baseline["heavy_alone_ms"], "ramp_s": args.ramp_s, "light_during_heavy": len(during),
        # the slowest light request sent in the load's last 0.5 s, as locust stops (not judged): its stall
        "stop_light_max_ms": max((a["ms"] for a in light if a["t0"] >= last_sent - 0.5), default=None),
        "ramp_light": len(ramp), "ramp_light_p99_ms": pct([a["ms"] for a in ramp], 0.99),
        "score_p50_ms": pct(ms["/score"], 0.5), "score_p99_ms": pct(ms["/score"], 0.99),
        "rerank_p50_ms": pct(ms["/v1/rerank"], 0.5), "rerank_p99_ms": pct(ms["/v1/rerank"], 0.99),
        "p99_vs_single": max(ratios.values()), "p99_vs_single_by_route": ratios,
        # the same as the server timed it, and the time spent outside it (reported, not judged)
        "server_side": server_side(during, routes, baseline["server_ms"]),
        "heavy_requests": len(heavy), "heavy_p50_ms": pct([a["ms"] for a in heavy], 0.5),
        "over_limit": len(over), "over_limit_refused": sum(a["status"] == 400 for a in over),
        # judged after the ramp, as the light figure: the first refusal of each kind is a cold path
        "over_limit_p50_ms": pct([a["ms"] for a in over_steady], 0.5),
        "over_limit_p99_ms": pct([a["ms"] for a in over_steady], 0.99),
        "ramp_over_limit_max_ms": max((a["ms"] for a in over if a["t0"] < steady_from), default=None),
        # the same refusals as the server timed them (Server-Timing), and the time outside the app: p50, p99
        "over_limit_server_ms": [pct([a["server_ms"] for a in over_steady if a.get("server_ms") is not None], q)
                                 for q in (0.5, 0.99)],
        "over_limit_outside_ms": [pct([a["ms"] - a["server_ms"] for a in over_steady if a.get("server_ms") is not None], q)
                                  for q in (0.5, 0.99)],
        "over_limit_slowest": [(round(a["ms"], 1), round(a["t0"] - min(b["t0"] for b in answers), 1), a["path"],
                                a.get("server_ms"))   # (ms, s into the load, route, the server's ms)
                               for a in sorted((a for a in over if a["t0"] < end), key=lambda a: -a["ms"])[:4]],
        # the slowest 1% of the light requests the goal judges (ms, s into the load, route, the adapters it
        # named), beside when the promotion and the unload were sent: what the p99 is made of
        # and the server's own ms and parts of it (Server-Timing): a stall in the app or outside it
        "light_slowest": [(round(a["ms"], 1), round(a["t0"] - start, 2), a["path"],
                           a["reply"].get("adapters") or a["reply"].get("model"), a.get("server_ms"),
                           a.get("server_parts") and {k: v for k, v in a["server_parts"].items() if k != "app"})
                          for a in slowest],
        "admin_at_s": {k: round(v["t0"] - start, 2) for k, v in admin_log.items() if "t0" in v},
        # how often a heavy request arrived while a light one was in flight: its slowest 1% against all
        # (the heavy request is planned, tokens counted, in a thread, beside the light ones' forwards)
        "heavy_arrived_during": {"slowest_1pct": heavy_arrivals(slowest, heavy), "all": heavy_arrivals(during, heavy)},
        # and how often an over-limit request was in flight beside it (its body parsed and refused on the loop)
        "over_limit_in_flight": {"slowest_1pct": in_flight(slowest, over), "all": in_flight(during, over)},
        # and how bunched the light requests were sent (the slowest come with others: README here)
        "clumps": clumps(light, slowest, during),
        # how long the server's event loop, its other threads and its forward processes waited for a core
        # (runnable, not running) during the slowest 1% and during all judged light requests, mean ms
        "run_queue_wait_ms": waits.summary(slowest, during) if args.core_waits else None,
        # what else ran on the server's CPUs (their busy time less the server's) and the hypervisor's
        # steal: shares of those CPUs over the load, and during the slowest 1% and all judged requests
        "server_cpus_others": others.summary(slowest, during) if others is not None else None,
        "promotion": admin_log.get("promotion"), "unload": admin_log.get("unload"), "drain_s": drain_s,
        "forward_processes": forward_processes,   # CPU and RSS figures include them
        "rss_start_mib": rss[0] / 2**20, "rss_peak_mib": max(rss) / 2**20,
        "error_examples": [f"{a['user']} {a['path']} {a['status']} {str(a['reply'])[:200]}" for a in light + heavy
                           if a["status"] != 200][:5],
        "server_refused": [line for line in metrics.splitlines() if line.startswith("adapterhub_refused_total{")],
    }
    summary["light_only"] = args.light_only
    summary["goals_met"] = bool(not args.light_only and summary["wrong"] == 0 and summary["errors"] == 0 and during
                                and summary["p99_vs_single"] <= 3.0
                                and summary["over_limit"] > 0 and summary["over_limit_refused"] == summary["over_limit"]
                                and over_steady and summary["over_limit_p99_ms"] <= baseline["rerank_ms"]
                                and (summary["promotion"] or {}).get("loaded") == "news@v2"
                                and (summary["unload"] or {}).get("unloaded") == ["music@v1"])
    rec = Recorder("loadtest", args.out, base=args.base, device=args.device, quant=args.quant)
    rec.record("light_p99_vs_single", {"users": args.users, "duration_s": args.duration_s, "tool": "locust"},
               summary["p99_vs_single"], unit="x", extra={k: v for k, v in summary.items() if k not in ("base", "quant")})
    print(json.dumps({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in summary.items()}))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main()["goals_met"] else 1)
