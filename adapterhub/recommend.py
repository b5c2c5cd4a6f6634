"""Ranking for one user with one adapter: the prompt it sees, its raw score, and the fused score.

An adapter version trained with facts carries them in its folder (facts.json) and a
fused blend in its card. `rank` then renders the user's items with their facts, scores every
candidate over the one shared history prefix, and ranks by the fused score (the adapter's
Yes-No logit blended with the no-learning rules' features), or by the raw P(yes) with raw=True.
Items are given by title or by dataset id; an unknown one is rendered as a new item.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field

from . import facts as facts_mod
from .errors import ConfigError
from . import prompts
from .fused import apply, sigmoid
from .catalog import entry, item_id, with_items
from .scoring import yes_no_logit

log = logging.getLogger(__name__)
_FACTS: dict[tuple[str, str], dict | None] = {}
_LOCK = threading.Lock()


def facts_of(registry, key: str, scenario: str | None = None) -> dict | None:
    """The facts version `key` ('name@vN') was trained with (None for versions without), read once.
    A jointly trained version has one file per scenario (facts.<scenario>.json): name the scenario."""
    if "+" in key:  # a load-time composition (adapterhub.compose) has no facts of its own
        return None
    cache_key = (str(registry.root), key, scenario)
    if cache_key in _FACTS:  # read before: no wait behind another version's read (a server's event loop)
        return _FACTS[cache_key]
    with _LOCK:
        if cache_key not in _FACTS:
            name = f"facts.{scenario}.json" if scenario else facts_mod.FACTS_FILE
            data = registry.read_file(key, name, missing_ok=True)
            if data is None and name in (registry.card(key).get("files") or {}):
                # the shipped adapters' facts hold dataset text, so they are not in the repository
                log.warning("%s: its %s is not here (facts are data, not committed); scoring without facts, "
                            "which it was not trained for. Rebuild it with: adapterhub facts %s", key, name, key)
            _FACTS[cache_key] = None if data is None else json.loads(data)
        return _FACTS[cache_key]


def render(scenario: str, facts: dict | None, history, candidates, disliked=()) -> tuple[str, list[str]]:
    """-> (prefix, [suffix per candidate]): exactly what the model reads."""
    history, disliked = list(history), list(disliked)
    return (prompts.render_history(scenario, history, disliked, facts=facts),
            list(render_suffixes(scenario, facts, history, candidates)))


def render_suffixes(scenario: str, facts: dict | None, history: list, candidates):
    """Each candidate's suffix, one at a time: a caller counting tokens against a budget stops
    rendering where it stops counting."""
    for c in candidates:
        yield (prompts.render_candidate(scenario, c) if facts is None
               else prompts.render_candidate(scenario, c, facts=facts, history=history))


@dataclass
class Plan:
    """One user's ranking, ready to score: what the model reads and what the fused blend needs."""
    key: str                     # the resident adapter key
    scenario: str
    candidates: list             # as the caller gave them (texts, ids or item dicts)
    prefix: str                  # the history, rendered once for every candidate
    suffixes: list[str] | None   # one per candidate (None: not rendered yet, plan(suffixes=False))
    facts: dict | None           # the item facts in use (a catalog's or the version's own), or None
    fused: dict | None           # the fused blend of this scenario, or None
    history: list = field(default_factory=list)    # item ids or texts (a dict item: its id)
    disliked: list = field(default_factory=list)
    refs: list = field(default_factory=list)       # the candidates as ids or texts


def plan(hub, key: str, card: dict, history, candidates, disliked=(), scenario: str | None = None,
         catalog=None, suffixes: bool = True) -> Plan:
    """Render one user's ranking (no model run): the prompts, the facts and the blend it will use.
    Items are texts, dataset ids, or dicts (adapterhub.catalog.FIELDS) whose facts this call uses.
    Raises ConfigError for a scenario the adapter was not trained on, DataError for a bad item.
    suffixes=False: the plan's suffixes are None, for the caller to render (render_suffixes)."""
    joint = card.get("scenarios") or {}  # a jointly trained adapter: each scenario's facts and blend
    own = card.get("scenario", key.split("@")[0])
    if joint and scenario not in joint:
        raise ConfigError(f"{key} was trained on several scenarios: pass scenario= one of {', '.join(joint)}"
                          + (f" (got {scenario!r})" if scenario is not None else ""))
    if not joint and scenario is not None and scenario != own:
        raise ConfigError(f"{key} was trained for scenario {own!r}, not {scenario!r}: leave scenario out or pass "
                          f"scenario={own!r}")
    scenario = scenario or own
    part = joint.get(scenario) or card
    history, disliked, candidates = list(history), list(disliked), list(candidates)
    facts = None
    if part.get("facts"):   # trained with facts: render them (a catalog's, else its own snapshot)
        facts = facts_of(hub.registry, key, scenario if joint else None) if catalog is None else catalog_facts(catalog)
        facts, _ = with_items(facts, history + disliked + candidates, scenario)
        if facts is not None and facts.get("format", 1) != part["facts"].get("format", 1):
            facts = {**facts, "format": part["facts"].get("format", 1)}   # show items as it was trained to see them
    ref = _ref_of if facts is not None else _text_of
    history, disliked, refs = ([ref(r, n) for n, r in enumerate(items)] for items in (history, disliked, candidates))
    prefix = prompts.render_history(scenario, history, disliked, facts=facts)
    texts = list(render_suffixes(scenario, facts, history, refs)) if suffixes else None
    return Plan(key, scenario, candidates, prefix, texts, facts, part.get("fused"), history, disliked, refs)


def _ref_of(item, n: int):
    return item_id(item, n) if isinstance(item, dict) else item


def _text_of(item, n: int):
    """Without facts an item is its text (a dict item: its 'text')."""
    if isinstance(item, dict):
        return entry(item, n)["t"]
    return item


def finish(p: Plan, probs: list[float], raw: bool = False) -> list[tuple[object, float, float]]:
    """-> [(candidate, fused score, raw P(yes))] in candidate order. The fused score is the raw
    P(yes) when raw is set, or when there are no facts or no blend."""
    if p.facts is None or not p.fused or raw:
        return [(c, pr, pr) for c, pr in zip(p.candidates, probs)]
    ids = lambda refs: [facts_mod.lookup(p.facts, r) or str(r) for r in refs]  # noqa: E731
    hist, dis = ids(p.history), ids(p.disliked)
    names = p.fused["features"][1:]  # the features it was fit with (the first is the LLM's logit)
    X = [[yes_no_logit(pr)] + facts_mod.features(p.facts, p.scenario, hist, dis, facts_mod.lookup(p.facts, c) or str(c),
                                                 names) for pr, c in zip(probs, p.refs)]
    return [(c, sigmoid(z), pr) for c, z, pr in zip(p.candidates, apply(p.fused, X), probs)]


def catalog_facts(catalog) -> dict:
    """A caller's catalog as a facts dict (adapterhub.catalog)."""
    from .catalog import as_facts
    return as_facts(catalog)


def rank(hub, key: str, card: dict, history, candidates, k: int = 10, disliked=(), scenario: str | None = None,
         raw: bool = False, catalog=None) -> list[tuple[str, float]]:
    """Top-k (candidate, score): the fused probability, or P(yes) when raw or when the version has
    no fused blend."""
    p = plan(hub, key, card, history, candidates, disliked, scenario, catalog)
    probs = hub.score_candidates(key, p.prefix, p.suffixes)
    return [(c, f) for c, f, _ in sorted(finish(p, probs, raw), key=lambda r: -r[1])[:k]]
