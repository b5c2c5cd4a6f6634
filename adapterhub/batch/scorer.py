"""Scoring one part of a batch job: many users' rankings in few forwards.

Each row is planned as `Hub.recommend` plans it (adapterhub.ranking.plan: the same prompts, facts,
fused blend, token ids and checks), and its candidates become packed groups (its history prefix
once, up to group_size candidates after it). The groups of one adapter fill forwards up to a token budget and
run as one packed row through `Hub.packed_logits` (no padding); what is left of each adapter, less
than a forward's worth, runs together as one mixed batch (a padded row per group, each with its own
adapter). Then `recommend.finish` gives each candidate's fused and raw score, as `recommend` does.

A row's scores depend only on its own prompts, up to the float rounding of the shapes it runs in
(the hub's mixed-batch tolerance); the same part scored by the same code with the same options
runs the same forwards, so the local and the Ray engine give identical results.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import compose, ranking, recommend
from ..errors import AdapterNotFoundError, ConfigError, DataError, IncompatibleAdapterError, RegistryError
from ..registry import parse_ref
from . import BATCH_TOKENS, GROUP_SIZE
from .rows import Request, check

ROW_ERRORS = (DataError, ConfigError, AdapterNotFoundError, IncompatibleAdapterError)


@dataclass(frozen=True)
class Options:
    """What a row's answer depends on (besides the hub and the adapter versions), and the batching."""
    adapter: str | None = None   # the adapter of rows without an 'adapter' field
    k: int = 10                  # ranked candidates kept per row (a row's own 'k' wins)
    raw: bool = False            # rank by the adapter's P(yes), not the fused score
    scenario: str | None = None  # for a jointly trained adapter: the scenario of rows without one
    group_size: int = GROUP_SIZE
    batch_tokens: int = BATCH_TOKENS


@dataclass
class PartResult:
    index: int
    records: list[dict] = field(default_factory=list)   # one per good row, in file order
    bad: list[dict] = field(default_factory=list)       # {"line", "error", "row"} per bad row
    pins: dict = field(default_factory=dict)            # adapter ref -> the version key it ran as


