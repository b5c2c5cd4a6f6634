"""Candidate protocols: which negatives a ranking group holds when it is scored.

A ranking metric is only as good as its candidates. The loaders draw negatives from the items they
read in interaction sequences; a client ranks candidates from its whole catalog (most of them items
the train split never saw) or from a retrieval stage (popular ones). Each protocol keeps every
group's positives, history and number of negatives, and redraws the negatives (docs/DATA.md states
each rule):

    sampled  the loader's groups as they are
    catalog  negatives uniform over the source's whole item file (data.catalog), seen in train or not
    popular  negatives drawn in proportion to train popularity (items with none are never drawn)
    new      only groups whose positive has no train interaction, negatives uniform over such items:
             what an adapter does when every candidate is new

Negatives never include an item the user has interacted with anywhere in the data (history or a
positive, in any split), as the loaders' own rule. Draws are seeded per group and protocol, so a
protocol's groups are the same in every run and for every method scored on them. A redrawn group is
named "<group>@<protocol>", so the groups of several protocols can be pooled (a valid set that holds
every protocol, `mix`).
"""
from __future__ import annotations

import bisect
import itertools
from dataclasses import replace

from .baselines import popularity
from .datasets.common import Example, ScenarioData, rng_for
from .errors import ConfigError

PROTOCOLS = ("sampled", "catalog", "popular", "new")
RANKING_TASKS = ("ranking", "impression")


def check(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        from .errors import did_you_mean
        raise ConfigError(f"unknown candidate protocol {protocol!r} (valid: {', '.join(PROTOCOLS)})."
                          f"{did_you_mean(protocol, PROTOCOLS)}")
    return protocol


def with_catalog(data: ScenarioData) -> ScenarioData:
    """data whose items are the whole item file (data.catalog) plus the items it read, so that every
    item a protocol can draw has a text (and a category) to render and to score the rules on."""
    if not data.catalog or set(data.catalog) <= set(data.items):
        return data
    return replace(data, items={**data.catalog, **data.items})


def known_items(data: ScenarioData) -> dict[str, set[str]]:
    """Per user: every item they interacted with anywhere in the data (histories and positives)."""
    known: dict[str, set[str]] = {}
    for examples in data.splits.values():
        for ex in examples:
            mine = known.setdefault(ex.user, set())
            mine.update(ex.history, ex.disliked)
            if ex.label:
                mine.add(ex.candidate)
    return known


class Drawer:
    """Negatives for one protocol over one scenario's data (built once, used for many groups)."""

    def __init__(self, data: ScenarioData, protocol: str, counts: dict[str, int] | None = None):
        self.protocol = check(protocol)
        self.counts = popularity(data) if counts is None else counts
        pool = sorted(data.catalog or data.items, key=_id_order)
        if protocol == "popular":
            pool = [i for i in pool if self.counts.get(i, 0) > 0]
            self.cumulative = list(itertools.accumulate(self.counts[i] for i in pool))
        elif protocol == "new":
            pool = [i for i in pool if not self.counts.get(i, 0)]
        self.pool = pool
        self.known = known_items(data)

    def takes(self, positives: list[Example]) -> bool:
        """Whether a group with these positives belongs to the protocol ('new': new positives only)."""
        return self.protocol != "new" or not any(self.counts.get(p.candidate, 0) for p in positives)

    def draw(self, user: str, exclude: set[str], n: int, key: str, seed: int) -> list[str]:
        """n distinct negatives for `user`, none in `exclude` or the user's known items; fewer when
        the pool runs out."""
        rng = rng_for(seed, "protocol", self.protocol, key)
        banned = exclude | self.known.get(user, set())
        out: list[str] = []
        free = [i for i in self.pool if i not in banned] if len(self.pool) <= 4 * (n + len(banned)) else None
        if free is not None and self.protocol != "popular":
            return rng.sample(free, min(n, len(free)))
        seen = set(banned)
        for _ in range(50 * n + 100):   # rejection sampling: the pool is much larger than what is banned
            if len(out) == n:
                break
            if self.protocol == "popular":
                item = self.pool[bisect.bisect_right(self.cumulative, rng.random() * self.cumulative[-1])]
            else:
                item = self.pool[rng.randrange(len(self.pool))]
            if item not in seen:
                seen.add(item)
                out.append(item)
        return out


def regroup(data: ScenarioData, examples: list[Example], protocol: str, seed: int = 0,
            counts: dict[str, int] | None = None) -> list[Example]:
    """`examples` (whole ranking groups) under `protocol`: the same positives and history, the
    negatives redrawn. counts: train popularity (default: computed from data's train split)."""
    check(protocol)
    if protocol == "sampled":
        return list(examples)
    if data.task not in RANKING_TASKS:
        raise ConfigError(f"candidate protocols redraw a ranking group's negatives; scenario '{data.scenario}' "
                          f"is {data.task} (use --protocol sampled: its metrics include per-user AUC)")
    drawer = Drawer(data, protocol, counts)
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.group or ex.user, []).append(ex)
    out: list[Example] = []
    for name, members in groups.items():
        positives = [ex for ex in members if ex.label]
        n_neg = len(members) - len(positives)
        if not positives or not n_neg or not drawer.takes(positives):
            continue
        first = positives[0]
        negatives = drawer.draw(first.user, {ex.candidate for ex in members if ex.label}, n_neg, name, seed)
        if not negatives:
            continue
        group = f"{name}@{protocol}"
        out += [replace(p, group=group) for p in positives]
        out += [Example(first.user, first.history, item, 0, first.disliked, group) for item in negatives]
    return out


def mix(data: ScenarioData, examples: list[Example], protocols, seed: int = 0) -> list[Example]:
    """The groups of every protocol in `protocols`, pooled (a valid set that holds each of them)."""
    counts = popularity(data)
    return [ex for p in protocols for ex in regroup(data, examples, p, seed, counts)]


def _id_order(item_id: str):
    """Numeric ids in numeric order, others after them in text order: a stable pool order."""
    return (0, int(item_id), "") if item_id.isdigit() else (1, 0, item_id)
