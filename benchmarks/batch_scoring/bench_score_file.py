"""score-file against a loop of recommend calls, its memory on a 10x longer file, and the Ray engine.

    flock /tmp/adapterhub-heavy.lock python benchmarks/batch_scoring/bench_score_file.py    # ~25 min, 2 cores
    (the options in this folder's README.md: ~10 min)

1. A temporary registry: ./adapters copied (never written to) and each scenario adapter's facts
   rebuilt there from ../shared/data, so the fused score is the one the adapters were fit for.
2. A mixed-scenario input: --rows users, a quarter from each scenario's test split (video, music,
   ecommerce, news; each user's history and up to 20 candidates), shuffled, as JSONL in the temp
   folder (the data never leaves it).
3. Speed, one process, one Hub (SmolLM2-135M, NF4): the same rows as a plain loop of
   `hub.recommend(row's adapter, history, candidates, k=10)` and as `hub.score_file` (local engine,
   default batching), in alternating rounds (loop, file, loop, file); rows/s of each over its rounds
   and the ratio. The agreement of the two (top-k sets and order, largest score difference) is
   recorded beside. With --workers N, each round at the largest thread count also runs
   `score_file(workers=N, threads=1)` (N processes of one thread, the pool's start included; parts of
   rows / 2N rows, so that every worker has parts: a part is one worker's task).
4. Memory: `score_file` on a --mem-rows file and on a 10x longer one (the same users repeated), each
   in a fresh process, with --mem-part-rows rows per part (so the long file is ten times as many
   parts, not one bigger part); peak RSS (ru_maxrss) of each and the ratio.
5. Ray: the speed file with the local engine and then with engine="ray" (a local Ray on this
   machine: one actor with the same torch threads), in one process, --engine-part-rows rows per
   part; rows/s end to end (the actor's start, which loads its own Hub, included) and from the first
   committed part to the last (steady state), and whether the two outputs are identical.

One JSON line per measurement to --out/batch_scoring.jsonl (adapterhub.bench.common.Recorder).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

SCENARIOS = {"video": {}, "music": {}, "ecommerce": {}, "news": {"full_train": True}}
FACTS_OPTIONS = {"news": ["--data-option", "full_train=true"]}
MAX_CANDIDATES = 20
K = 10


def build_registry(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".locks"))
    for name in SCENARIOS:
        subprocess.run([sys.executable, "-m", "adapterhub", "facts", name, "--registry", str(dst),
                        *FACTS_OPTIONS.get(name, [])], check=True, capture_output=True)


def build_rows(n: int, seed: int = 0, max_candidates: int = MAX_CANDIDATES) -> list[dict]:
    """n users, a quarter per scenario, shuffled: each test ranking group's history and candidates.
    Video's examples are single candidates with their own history: each user's valid and test
    candidates, cut into lists of 20, with the history of the first."""
    from adapterhub import datasets
    rng = random.Random(seed)
    rows = []
    for scenario, options in SCENARIOS.items():
        data = datasets.load(scenario, options=options)
        groups = defaultdict(list)
        for split in ("valid", "test") if scenario == "video" else ("test",):
            for ex in data.splits[split]:
                groups[ex.user if scenario == "video" else (ex.user, ex.group, ex.history, ex.disliked)].append(ex)
        users = []
        for exs in groups.values():
            cands = list(dict.fromkeys(e.candidate for e in exs))
            for at in range(0, len(cands), max_candidates):
                if len(cands[at:at + max_candidates]) >= 2:
                    users.append({"user": str(exs[0].user), "history": list(exs[0].history),
                                  "candidates": cands[at:at + max_candidates], "disliked": list(exs[0].disliked),
                                  "adapter": scenario})
        rng.shuffle(users)
        if len(users) < n // len(SCENARIOS):
            raise SystemExit(f"{scenario}: only {len(users)} users with 2+ candidates; ask for fewer --rows")
        rows += users[:n // len(SCENARIOS)]
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path


def read_parts(folder: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(folder.glob("part-*.jsonl")) for line in p.read_text().splitlines()]


def timed_commits(fn):
    """Run fn() -> (its result, [time of each committed part])."""
    from adapterhub.batch import parts
    stamps, real = [], parts.Output.commit

    def commit(self, *a, **kw):
        out = real(self, *a, **kw)
        stamps.append(time.perf_counter())
        return out
    parts.Output.commit = commit
    try:
        return fn(), stamps
    finally:
        parts.Output.commit = real


class RssSampler:
    """The largest RSS this process reaches while the `with` body runs (sampled every 20 ms): the
    peak of the scoring itself, where ru_maxrss may be the base's load."""

    def __enter__(self):
        from adapterhub.bench.common import rss_bytes
        self.before, self.peak, self._stop = rss_bytes(), 0, threading.Event()

        def sample():
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, rss_bytes())
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def child_rss(args) -> None:
    """In a fresh process: score a file, print its peak RSS (ru_maxrss) and the scoring's own peak."""
    import resource
    import torch
    from adapterhub import Hub
    torch.set_num_threads(int(args.threads.split(",")[0]))  # as the parent's first speed measurement
    hub = Hub(base=args.base, registry=args.registry)
    for name in SCENARIOS:
        hub.load(name)
    t0 = time.perf_counter()
    with RssSampler() as rss:
        summary = hub.score_file(args.child[0], args.child[1], k=K, part_rows=args.mem_part_rows)
    print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "scoring_peak_rss_bytes": rss.peak, "rss_before_bytes": rss.before,
                      "rows": summary["rows"], "seconds": time.perf_counter() - t0}))