class Scorer:
    """Scores parts of a job with one hub. `pins` maps each adapter reference the job has met to the
    version it resolved to, so that a resumed job keeps scoring 'news' with the version it began with."""

    def __init__(self, hub, options: Options, pins: dict | None = None, catalog=None, progress=None):
        self.hub, self.options = hub, options
        self.pins = dict(pins or {})
        self.catalog = catalog  # a facts dict (a catalog file is read once, by the caller), or None
        self.progress = progress  # called with rows (a fraction of a part's) as forwards finish, or None

    def resolve(self, ref: str) -> str:
        """An adapter reference -> its pinned version key."""
        key = self.pins.get(ref)
        if key is None:
            key = self.pins[ref] = self.hub.load(ref).key
        return key

    def plan_row(self, row) -> tuple[Request, ranking.Ranking]:
        if row.error is not None:
            raise DataError(row.error)
        req = check(row.index, row.line, row.data)
        ref = req.adapter or self.options.adapter
        if ref is None:
            raise DataError("no adapter: the row has no 'adapter' and none was given for the file (--adapter)",
                            field="adapter")
        if ref not in self.pins and not compose.is_composition(ref):
            try:
                parse_ref(ref)  # a malformed reference ('../x') is the row's problem; a corrupt registry is not
            except RegistryError as e:
                raise DataError(str(e), field="adapter") from None
        return req, ranking.plan(self.hub, self.resolve(ref), req.history, req.candidates, req.disliked,
                                 req.scenario or self.options.scenario, self.catalog)

    def score_part(self, index: int, rows, file: str = "", stop_on_bad: bool = False) -> PartResult:
        """rows: the part's readers.Row, in file order -> PartResult. stop_on_bad: raise the first bad
        row's DataError (naming file and line) instead of setting it aside."""
        out = PartResult(index)
        planned = []
        for row in rows:
            try:
                planned.append(self.plan_row(row))
            except ROW_ERRORS as e:
                if stop_on_bad:
                    raise bad_row_error(str(e), file, row.line) from None
                out.bad.append({"line": row.line, "error": str(e),
                                "row": row.data if row.data is not None else row.text})
        plans = [r for _, r in planned]
        tick = None
        if self.progress is not None:
            self.progress(len(out.bad))
            per_candidate = len(plans) / max(1, sum(len(r.plan.candidates) for r in plans))
            tick = lambda n_candidates: self.progress(n_candidates * per_candidate)  # noqa: E731
        probs = self.run(plans, tick)
        for (req, r), pr in zip(planned, probs):
            ranked = sorted(recommend.finish(r.plan, pr, self.options.raw), key=lambda x: -x[1])
            out.records.append({"line": req.line, "user": req.user, "adapter": r.plan.key,
                                "ranked": [{"item": c, "score": s, "raw": r}
                                           for c, s, r in ranked[:req.k or self.options.k]]})
        out.pins = dict(self.pins)
        return out

    @torch.inference_mode()
    def run(self, plans: list[ranking.Ranking], tick=None) -> list[list[float]]:
        """P(yes) of every candidate of every planned ranking -> one list per ranking. tick: called with
        the number of candidates of each forward as it finishes."""
        hub, gs, budget = self.hub, self.options.group_size, self.options.batch_tokens
        by_key = {}  # adapter key -> its units: one packed group each (plan, first candidate, prefix, suffixes, tokens)
        for i, r in enumerate(plans):
            prefix, suffixes = r.groups[0][0], [s for _, sufs in r.groups for s in sufs]  # regrouped by group_size
            for j in range(0, len(suffixes), gs):
                sufs = suffixes[j:j + gs]
                by_key.setdefault(r.plan.key, []).append((i, j, prefix, sufs, len(prefix) + sum(map(len, sufs))))
        batches, rest = [], []
        for key, us in by_key.items():
            full, tail = _fill(sorted(us, key=lambda u: u[4]), budget)
            batches += [(key, b) for b in full]
            rest += [(key, u) for u in tail]
        if len({k for k, _ in rest}) == 1:  # one adapter's tail: its own forward, no padding
            batches.append((rest[0][0], [u for _, u in rest]))
        elif rest:  # the tails of several adapters: mixed batches, a row per group
            rest.sort(key=lambda ku: ku[1][4])
            full, tail = _fill(rest, budget, size=lambda ku: ku[1][4])
            batches += [([k for k, _ in b], [u for _, u in b]) for b in full + ([tail] if tail else [])]
        probs = [[0.0] * len(r.plan.candidates) for r in plans]
        for keys, us in batches:
            logits = hub.packed_logits(keys, [(u[2], u[3]) for u in us])
            at = 0
            values = torch.sigmoid(logits).tolist()
            for i, j, _, sufs, _ in us:
                probs[i][j:j + len(sufs)] = values[at:at + len(sufs)]
                at += len(sufs)
            if tick is not None:
                tick(len(values))
        return probs


def _fill(items, budget: int, size=lambda u: u[4]):
    """Cut items (in order) into batches of about `budget` tokens -> (full batches, the last partial one)."""
    full, cur, tokens = [], [], 0
    for it in items:
        cur.append(it)
        tokens += size(it)
        if tokens >= budget:
            full.append(cur)
            cur, tokens = [], 0
    return full, cur


def bad_row_error(message: str, file: str, line: int) -> DataError:
    """A row's problem as the job's error: file, line, what is wrong, and how to go on past such rows."""
    return DataError(f"{message}. Fix the row, or pass --skip-bad (skip_bad=True) to write such rows to "
                     "OUT/_bad_rows.jsonl and score the rest", file=file, line=line)
