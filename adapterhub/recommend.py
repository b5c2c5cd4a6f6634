"""Ranking for one user with one adapter: the prompt it sees, its raw score, and the fused score.

An adapter version trained with facts (issue 12) carries them in its folder (facts.json) and a
fused blend in its card. `rank` then renders the user's items with their facts, scores every
candidate over the one shared history prefix, and ranks by the fused score (the adapter's
Yes-No logit blended with the no-learning rules' features), or by the raw P(yes) with raw=True.
Items are given by title or by dataset id; an unknown one is rendered as a new item.
"""
from __future__ import annotations

import json
import logging
import threading

from . import facts as facts_mod
from .errors import ConfigError
from . import prompts
from .fused import apply, sigmoid
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
    if facts is None:
        return (prompts.render_history(scenario, history, disliked),
                [prompts.render_candidate(scenario, c) for c in candidates])
    return (prompts.render_history(scenario, history, disliked, facts=facts),
            [prompts.render_candidate(scenario, c, facts=facts, history=history) for c in candidates])


def rank(hub, key: str, card: dict, history, candidates, k: int = 10, disliked=(), scenario: str | None = None,
         raw: bool = False, catalog=None) -> list[tuple[str, float]]:
    """Top-k (candidate, score): the fused probability, or P(yes) when raw or when the version has
    no fused blend."""
    joint = card.get("scenarios") or {}  # a jointly trained adapter: each scenario's facts and blend
    if joint and scenario not in joint:
        raise ConfigError(f"{key} was trained on several scenarios ({', '.join(joint)}): pass scenario= one of them")
    scenario = scenario or card.get("scenario", key.split("@")[0])
    facts = facts_of(hub.registry, key, scenario if joint else None)
    prefix, suffixes = render(scenario, facts, history, candidates, disliked)
    probs = hub.score_candidates(key, prefix, suffixes)
    fused = (joint.get(scenario) or card).get("fused")
    if facts is not None and fused and not raw:
        ids = lambda refs: [facts_mod.lookup(facts, r) or str(r) for r in refs]  # noqa: E731
        hist, dis = ids(history), ids(disliked)
        names = fused["features"][1:]  # the features it was fit with (the first is the LLM's logit)
        X = [[yes_no_logit(p)] + facts_mod.features(facts, scenario, hist, dis, facts_mod.lookup(facts, c) or str(c),
                                                    names) for p, c in zip(probs, candidates)]
        probs = [sigmoid(z) for z in apply(fused, X)]
    return sorted(zip(candidates, probs), key=lambda cs: -cs[1])[:k]
