"""No-learning baselines: random, most-popular and the known-strong heuristics per scenario.

Each takes (data, examples, seed) and returns one score per example. Only the TRAIN split (and
each example's own history and candidate) is used, so nothing from valid/test leaks. Count-valued
scores get a seeded jitter below 1e-3 so their ties are broken at random rather than by the
pessimistic tie rule of `metrics`.
"""
from __future__ import annotations

import random
from typing import Callable

from .datasets.common import Example, ScenarioData

JITTER = 1e-3


def _jitter(scores: list[float], seed: int, name: str) -> list[float]:
    rng = random.Random(f"{seed}:{name}")
    return [s + JITTER * rng.random() for s in scores]


# The rules' arithmetic, shared with adapterhub.facts (which computes the same values from a
# version's stored facts): write each rule once.
def like_share(n_liked: int, n_disliked: int) -> float:
    """Share of liked items among the rated ones; 0.5 when nothing is rated."""
    seen = n_liked + n_disliked
    return n_liked / seen if seen else 0.5


def overlap(category: str, subcategory: str, history_categories, history_subcategories) -> float:
    """#history items with the candidate's category + 0.5 x #with its subcategory ("" never matches)."""
    score = sum(1.0 for c in history_categories if category and c == category)
    return score + sum(0.5 for s in history_subcategories if subcategory and s == subcategory)


def tag_count(tags, history_tags) -> float:
    """#history items sharing at least one of the candidate's tags (history_tags: one list per item)."""
    mine = set(tags)
    return float(sum(1 for t in history_tags if mine & set(t)))


def random_scores(data: ScenarioData, examples: list[Example], seed: int = 0) -> list[float]:
    rng = random.Random(f"{seed}:random")
    return [rng.random() for _ in examples]


def popularity(data: ScenarioData) -> dict[str, int]:
    """Per item: distinct train users with a positive interaction (in a history or a positive target)."""
    pairs = set()
    for ex in data.splits["train"]:
        pairs.update((ex.user, i) for i in ex.history)
        if ex.label == 1:
            pairs.add((ex.user, ex.candidate))
    counts: dict[str, int] = {}
    for _, item in pairs:
        counts[item] = counts.get(item, 0) + 1
    return counts


def most_popular(data: ScenarioData, examples: list[Example], seed: int = 0) -> list[float]:
    counts = popularity(data)
    return _jitter([float(counts.get(ex.candidate, 0)) for ex in examples], seed, "most-popular")


def like_share_plus_rate(data: ScenarioData, examples: list[Example], seed: int = 0) -> list[float]:
    """video: share of liked movies in the history + the candidate's like-rate (from u.data
    without the valid/test users). In [0, 2], so not a probability."""
    rates, fallback = data.extra.get("like_rate", {}), data.extra.get("global_like_rate", 0.5)
    return [like_share(len(ex.history), len(ex.disliked)) + rates.get(ex.candidate, fallback) for ex in examples]


def category_overlap(data: ScenarioData, examples: list[Example], seed: int = 0) -> list[float]:
    """#history items sharing the candidate's category + 0.5 x #sharing its subcategory (MIND);
    elsewhere just the category count (Amazon: the brand; unknown categories never match)."""
    sub, items = data.extra.get("subcategory", {}), data.items
    out = [overlap(items[ex.candidate].category, sub.get(ex.candidate, ""),
                   [items[h].category for h in ex.history], [sub.get(h, "") for h in ex.history])
           for ex in examples]
    return _jitter(out, seed, "category-overlap")


def tag_overlap(data: ScenarioData, examples: list[Example], seed: int = 0) -> list[float]:
    """music: #history artists sharing at least one of the candidate's top-3 tags."""
    tags = data.extra.get("tags", {})
    out = [tag_count(tags.get(ex.candidate, ()), [tags.get(h, ()) for h in ex.history]) for ex in examples]
    return _jitter(out, seed, "tag-overlap")


Baseline = Callable[[ScenarioData, list[Example], int], list[float]]
_COMMON: dict[str, Baseline] = {"random": random_scores, "most-popular": most_popular}
BASELINES: dict[str, dict[str, Baseline]] = {
    "video": {**_COMMON, "like-share+rate": like_share_plus_rate},
    "ecommerce": {**_COMMON, "brand-overlap": category_overlap},
    "news": {**_COMMON, "category-overlap": category_overlap},
    "music": {**_COMMON, "tag-overlap": tag_overlap},
}


def for_scenario(data: ScenarioData) -> dict[str, Baseline]:
    """The baselines for a scenario; user scenarios get category-overlap when items have categories."""
    if data.scenario in BASELINES:
        return BASELINES[data.scenario]
    has_categories = any(item.category for item in data.items.values())
    return {**_COMMON, **({"category-overlap": category_overlap} if has_categories else {})}
