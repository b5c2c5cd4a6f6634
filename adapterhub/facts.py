"""Scenario facts: per-item popularity, like-rate and category/tags from a TRAIN split, stored as
JSON with each adapter version, rendered next to item texts in prompts (adapterhub.prompts) and
turned into the no-learning rules' features for the fused score (adapterhub.fused).

A facts dict (short keys keep the file small; absent keys mean "none"/0):

    {"format": 1, "scenario": "video", "source": "movielens-100k+tallrec", "n_users": 79,
     "global_like_rate": 0.55,                       # video only: the like-rate of an unknown movie
     "items": {"1": {"t": "Toy Story (1995)",         # the item's text (lookup by title)
                     "p": 52,                         # popularity: distinct train users with a positive
                     "b": 10,                         # bucket: in the top b% most popular (1/5/10/25/50)
                     "r": 0.82,                       # like-rate (video)
                     "c": "Animation|Comedy",         # category / genres / brand
                     "s": "football_nfl",             # news subcategory
                     "g": ["rock", "indie"]}}}        # music: the artist's top tags

Only the train split and data.extra (which the loaders build from train data only) are read;
category, subcategory and tags are catalog metadata, known for every item. An item missing from
the facts (a new item) gets the neutral values the rules give an unseen item: popularity 0, the
global like-rate, no category match.
"""
from __future__ import annotations

import bisect
import json
import math
import re
from collections import Counter
from pathlib import Path

from . import baselines
from .datasets.common import ScenarioData
from .errors import DataError
from .files import atomic_write

FACTS_FILE = "facts.json"
# 1: the items the loader read; an item without train interactions showed as "unpopular".
# 2: every item of the source's catalog too, and an item without train interactions shows as a
#    new item (prompts.NEW_ITEM), with its feature is_new; a version keeps the format it was
#    trained with (its card's facts.format, 1 when absent), so old versions see what they saw.
FORMAT = 2
BUCKETS = (1, 5, 10, 25, 50)   # "top b% popular"; items below the top half get no bucket

# Features of one (user, candidate) for the fused score: log1p popularity (most-popular) and the
# scenario rule's score as baselines.py computes it. The rules' parts as extra features (video's
# like_rate, news' subcategory_overlap) were dropped: fit on a few hundred valid rows, they
# reweighted the rule in ways that did not hold on test (video@v2: fused 0.760 < rule 0.785).
# A card's fused model names its own features, so older versions keep working.
# is_new (no train interaction) joined them in facts format 2: under a catalog's candidates most
# negatives are new, and a blend on log1p popularity alone cannot tell "new" from "rare".
FEATURE_NAMES: dict[str, tuple[str, ...]] = {
    "video": ("log1p_popularity", "like_share_plus_rate", "is_new"),
    "news": ("log1p_popularity", "category_overlap", "is_new"),
    "ecommerce": ("log1p_popularity", "brand_overlap", "is_new"),
    "music": ("log1p_popularity", "tag_overlap", "is_new"),
    "generic": ("log1p_popularity", "category_overlap", "is_new"),
}
RULES = {"video": "like-share+rate", "news": "category-overlap", "ecommerce": "brand-overlap",
         "music": "tag-overlap", "generic": "category-overlap"}   # the baselines.BASELINES names


def feature_names(scenario: str) -> tuple[str, ...]:
    """FEATURE_NAMES of a scenario; a custom scenario gets the generic (category) ones."""
    return FEATURE_NAMES.get(scenario, FEATURE_NAMES["generic"])


def is_new_format(facts: dict | None) -> bool:
    """Whether these facts show an item without train interactions as new (format >= 2)."""
    return bool(facts) and facts.get("format", 1) >= 2


def compute(data: ScenarioData, fmt: int = FORMAT) -> dict:
    """Per-item facts of `data` from its train split (+ data.extra); JSON-serialisable. fmt: the
    facts format (FORMAT; a version trained with an older one rebuilds its facts in that one)."""
    counts = baselines.popularity(data)
    source = {**data.catalog, **data.items} if fmt >= 2 and data.catalog else data.items
    ranked = sorted(counts.get(i, 0) for i in data.items)   # ascending (buckets: over the items read)
    rates = data.extra.get("like_rate", {})
    subs = data.extra.get("subcategory", {})
    tags = data.extra.get("tags", {})
    items = {}
    for item_id, item in source.items():
        entry: dict = {"t": item.text}
        pop = counts.get(item_id, 0)
        if pop:
            entry["p"] = pop
            b = bucket(ranked, pop)
            if b is not None:
                entry["b"] = b
        if item_id in rates:
            entry["r"] = rates[item_id]
        if item.category:
            entry["c"] = item.category
        if subs.get(item_id):
            entry["s"] = subs[item_id]
        if tags.get(item_id):
            entry["g"] = list(tags[item_id])
        items[item_id] = entry
    facts = {"format": fmt, "scenario": data.scenario, "source": data.source,
             "n_users": len({ex.user for ex in data.splits["train"]})}
    if "global_like_rate" in data.extra:
        facts["global_like_rate"] = data.extra["global_like_rate"]
    facts["items"] = items
    return facts


