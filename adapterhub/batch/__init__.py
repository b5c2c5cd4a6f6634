"""Scoring a whole file of users: `Hub.score_file` and `adapterhub score-file IN OUT`.

    hub.score_file("users.jsonl", "ranked/", adapter="news", k=10, skip_bad=True)

IN holds one row per user: user, history, candidates, and optionally adapter (one file may mix
scenarios), k, disliked, scenario (JSONL, CSV or Parquet; adapterhub.batch.rows). OUT is a folder of
parts (adapterhub.batch.parts) holding each row's top-k candidates with their fused and raw scores.
The job streams (memory does not grow with the file), batches many users per forward
(adapterhub.batch.scorer), and resumes after a kill: run the same call again. engine="ray" runs the
same parts on a Ray Data actor pool (adapterhub.batch.ray_engine; pip install adapterhub[ray]).
See docs/BATCH.md.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..errors import ConfigError, DataError
from .parts import OUT_FORMATS, Output
from .readers import FORMATS, PartReader, detect_format, scan

log = logging.getLogger(__name__)

# Light to import (the CLI reads these without loading torch); the scoring modules load in score_file.
PART_ROWS = 256      # input records per output part: what a kill can cost, and one Ray task
BATCH_TOKENS = 4096  # tokens per forward
GROUP_SIZE = 64      # candidates per packed group: their user's history runs once per group
ENGINES = ("local", "ray")
IN_FORMATS = tuple(sorted(set(FORMATS.values())))

__all__ = ["score_file", "PART_ROWS", "BATCH_TOKENS", "GROUP_SIZE", "ENGINES", "IN_FORMATS", "OUT_FORMATS"]


def _file_id(path) -> dict:
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _catalog(hub, catalog):
    """-> (the facts dict every row uses or None, how the job records it)."""
    catalog = hub.catalog if catalog is None else catalog
    if catalog is None:
        return None, None
    from ..catalog import as_facts
    if isinstance(catalog, (str, os.PathLike)):
        return as_facts(catalog), _file_id(catalog)
    import hashlib
    import json
    facts = as_facts(catalog)
    digest = hashlib.sha256(json.dumps(facts["items"], sort_keys=True, default=str).encode()).hexdigest()
    return facts, {"sha256": digest}


def score_file(hub, src, dst, adapter: str | None = None, *, k: int = 10, raw: bool = False,
               scenario: str | None = None, catalog=None, skip_bad: bool = False, engine: str = "local",
               in_format: str | None = None, out_format: str = "jsonl", part_rows: int = PART_ROWS,
               batch_tokens: int = BATCH_TOKENS, group_size: int = GROUP_SIZE, overwrite: bool = False,
               progress: bool = False, actors: int = 1, workers: int = 1, threads: int | None = None) -> dict:
    """Rank every row of `src` into the folder `dst`; resumable (call it again after a kill). -> a
    summary: rows, scored, bad, parts, resumed_parts, seconds, rows_per_s, out, bad_file.

    adapter: for rows without an 'adapter' field. k, raw, scenario: as in Hub.recommend (a row's
    own 'k'/'scenario' win). catalog: item facts for every row (adapterhub.catalog; default the hub's).
    skip_bad: set bad rows aside in dst/_bad_rows.jsonl instead of stopping at the first.
    part_rows: records per committed part. batch_tokens, group_size: how rows are batched
    (adapterhub.batch.scorer). engine: "local" or "ray" (actors: the Ray actor pool's size, each
    actor a Hub using `threads` torch threads; default: this process's). workers: the local engine
    on this many processes, each with its own Hub and `threads` torch threads (default: the cores
    shared out; adapterhub.batch.workers)."""
    from .scorer import Options, Scorer, bad_row_error
    if engine not in ENGINES:
        raise ConfigError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    if workers != 1 and engine != "local":
        raise ConfigError(f"workers={workers!r} is the local engine's; the Ray engine's pool is actors=")
    for name, value in (("k", k), ("part_rows", part_rows), ("batch_tokens", batch_tokens),
                        ("group_size", group_size), ("actors", actors), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r} must be an integer >= 1")
    src = Path(src)
    if not src.is_file():
        raise DataError(f"no such input file: {src}", file=str(src))
    fmt = detect_format(src, in_format)
    if adapter is not None:
        adapter_key = hub.load(adapter).key  # an unknown adapter fails here, before any work
    facts, catalog_id = _catalog(hub, catalog)
    job = {"input": {**_file_id(src), "format": fmt}, "adapter": adapter, "k": k, "raw": raw, "scenario": scenario,
           "catalog": catalog_id, "base": hub.fingerprint, "part_rows": part_rows, "out_format": out_format}
    t0 = time.perf_counter()
    with Output(dst, out_format) as out:
        manifest = out.start(job, overwrite)
        finished = out.complete()
        if finished is not None:
            out.tidy()
            log.debug("%s: this job is already complete (%s rows); nothing to do", dst, finished.get("rows"))
            return {**finished, "already_complete": True}
        pins = dict(manifest["pins"])
        if adapter is not None:
            pins.setdefault(adapter, adapter_key)
        options = Options(adapter, k, raw, scenario, group_size, batch_tokens)
        sc = scan(src, fmt, part_rows)
        done = out.done()
        pending = [p for p in sc.parts if p.index not in done]
        already = sum(p.rows for p in sc.parts if p.index in done)
        n_scored = n_bad = 0
        from tqdm.auto import tqdm
        with tqdm(total=sc.rows, initial=already, unit="row", desc="score-file", smoothing=0.1,
                  disable=None if progress else True, dynamic_ncols=True) as bar:
            ticks = _Ticks(bar)
            if engine == "local" and workers == 1:  # the bar moves with each forward; else with each part
                scorer = Scorer(hub, options, pins, facts, progress=None if bar.disable else ticks.advance)
                results = _local(scorer, sc, pending, skip_bad)
            elif engine == "local":
                from .workers import run as run_workers
                results = run_workers(hub, sc, pending, options, pins, facts, workers, threads)
            else:
                from .ray_engine import run as run_ray
                results = run_ray(hub, sc, pending, options, pins, facts, actors, threads)
            for res in results:
                if res.bad and not skip_bad:
                    first = res.bad[0]
                    raise bad_row_error(first["error"], str(src), first["line"])
                out.commit(res.index, res.records, res.bad, res.pins)
                n_scored += len(res.records)
                n_bad += len(res.bad)
                ticks.settle(already + n_scored + n_bad)
        seconds = time.perf_counter() - t0
        summary = {"rows": sc.rows, "parts": len(sc.parts), "resumed_parts": len(done),
                   "rows_this_run": n_scored + n_bad, "seconds": round(seconds, 3),
                   "rows_per_s": round((n_scored + n_bad) / seconds, 3) if seconds > 0 else None,
                   "engine": engine, "out": str(out.path)}
        return out.finish(summary)


class _Ticks:
    """Moves the bar by whole rows from fractions of a part (a part's rows finish together, at its
    last forward), and to the exact count at each committed part."""

    def __init__(self, bar):
        self.bar, self.done = bar, float(bar.n)

    def advance(self, rows: float) -> None:
        self.done += rows
        if int(self.done) > self.bar.n:
            self.bar.update(int(self.done) - self.bar.n)

    def settle(self, rows: int) -> None:
        self.done = float(rows)
        if rows != self.bar.n:
            self.bar.update(rows - self.bar.n)


def _local(scorer, sc, pending, skip_bad: bool):
    """The parts in order, each scored in this process."""
    reader = PartReader(sc)
    for part in pending:
        yield scorer.score_part(part.index, reader.rows(part), file=sc.path, stop_on_bad=not skip_bad)
