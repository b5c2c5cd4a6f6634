"""The local engine over several processes: `score_file(..., workers=N)`, `score-file --workers N`.

On a CPU a forward of this project's small bases does not use many threads well: on 2 cores, two
processes of one thread each scored 1.18x the candidates per second of one process with two threads
(benchmarks/batch_scoring). So a job can run its parts on a pool of processes, each holding its own
Hub (the base loaded once per process, its adapters on demand) with cores / N torch threads. The
pool takes parts in file order and this process commits them in that order, as the local engine
does, so resuming, bad rows and pinned versions work the same, and each part's rows are those of
the local engine at the same thread count. The processes are spawned (a forked torch's threads
are not safe) and read IN themselves; at most 2N parts are in flight, so memory stays flat.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from collections import deque
from concurrent.futures import ProcessPoolExecutor

from ..forward_process import build_hub, exit_with, hub_args
from .readers import Part, PartReader, Scan
from .scorer import Options, PartResult


class PartScorer:
    """One Hub built from `hub_args` (adapterhub.forward_process.hub_args) in this process, then one
    part per call. The Ray engine's actors are PartScorers too."""

    def __init__(self, hub_args: dict, scan: dict, options: dict, pins: dict, facts: dict | None, fingerprint: str,
                 threads: int | None):
        import torch
        from .scorer import Scorer
        if threads:
            torch.set_num_threads(threads)
        hub = build_hub(hub_args, fingerprint)
        self.scan = Scan(**scan)
        self.reader = PartReader(self.scan)
        self.scorer = Scorer(hub, Options(**options), pins, facts)

    def score(self, part: Part) -> PartResult:
        return self.scorer.score_part(part.index, self.reader.rows(part), file=self.scan.path)


def scorer_args(hub, scan: Scan, options: Options, pins: dict, facts: dict | None, threads: int) -> dict:
    """PartScorer's arguments: plain data, to be sent to another process."""
    return {"hub_args": hub_args(hub), "options": dataclasses.asdict(options), "pins": pins, "facts": facts,
            "scan": {"path": scan.path, "fmt": scan.fmt, "rows": scan.rows, "parts": [], "header": scan.header},
            "fingerprint": hub.fingerprint, "threads": threads}


_worker: PartScorer | None = None   # this worker process's scorer


def _start(kwargs: dict, parent: int) -> None:
    global _worker
    # a worker outlives a parent killed with -9 (the pool's queues stay open in its siblings); it leaves
    # when its parent is gone, and the restarted job resumes
    threading.Thread(target=exit_with, args=(parent,), daemon=True).start()
    _worker = PartScorer(**kwargs)


def _score(part: tuple) -> PartResult:
    return _worker.score(Part(*part))


def run(hub, scan: Scan, pending: list[Part], options: Options, pins: dict, facts: dict | None, workers: int,
        threads: int | None = None):
    """Yield each pending part's PartResult, in part order, scored by `workers` processes of `threads`
    torch threads each (default: this machine's cores shared out)."""
    import multiprocessing
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    kwargs = scorer_args(hub, scan, options, pins, facts, threads)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                             initargs=(kwargs, os.getpid())) as pool:
        todo, window = iter(pending), deque()
        for part in todo:
            window.append(pool.submit(_score, dataclasses.astuple(part)))
            if len(window) >= 2 * workers:
                break
        while window:
            res = window.popleft().result()
            part = next(todo, None)
            if part is not None:
                window.append(pool.submit(_score, dataclasses.astuple(part)))
            yield res
