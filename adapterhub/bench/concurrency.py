"""Concurrency: the request batcher against one call at a time, and the mixed batch.

    python -m adapterhub.bench.concurrency --quick          # CPU, SmolLM2-135M fp32, about a minute
    adapterhub bench --only concurrency --quick

Measurements (one JSON line each, all ratios from the same run):
  concurrent_requests  1-row score requests, adapters drawn from four, at 1, 8 and 32 concurrent callers
                       for a fixed time each. Modes: 'serial' = hub.score one call at a time (callers take
                       turns on a lock: what a server without the batcher does), 'threads' = hub.score from
                       every caller at once (routing per thread, no lock, no batching; not in --quick),
                       'batched' = Batcher. The modes take turns in short slices. value = requests/s;
                       p50_ms, p99_ms, single_call_ms (one call alone); vs_serial = requests/s over serial's.
  mixed_vs_single      ROWS rows over 4 adapters in one forward vs the same rows on one adapter, paired and
                       taking turns: value = the median over pairs of single ms / mixed ms (1.0: mixing
                       adapters costs nothing); max_abs_diff against each row alone. way 'segments': lora.py's
                       one engine (each adapter's LoRA product on its own rows); benchmarks/mixed_batch/ has
                       the full grid (quant x rows x tokens) and the gathered-stack alternative.
Every row records the machine's load average: on a shared machine, torch's worker threads wait for
cores that other processes hold, and every kernel launch pays for it.
  routing_us           what makes routing thread-safe costs per forward: one ContextVar read per wrapped
                       Linear (the hub's way), and an uncontended lock per forward (the other way), in µs.
With --budget-s the callers levels and the mixed check share the time left: params.seconds (per mode
and callers level) and params.pairs shrink to fit.
"""
from __future__ import annotations

import argparse
import contextvars
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from .common import Budget, Recorder, add_args, row_logits, publish_random_adapters, quant_list, timed_s

CALLERS = (1, 8, 32)
SECONDS, SECONDS_QUICK = 12.0, 2.0      # per (mode, callers)
SECONDS_LEAST = 0.5                     # what a short budget still gives each (mode, callers)
ROUNDS, ROUNDS_QUICK = 4, 1
ROWS, SEQ, SEQ_QUICK = 8, 128, 32       # the mixed-vs-single batch
PAIRS, PAIRS_QUICK = 15, 6
N_PROMPTS = 32
HISTORY, HISTORY_QUICK = (3, 12), (2, 5)  # items in a prompt's history (SmolLM2: ~65-190 / ~45-90 tokens)


def make_prompts(n: int = N_PROMPTS, history: tuple[int, int] = HISTORY) -> list[str]:
    """TALLRec-like prompts of varied length."""
    rng = random.Random(0)
    out = []
    for _ in range(n):
        items = ", ".join(f'"Item number {rng.randrange(10_000)} ({rng.randrange(1950, 2024)})"'
                          for _ in range(rng.randint(*history)))
        out.append(f"The user liked these items, oldest first: {items}. Will the user like "
                   f'"Item number {rng.randrange(10_000)}"? Answer:')
    return out


def drive(call, callers: int, seconds: float, keys: list[str], prompts: list[str]) -> tuple[int, list[float], float]:
    """`callers` threads call call([(key, prompt)]) until time is up. -> (requests, latencies ms, wall s)."""
    latencies: list[list[float]] = [[] for _ in range(callers)]
    barrier = threading.Barrier(callers + 1)
    errors: list[BaseException] = []
    end = [0.0]

    def body(i):
        rng = random.Random(i)
        barrier.wait()
        mine = latencies[i]
        try:
            while time.perf_counter() < end[0]:
                t = time.perf_counter()
                call([(rng.choice(keys), rng.choice(prompts))])
                mine.append(1000 * (time.perf_counter() - t))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
    threads = [threading.Thread(target=body, args=(i,)) for i in range(callers)]
    for th in threads:
        th.start()
    start = time.perf_counter()
    end[0] = start + seconds
    barrier.wait()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    flat = sorted(x for lat in latencies for x in lat)
    return len(flat), flat, time.perf_counter() - start


def percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * q))]