def speed(hub, rec, rows, src: Path, work: Path, rounds: int, threads: list[int], workers: int = 0) -> None:
    """The recommend loop and score_file on the same rows, alternating, at each torch thread count;
    workers: also score_file(workers=N, threads=1) in each round (at the largest thread count)."""
    import torch
    base_params = {"rows": len(rows), "candidates": sum(len(r["candidates"]) for r in rows),
                   "scenarios": list(SCENARIOS), "k": K, "rounds": rounds}
    for r in rows[:8]:  # warm both paths (kernels, facts caches)
        hub.recommend(r["adapter"], r["history"], r["candidates"], k=K, disliked=r["disliked"])
    hub.score_file(write_jsonl(work / "warm.jsonl", rows[:8]), work / "warm-out", k=K)
    loop_s, file_s, load = defaultdict(float), defaultdict(float), defaultdict(list)
    loop_out, file_out = {}, {}
    pool_s, first_commit, pool_out = [], [], None
    for rnd in range(rounds):
        for nt in threads:
            torch.set_num_threads(nt)
            load[nt].append(os.getloadavg()[0])
            t0 = time.perf_counter()
            loop_out[nt] = [hub.recommend(r["adapter"], r["history"], r["candidates"], k=K, disliked=r["disliked"])
                            for r in rows]
            loop_s[nt] += time.perf_counter() - t0
            t0 = time.perf_counter()
            hub.score_file(src, work / f"out-{nt}-{rnd}", k=K)
            file_s[nt] += time.perf_counter() - t0
            file_out[nt] = read_parts(work / f"out-{nt}-{rnd}")
            if workers > 1 and nt == max(threads):   # the pool's start (spawn, a base per process) included
                t0 = time.perf_counter()
                part_rows = max(1, len(rows) // (2 * workers))   # parts for every worker: a part is one task
                _, commits = timed_commits(lambda: hub.score_file(src, work / f"out-w{rnd}", k=K, workers=workers,
                                                                  threads=1, part_rows=part_rows))
                pool_s.append(time.perf_counter() - t0)
                first_commit.append(commits[0] - t0)
                pool_out = read_parts(work / f"out-w{rnd}")
            load[nt].append(os.getloadavg()[0])
            print(f"round {rnd}, {nt} threads: loop {loop_s[nt]:.1f} s, score-file {file_s[nt]:.1f} s (cumulative)",
                  flush=True)
    for nt in threads:
        n, got, want = len(rows) * rounds, file_out[nt], loop_out[nt]
        same_set = sum({c["item"] for c in g["ranked"]} == {i for i, _ in w} for g, w in zip(got, want))
        same_order = sum([c["item"] for c in g["ranked"]] == [i for i, _ in w] for g, w in zip(got, want))
        diffs = [abs(c["score"] - dict(w)[c["item"]]) for g, w in zip(got, want) for c in g["ranked"]
                 if c["item"] in dict(w)]
        params = {**base_params, "threads": nt}
        extra = {"load_avg_1m": load[nt]}
        rec.record("rows_per_s", {**params, "path": "recommend loop"}, n / loop_s[nt], "rows/s", extra)
        rec.record("rows_per_s", {**params, "path": "score-file (local)"}, n / file_s[nt], "rows/s",
                   {**extra, "speedup_vs_loop": loop_s[nt] / file_s[nt], "top_k_same_set": same_set / len(rows),
                    "top_k_same_order": same_order / len(rows), "max_abs_score_diff": max(diffs)})
    if pool_s:
        nt = max(threads)
        n = len(rows) * rounds
        rec.record("rows_per_s", {**base_params, "threads": 1, "workers": workers, "path": "score-file (workers)"},
                   n / sum(pool_s), "rows/s",
                   {"speedup_vs_loop": loop_s[nt] / sum(pool_s), "loop_threads": nt,
                    "speedup_vs_score_file": file_s[nt] / sum(pool_s), "first_part_s": first_commit,
                    "part_rows": max(1, len(rows) // (2 * workers)),
                    "identical_to_local": pool_out == file_out[nt]})
    torch.set_num_threads(max(threads))


def memory(args, rec, reg: Path, work: Path) -> None:
    mem = build_rows(args.mem_rows, seed=1, max_candidates=args.mem_candidates)
    rss = {}
    for times in (1, 10):
        f = write_jsonl(work / f"mem-{times}x.jsonl", mem * times)
        done = subprocess.run([sys.executable, __file__, "--registry", str(reg), "--base", args.base,
                               "--mem-part-rows", str(args.mem_part_rows), "--threads", args.threads,
                               "--child", str(f), str(work / f"mem-out-{times}x")],
                              check=True, capture_output=True, text=True)
        rss[times] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{times}x file: {rss[times]}", flush=True)
    for times in (1, 10):
        r = rss[times]
        rec.record("peak_rss", {"rows": len(mem) * times, "part_rows": args.mem_part_rows,
                                "max_candidates": args.mem_candidates, "fresh_process": True},
                   r["peak_rss_bytes"] / 2**20, "MiB",
                   {"ratio_vs_1x": r["peak_rss_bytes"] / rss[1]["peak_rss_bytes"],
                    "scoring_peak_mib": r["scoring_peak_rss_bytes"] / 2**20,
                    "scoring_peak_ratio_vs_1x": r["scoring_peak_rss_bytes"] / rss[1]["scoring_peak_rss_bytes"],
                    "rss_before_scoring_mib": r["rss_before_bytes"] / 2**20, "seconds": r["seconds"]})


def engines(args, hub, rec, rows, src: Path, work: Path) -> None:
    """The local engine, then the Ray engine (a local Ray: one actor, the same torch threads)."""
    import ray
    import torch
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    runs = {}
    for engine in ("local", "ray"):
        load = os.getloadavg()[0]
        start = time.perf_counter()
        summary, stamps = timed_commits(lambda e=engine: hub.score_file(src, work / f"eng-{e}", k=K, engine=e,
                                                                        part_rows=args.engine_part_rows))
        runs[engine] = (start, summary, stamps, [load, os.getloadavg()[0]])
        print(f"{engine} engine: {summary['seconds']} s", flush=True)
    same = read_parts(work / "eng-local") == read_parts(work / "eng-ray")
    local_rate = len(rows) / (runs["local"][2][-1] - runs["local"][0])
    for name, (start, summary, stamps, load) in runs.items():
        total = stamps[-1] - start
        first_rows = min(args.engine_part_rows, len(rows))
        steady = (len(rows) - first_rows) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None
        rec.record("engine_rows_per_s", {"rows": len(rows), "engine": name, "actors": 1,
                                         "threads": torch.get_num_threads(), "part_rows": args.engine_part_rows},
                   len(rows) / total, "rows/s",
                   {"steady_rows_per_s": steady, "first_part_s": stamps[0] - start, "load_avg_1m": load,
                    "commit_s": [round(t - start, 2) for t in stamps],
                    **({"ray_init_s": init_s, "identical_to_local": same,
                        "overhead_vs_local": 1 - (len(rows) / total) / local_rate} if name == "ray" else {})})
    ray.shutdown()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32, help="users in the speed file (a quarter per scenario)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating loop / score-file rounds")
    ap.add_argument("--threads", default="2,1", help="torch thread counts to compare the two paths at")
    ap.add_argument("--mem-rows", type=int, default=16, help="users in the memory file (10x for the long one)")
    ap.add_argument("--mem-part-rows", type=int, default=4, help="rows per part in the memory runs: the 1x file "
                    "is several parts, the 10x file ten times as many")
    ap.add_argument("--mem-candidates", type=int, default=8, help="candidates per user in the memory files")
    ap.add_argument("--engine-part-rows", type=int, default=8, help="rows per part in the local-vs-Ray run")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    ap.add_argument("--workers", type=int, default=2, help="also time score-file with this many 1-thread worker "
                    "processes in each speed round (0: no)")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--adapters", default="adapters", help="the registry to copy (read only)")
    ap.add_argument("--out", default=str(Path(__file__).parent))
    ap.add_argument("--registry", help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_rss(args)

    from adapterhub import Hub
    from adapterhub.bench.common import Recorder
    work = Path(tempfile.mkdtemp(prefix="adapterhub-batch-bench-"))
    try:
        reg = work / "adapters"
        build_registry(Path(args.adapters), reg)
        rows = build_rows(args.rows)
        src = write_jsonl(work / "users.jsonl", rows)
        hub = Hub(base=args.base, registry=reg)
        rec = Recorder("batch_scoring", args.out, base=args.base, device="cpu", quant=hub.base.quant,
                       compute=hub.base.compute)
        for name in SCENARIOS:
            hub.load(name)
        speed(hub, rec, rows, src, work, args.rounds, [int(t) for t in args.threads.split(",")], args.workers)
        if not args.no_memory:
            memory(args, rec, reg, work)
        if not args.no_ray:
            engines(args, hub, rec, rows, src, work)
        rec.print_table()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
