"""`adapterhub bench`: run the benchmark suites (one module each in adapterhub/bench/) and build the report.

    adapterhub bench --quick                         # CPU, SmolLM2-135M, <= 10 min
    adapterhub bench                                 # the full run (benchmarks/README.md)
    adapterhub bench --only training --quick         # one suite (by suite or module name)
    adapterhub bench --base random:llama-1b --device cuda --out OUT --budget-s 240
    adapterhub bench report --out benchmarks/results # REPORT.md + PNGs from the JSON lines

Each suite runs in its own process (`python -m adapterhub.bench.<module>`, so one crash or memory
peak does not touch the others) and appends one JSON line per measurement to <out>/<suite>.jsonl;
every suite of one invocation shares a run id. With a time budget each suite gets its share of what
is left (SOFT_SHARE of it: suites overrun a little) and scales its repeats and counts to it; the
budget is a hard limit for the whole run: a suite still running when it ends is killed (the rows
it wrote are kept). The report (report.py) reads, for each (suite, base, device), the latest run.
benchmarks/gpu.sh runs a fixed plan of these on one GPU (gpu.py).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import AdapterHubError, ConfigError, did_you_mean
from ..model_ids import DEFAULT_BASE
from .report import PLOTS, BenchError, build_report

__all__ = ["SUITES", "QUICK_BUDGET_S", "PLOTS", "BenchError", "add_arguments", "run_from_args", "run_suites",
           "parse_suites", "build_report", "main"]

# suite (= results/<suite>.jsonl) -> (module in adapterhub.bench, what it measures, weight in the time budget)
SUITES = {
    "base": ("memory", "base memory per quant mode, load time", 50),
    "adapters": ("adapters", "adapter file size and resident bytes per rank", 25),
    "runtime": ("runtime", "cold load / switch vs resident adapters, mixed batch, memory (vs PEFT)", 120),
    "forward": ("forward", "forward throughput: base, single, mixed, split, merged (vs PEFT)", 120),
    "ranking": ("ranking", "ranking candidates/s with and without prefix reuse", 40),
    "train": ("training", "training candidates/s and peak memory (GPU: allocator; CPU: RSS): ours vs a plain PEFT loop; "
                          "ranking 20 candidates", 100),
    "merge": ("merge", "AUC kept by 4-way merges (cat, ties)", 105),
    "concurrency": ("concurrency", "requests/s, p50/p99 at 1/8/32 callers (batcher vs one at a time); mixed batch", 60),
}
QUICK_BUDGET_S = 540  # `--quick` on 2 CPU cores: every suite, start-up included
SOFT_SHARE = 0.85     # of the time left, what the suites are told they have: the rest absorbs overruns


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `adapterhub bench` arguments (also `python -m adapterhub.bench`)."""
    p.add_argument("action", nargs="?", default="run", choices=["run", "report"],
                   help="run: the suites, then the report (default); report: only rebuild REPORT.md and the PNGs")
    p.add_argument("--quick", action="store_true", help=f"small sizes, few repeats, a {QUICK_BUDGET_S} s budget (CPU)")
    p.add_argument("--base", default=DEFAULT_BASE, help=f"base spec: {DEFAULT_BASE} or random:<preset> (e.g. random:llama-1b)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quants", default=None, help="comma-separated quant modes for every suite (default: each suite's own)")
    p.add_argument("--only", default=None, help=f"comma-separated suites (default all: {', '.join(SUITES)})")
    p.add_argument("--out", default=str(Path("benchmarks") / "results"),
                   help="results folder: JSON lines, logs/, REPORT.md, PNGs (default ./benchmarks/results)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="time budget for the whole run, shared among the suites (default: none; --quick: "
                        f"{QUICK_BUDGET_S})")
    p.add_argument("--no-report", action="store_true", help="run the suites without building the report")
    p.add_argument("--no-plots", action="store_true", help="write REPORT.md without PNGs (no matplotlib needed)")


def run_from_args(args) -> int:
    out = Path(args.out)
    if args.action == "report":
        print(f"wrote {build_report(out, plots=not args.no_plots)}")
        return 0
    budget_s = args.budget_s if args.budget_s is not None else (QUICK_BUDGET_S if args.quick else None)
    failed = run_suites(args.base, args.device, out, quick=args.quick, only=args.only, quants=args.quants,
                        budget_s=budget_s)
    if not args.no_report:
        print(f"wrote {build_report(out, plots=not args.no_plots)}")
    return 1 if failed else 0


def parse_suites(only: str | None) -> list[str]:
    """'forward,training' -> suite names; a suite's module name works too (training -> train)."""
    if not only:
        return list(SUITES)
    by_module = {module: suite for suite, (module, _, _) in SUITES.items()}
    names = [s.strip() for s in only.split(",") if s.strip()]
    bad = [s for s in names if s not in SUITES and s not in by_module]
    if bad:
        raise ConfigError(f"unknown suite(s) {', '.join(map(repr, bad))} (choose from: {', '.join(SUITES)})."
                          f"{did_you_mean(bad[0], list(SUITES) + list(by_module))}")
    return list(dict.fromkeys(s if s in SUITES else by_module[s] for s in names))


def run_suites(base: str, device: str, out: Path, quick: bool = False, only: str | None = None,
               quants: str | None = None, budget_s: float | None = None,
               extra: dict[str, list[str]] | None = None, hard_s: float | None = None) -> list[str]:
    """Run each suite in a subprocess; -> the suites that failed. Logs go to <out>/logs/.
    budget_s: the whole run's limit (suites scale to their shares; one still running at the end is
    killed). hard_s: kill only at this many seconds instead (>= budget_s: the shares still come from
    budget_s; benchmarks/gpu.sh lets the rows it needs overrun into time meant for the others).
    extra: more arguments for a suite's command line, by suite name."""
    suites = parse_suites(only)
    out = Path(out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    run_id = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    env = dict(os.environ, ADAPTERHUB_BENCH_RUN=run_id, PYTHONUNBUFFERED="1")
    command = "adapterhub bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])
    start = time.monotonic()
    end = None if budget_s is None else start + budget_s
    kill_end = None if end is None else start + max(budget_s, hard_s or 0.0)
    failed = []
    for i, suite in enumerate(suites):
        module = f"adapterhub.bench.{SUITES[suite][0]}"
        argv = [sys.executable, "-m", module, "--base", base, "--device", device, "--out", str(out)]
        argv += (["--quick"] if quick else []) + (["--quants", quants] if quants else [])
        argv += (extra or {}).get(suite, [])
        soft = hard = None
        if end is not None:  # this suite's share of what is left; it scales to it; the kill keeps the run's limit
            left = end - time.monotonic()
            soft = max(5.0, left * SOFT_SHARE * _share(suite, base) / sum(_share(s, base) for s in suites[i:]))
            hard = max(0.0, min(soft * 1.5 + 30, kill_end - time.monotonic()))
            argv += ["--budget-s", f"{soft:.0f}"]
        log_path = out / "logs" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', base)}-{device}-{suite}.log"
        print(f"[{suite}] {module}" + (f" (budget {soft:.0f} s, killed at {hard:.0f} s)" if soft else ""), flush=True)
        t0 = time.monotonic()
        if kill_end is not None and kill_end - t0 < 2:
            status = "not run: the run's time budget was spent"
        else:
            status = _run(argv, env, log_path, hard)
        wall = time.monotonic() - t0
        print(f"[{suite}] {status} in {wall:.0f} s (log: {log_path})", flush=True)
        if status != "ok":
            failed.append(suite)
        with open(out / "bench.jsonl", "a") as fh:
            fh.write(json.dumps({"suite": "bench", "run": run_id, "metric": "suite_wall_s", "params": {"suite": suite},
                                 "value": round(wall, 1), "unit": "s", "status": status, "base": base, "device": device,
                                 "quick": quick, "command": command, "budget_s": soft}) + "\n")
    return failed


def _share(suite: str, base: str) -> float:
    """A suite's weight in the time budget (merge quality skips at once on a random base)."""
    return 2.0 if suite == "merge" and base.startswith("random:") else SUITES[suite][2]


def _run(argv: list[str], env: dict, log_path: Path, timeout: float | None) -> str:
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the suite and any child it started
            proc.wait()
            return f"timed out after {timeout:.0f} s (rows written so far are kept)"
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    return "ok" if rc == 0 else f"failed (exit {rc})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m adapterhub.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_from_args(args)
    except AdapterHubError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