def bucket(ranked: list[int], pop: int) -> int | None:
    """The "top b%" bucket of popularity `pop` among all items' popularities (`ranked`, ascending)."""
    above = len(ranked) - bisect.bisect_right(ranked, pop)   # items strictly more popular
    return next((b for b in BUCKETS if above < b * len(ranked) / 100), None)


class OwnLabelOut:
    """A train example's candidate as the facts would show it without that example's own label.

    Popularity counts the train users with a positive, so a train positive's click counts towards
    its own item. Where that click is the only sign that its user knows the item (news: 2,638 of
    2,640 train positives; video 1%), the item shows as more popular than it would to a test user,
    whose click is not in the facts: without this, no news train positive was ever "unpopular",
    while 7% of the test positives are. A negative, or a positive its user also has elsewhere in
    train (in a history), keeps its popularity.

    like_counts ({item: [liked, rated]}, video's data.extra["like_count"]): the like-rate counts
    every train user's rating, the row's own among them, so it is shown without it, as a test
    user's movie is. Left in, it made the like-rate look more telling on train rows than on test
    (video, more_users: train AUC 0.734 with the own rating, 0.709 without; test 0.721), most of
    all for movies with few ratings."""

    def __init__(self, facts: dict, train, like_counts: dict | None = None):
        self.items = facts["items"]
        self.like_counts = like_counts or {}
        self.ranked = sorted(e.get("p", 0) for e in self.items.values())
        self.support: Counter = Counter()   # (user, item) -> train examples that show the pair
        for ex in train:
            self.support.update((ex.user, i) for i in set(ex.history))
            if ex.label == 1:
                self.support[ex.user, ex.candidate] += 1

    def candidate(self, ex) -> dict | None:
        """ex's candidate's facts entry without ex's own label (None: an item the facts lack)."""
        entry = self.items.get(ex.candidate)
        if entry is None:
            return None
        out = entry
        if ex.label == 1 and entry.get("p") and self.support[ex.user, ex.candidate] == 1:
            out = {k: v for k, v in entry.items() if k not in ("p", "b")}
            if entry["p"] > 1:
                out["p"] = entry["p"] - 1
                b = bucket(self.ranked, out["p"])
                if b is not None:
                    out["b"] = b
        if ex.candidate in self.like_counts and "r" in entry:
            liked, rated = self.like_counts[ex.candidate]
            out = {k: v for k, v in out.items() if k != "r"}   # its own rating was the only one: no like-rate
            if rated > 1:
                out["r"] = (liked - ex.label) / (rated - 1)
        return out


# ------------------------------------------------------------------ files
def dumps(facts: dict) -> bytes:
    """The facts file's bytes: compact JSON, without the in-memory lookup index."""
    body = {k: v for k, v in facts.items() if not k.startswith("_")}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def save(facts: dict, path) -> Path:
    """Write facts as plain compact JSON (the in-memory lookup index is left out) -> the path."""
    path = Path(path)
    if path.is_dir():
        path = path / FACTS_FILE
    return atomic_write(path, dumps(facts))