def bench_requests(rec, hub, keys, prompts, seconds, budget, rounds, quick, callers_list=CALLERS):
    """Each callers level: the modes take turns, `rounds` slices of seconds/rounds each, so a shared
    machine's slow spells hit every mode alike; a mode's figures pool its slices."""
    from ..batcher import Batcher
    lock = threading.Lock()

    def serial(rows):
        with lock:
            return hub.score(rows)
    batcher = Batcher(hub)
    modes = {"serial": serial, "threads": hub.score, "batched": batcher.score}
    if quick:
        del modes["threads"]
    for fn in modes.values():  # warm-up: every adapter once, through every path
        for k in keys:
            fn([(k, prompts[0])])
    single_ms = statistics.median(_timed(lambda: hub.score([(keys[0], p)])) for p in prompts[:8])
    try:
        for callers in callers_list:
            secs = min(seconds, max(SECONDS_LEAST, budget.share() / len(modes)))
            params = {"callers": callers, "rows_per_request": 1, "adapters": len(keys), "seconds": round(secs, 2)}
            if budget.over():
                rec.record("skipped", params, None, unit="", extra={"reason": "time budget"})
                continue
            pooled = {mode: {"ms": [], "wall": 0.0, "batches": 0} for mode in modes}
            for _ in range(rounds):
                for mode, fn in modes.items():
                    batches = batcher.batches
                    n, ms, wall = drive(fn, callers, secs / rounds, keys, prompts)
                    pooled[mode]["ms"] += ms
                    pooled[mode]["wall"] += wall
                    pooled[mode]["batches"] += batcher.batches - batches
            serial_rps = len(pooled["serial"]["ms"]) / pooled["serial"]["wall"]
            for mode, p in pooled.items():
                ms = sorted(p["ms"])
                extra = {"requests": len(ms), "p50_ms": percentile(ms, 0.5), "p99_ms": percentile(ms, 0.99),
                         "single_call_ms": single_ms, "seconds": p["wall"], "vs_serial": len(ms) / p["wall"] / serial_rps,
                         **load()}
                if mode == "batched":
                    extra["batches"] = p["batches"]
                rec.record("concurrent_requests", {"mode": mode, **params}, len(ms) / p["wall"], unit="req/s", extra=extra)
    finally:
        batcher.close()


def load() -> dict:
    """The 1-minute load average and the cores: how shared the machine was."""
    return {"loadavg_1m": os.getloadavg()[0], "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def _timed(fn) -> float:
    return 1000 * timed_s(fn)


@torch.no_grad()
def bench_mixed(rec, hub, keys, seq, pairs, budget):
    """single / mixed in turn (the order alternates), `pairs` times."""
    ids = torch.randint(3, min(1000, hub.model.config.vocab_size), (ROWS, seq),
                        generator=torch.Generator().manual_seed(0)).tolist()
    row_keys = [keys[i % len(keys)] for i in range(ROWS)]
    alone = torch.cat([row_logits(hub, row_keys[i], [ids[i]]) for i in range(ROWS)])
    runs = {"single": lambda: row_logits(hub, keys[0], ids), "mixed": lambda: row_logits(hub, row_keys, ids)}
    diff = float((runs["mixed"]() - alone).abs().max())
    ms = {name: [] for name in runs}
    pairs = budget.fit(pairs, 2 * timed_s(runs["single"]))  # also the warm-up
    for p in range(pairs):  # paired and alternating: slow spells of a shared machine hit both alike
        for name in (("single", "mixed") if p % 2 == 0 else ("mixed", "single")):
            ms[name].append(_timed(runs[name]))
    ratios = [s / m for s, m in zip(ms["single"], ms["mixed"])]
    rec.record("mixed_vs_single", {"way": "segments", "rows": ROWS, "adapters": len(keys), "seq": seq, "pairs": pairs},
               statistics.median(ratios), unit="x",
               extra={"single_ms": statistics.median(ms["single"]), "mixed_ms": statistics.median(ms["mixed"]),
                      "ratio_of_medians": statistics.median(ms["single"]) / statistics.median(ms["mixed"]),
                      "max_abs_diff": diff, **load()})


def bench_routing(rec, hub):
    var = contextvars.ContextVar("probe", default=None)
    lock = threading.Lock()
    n = 100_000
    t = time.perf_counter()
    for _ in range(n):
        var.get()
    get_us = 1e6 * (time.perf_counter() - t) / n
    t = time.perf_counter()
    for _ in range(n):
        with lock:
            pass
    lock_us = 1e6 * (time.perf_counter() - t) / n
    wrappers = len(hub.wrapped)
    rec.record("routing_us", {"way": "contextvar", "wrappers": wrappers}, get_us * wrappers, unit="us",
               extra={"per_read_us": get_us})
    rec.record("routing_us", {"way": "lock", "wrappers": wrappers}, lock_us, unit="us",
               extra={"note": "uncontended; under concurrency a lock also serializes forwards (mode 'serial')"})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap, quants="fp32")
    args = ap.parse_args(argv)
    from ..hub import Hub
    quants = quant_list(args.quants, args.device)
    budget = Budget(args.budget_s, parts=len(quants) * (1 + len(CALLERS)))  # the mixed check, each callers level
    seconds, seq, pairs, rounds = ((SECONDS_QUICK, SEQ_QUICK, PAIRS_QUICK, ROUNDS_QUICK) if args.quick
                                   else (SECONDS, SEQ, PAIRS, ROUNDS))
    rec = Recorder("concurrency", args.out, base=args.base, device=args.device)
    prompts = make_prompts(history=HISTORY_QUICK if args.quick else HISTORY)
    with tempfile.TemporaryDirectory() as tmp:
        for quant in quants:
            rec.context.update(quant=quant)
            hub = Hub(base=args.base, registry=Path(tmp) / quant, quant=quant, device=args.device)
            keys = [hub.load(n).key for n in publish_random_adapters(hub, 4)]
            bench_routing(rec, hub)
            if budget.over():
                rec.record("skipped", {"metric": "mixed_vs_single", "seq": seq}, None, unit="",
                           extra={"reason": "time budget"})
            else:
                bench_mixed(rec, hub, keys, seq, pairs, budget)
            bench_requests(rec, hub, keys, prompts, seconds, budget, rounds, args.quick)
            del hub
    rec.print_table()


if __name__ == "__main__":
    sys.exit(main())