def load(path) -> dict:
    """Read a facts file (or the FACTS_FILE in a version folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / FACTS_FILE
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("no facts file here; facts are written with the adapter version "
                        "(adapterhub.facts.save(facts.compute(data), folder))", file=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"the facts file is not valid JSON ({e})", file=str(path)) from None
    if not isinstance(facts, dict) or not isinstance(facts.get("items"), dict):
        raise DataError("the facts file has no 'items' object", file=str(path))
    if facts.get("format", FORMAT) > FORMAT:
        raise DataError(f"facts format {facts['format']} is newer than this adapterhub reads ({FORMAT}); "
                        "upgrade adapterhub", file=str(path))
    return facts


# ------------------------------------------------------------------ lookup
def normalise(text: str) -> str:
    """Case- and whitespace-insensitive form of an item text."""
    return " ".join(str(text).casefold().split())


_TRAILING = re.compile(r"\s*\([^()]*\)\s*$")   # "Heat (1995)" -> "Heat"; "Muse (tags: rock)" -> "Muse"


def _index(facts: dict) -> dict[str, str]:
    """text -> id: exact texts, then their normalised forms, then those without a trailing "(...)".
    Built once and kept in the dict under "_by_text" (save() leaves it out). The first item wins."""
    index = facts.get("_by_text")
    if index is None:
        index = {}
        items = facts["items"]
        for item_id, entry in items.items():
            index.setdefault(entry.get("t", ""), item_id)
        for item_id, entry in items.items():
            index.setdefault("\0" + normalise(entry.get("t", "")), item_id)
        for item_id, entry in items.items():
            short = _TRAILING.sub("", entry.get("t", ""))
            if short:
                index.setdefault("\0" + normalise(short), item_id)
        facts["_by_text"] = index
    return index


def lookup(facts: dict | None, ref) -> str | None:
    """The item id that `ref` names: a dataset id, an exact item text, or the text up to case and
    whitespace (or without a trailing "(1995)" / "(tags: ...)"); None when unknown, never an error."""
    if not facts or ref is None:
        return None
    ref = str(ref)
    if ref in facts["items"]:
        return ref
    index = _index(facts)
    return index.get(ref) or index.get("\0" + normalise(ref))


def item(facts: dict | None, ref) -> dict | None:
    """The facts entry of an item (see the module docstring), or None when unknown."""
    item_id = lookup(facts, ref)
    return None if item_id is None else facts["items"][item_id]


# ------------------------------------------------------------------ rules and features
def _entries(facts: dict | None, refs) -> list[dict]:
    """The facts entry of each ref ({} for an unknown item)."""
    items = facts["items"] if facts else {}
    return [items.get(lookup(facts, r)) or {} for r in refs]


def overlap_counts(facts: dict | None, history, candidate) -> dict[str, int]:
    """How many history items share the candidate's category, subcategory, one of its tags, or
    one of its genres (a '|'-separated category) -> {"category", "subcategory", "tags", "genres"}."""
    hist = _entries(facts, history)
    cand = _entries(facts, [candidate])[0]
    cat, sub, tags = cand.get("c", ""), cand.get("s", ""), set(cand.get("g", ()))
    genres = set(cat.split("|")) - {""}
    return {"category": sum(1 for h in hist if cat and h.get("c") == cat),
            "subcategory": sum(1 for h in hist if sub and h.get("s") == sub),
            "tags": sum(1 for h in hist if tags & set(h.get("g", ()))),
            "genres": sum(1 for h in hist if genres & set(h.get("c", "").split("|")))}


def _pieces(facts: dict | None, history, disliked, candidate, candidate_entry=None) -> dict[str, float]:
    """The rules' inputs for one candidate, computed by baselines.py's own arithmetic; an unknown
    item takes the value the rules give an unseen one (popularity 0, the global like-rate, no match).
    candidate_entry: the candidate's entry to use instead of the facts' own (OwnLabelOut)."""
    hist = _entries(facts, history)
    cand = candidate_entry if candidate_entry is not None else _entries(facts, [candidate])[0]
    cat, sub = cand.get("c", ""), cand.get("s", "")
    return {"popularity": float(cand.get("p", 0)),
            "like_share": baselines.like_share(len(history), len(disliked)),
            "like_rate": cand.get("r", (facts or {}).get("global_like_rate", 0.5)),
            "category": baselines.overlap(cat, sub, [h.get("c", "") for h in hist], [h.get("s", "") for h in hist]),
            "subcategory": float(sum(1 for h in hist if sub and h.get("s") == sub)),
            "tags": baselines.tag_count(cand.get("g", ()), [h.get("g", ()) for h in hist])}


def rule_scores(facts: dict | None, scenario: str, history, disliked, candidate) -> dict[str, float]:
    """{baseline name: score} for one candidate, equal to baselines.py's scores without their tie
    jitter. history / disliked / candidate: item ids (texts also work: they go through lookup)."""
    p = _pieces(facts, history, disliked, candidate)
    rule = RULES.get(scenario, RULES["generic"])
    value = {"like-share+rate": p["like_share"] + p["like_rate"], "tag-overlap": p["tags"]}.get(rule, p["category"])
    return {"most-popular": p["popularity"], rule: value}


def features(facts: dict | None, scenario: str, history_ids, disliked_ids, candidate_id,
             names=None, candidate_entry=None) -> list[float]:
    """The rules' inputs for one candidate, in the order of `names` (default feature_names(scenario);
    a stored fused model passes the names it was fit with). candidate_entry: as in _pieces."""
    p = _pieces(facts, history_ids, disliked_ids, candidate_id, candidate_entry)
    values = {"log1p_popularity": math.log1p(p["popularity"]), "is_new": float(p["popularity"] == 0),
              "like_share_plus_rate": p["like_share"] + p["like_rate"], "like_rate": p["like_rate"],
              "category_overlap": p["category"], "subcategory_overlap": p["subcategory"],
              "brand_overlap": p["category"], "tag_overlap": p["tags"]}
    return [values[name] for name in (names or feature_names(scenario))]


def feature_matrix(facts: dict | None, scenario: str, examples, names=None) -> list[list[float]]:
    """features() of each Example (its full history and dislikes, as the rules use them)."""
    return [features(facts, scenario, ex.history, ex.disliked, ex.candidate, names) for ex in examples]
