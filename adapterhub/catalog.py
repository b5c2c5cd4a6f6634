"""A caller's item catalog: the item facts (popularity, category, like-rate, tags) that recommend
renders in prompts and blends into the fused score, instead of the snapshot of its training data
that an adapter version carries (adapterhub.facts).

A catalog is a facts dict (the same format and file as a version's facts.json). Build one
- from your own interaction data, in any format the loaders read: `build(data)`, or on the command
  line `adapterhub catalog build OUT --format jsonl --data PATH` (every split you pass counts as
  interactions: a production catalog has no held-out part);
- from items given as dicts: `from_items([{"id": "42", "text": "Heat (1995)", "category": "Action",
  "popularity": 120, "like_rate": 0.71, "tags": [...], "subcategory": "..."}, ...])`;
- or pass such dicts straight to recommend as the history or the candidates: each one's facts are
  used for that call, on top of the catalog (or the version's own facts).

Use it with `Hub(..., catalog=...)` for every call, or `recommend(..., catalog=...)` for one; a
path to a catalog file works too. The version's own facts stay the default.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from . import facts as facts_mod
from .errors import ConfigError, DataError

FIELDS = {"id": "the item id (text)", "text": "the item's title or name", "category": "category / genres / brand",
          "subcategory": "news subcategory", "tags": "list of tags", "popularity": "users with an interaction (>= 0)",
          "like_rate": "share of ratings that liked it, in [0, 1]"}


def build(data, splits=("train", "valid", "test")) -> dict:
    """A catalog from interaction data (a ScenarioData): every example of `splits` counts as an
    interaction, as in a production log. The loader's train-only statistics (video's like-rate)
    are kept as the loader computed them."""
    examples = [ex for name in splits for ex in data.splits.get(name, [])]
    if not examples:
        raise DataError(f"no examples in split(s) {', '.join(splits)} of scenario '{data.scenario}' to build a "
                        "catalog from")
    facts = facts_mod.compute(replace(data, splits={"train": examples}))
    facts["built_from"] = {"splits": list(splits), "examples": len(examples)}
    return facts


def save(catalog: dict, path) -> Path:
    return facts_mod.save(catalog, path)


def load(path) -> dict:
    return facts_mod.load(path)


def from_items(items, scenario: str = "generic", base: dict | None = None) -> dict:
    """A catalog of items given as dicts (FIELDS), optionally on top of another catalog `base`
    (not changed; entries with the same id are replaced). Popularity buckets rank each new item
    among the base's items, or among the given ones when there is no base."""
    new = {}
    for n, item in enumerate(items):
        new[item_id(item, n)] = entry(item, n)
    if base:
        facts = {k: v for k, v in base.items() if k != "_by_text"}   # the text index is rebuilt with the new items
        facts["items"] = {**base["items"], **new}
        ranked = sorted(e.get("p", 0) for e in base["items"].values())
    else:
        facts = {"format": facts_mod.FORMAT, "scenario": scenario, "items": new}
        ranked = sorted(e.get("p", 0) for e in new.values())
    for e in new.values():
        b = facts_mod.bucket(ranked, e["p"]) if e.get("p") else None
        if b is not None:
            e["b"] = b
    return facts


def entry(item: dict, n: int = 0) -> dict:
    """One item dict -> its facts entry; a DataError names the item's position and field."""
    where = f"item {n} ({item.get('id', '?')!r})" if isinstance(item, dict) else f"item {n}"
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected a dict with {', '.join(FIELDS)}, got {type(item).__name__}")
    unknown = sorted(set(item) - set(FIELDS))
    if unknown:
        from .errors import did_you_mean
        raise DataError(f"{where}: unknown field(s) {unknown} (fields: {', '.join(FIELDS)})."
                        f"{did_you_mean(unknown[0], FIELDS)}")
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: 'text' must be the item's non-empty title or name")
    out: dict = {"t": " ".join(text.split())}
    for key, short in (("category", "c"), ("subcategory", "s")):
        if item.get(key) is not None:
            if not isinstance(item[key], str):
                raise DataError(f"{where}: '{key}' must be text, got {item[key]!r}")
            if item[key]:
                out[short] = item[key]
    if item.get("tags") is not None:
        tags = item["tags"]
        if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
            raise DataError(f"{where}: 'tags' must be a list of text, got {tags!r}")
        if tags:
            out["g"] = list(tags)
    p = item.get("popularity")
    if p is not None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p < 0 or p != int(p):
            raise DataError(f"{where}: 'popularity' must be a whole number >= 0 (users who interacted), got {p!r}")
        if p:
            out["p"] = int(p)
    r = item.get("like_rate")
    if r is not None:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r <= 1:
            raise DataError(f"{where}: 'like_rate' must be a number in [0, 1], got {r!r}")
        out["r"] = float(r)
    return out


def item_id(item, n: int) -> str:
    if not isinstance(item, dict) or not isinstance(item.get("id"), (str, int)) or isinstance(item.get("id"), bool) \
            or str(item.get("id")).strip() == "":
        raise DataError(f"item {n}: 'id' must be a non-empty text or integer id (fields: {', '.join(FIELDS)})")
    return str(item["id"])


def as_facts(catalog) -> dict:
    """A catalog given as a facts dict, a catalog file's path, or a list of item dicts -> the facts dict."""
    if isinstance(catalog, dict) and isinstance(catalog.get("items"), dict):
        return catalog
    if isinstance(catalog, (str, Path)):
        return facts_mod.load(catalog)
    if isinstance(catalog, (list, tuple)):
        return from_items(catalog)
    raise ConfigError(f"catalog={type(catalog).__name__}: pass a catalog (adapterhub.catalog.build / from_items), "
                      "a catalog file's path, or a list of item dicts")


def with_items(facts: dict | None, refs, scenario: str) -> tuple[dict | None, list]:
    """The facts a call uses when some of its items come as dicts: those items' entries on top of
    `facts` (a copy; `facts` is not changed) -> (facts, the refs with each dict replaced by its id)."""
    dicts = [r for r in refs if isinstance(r, dict)]
    if not dicts:
        return facts, list(refs)
    merged = from_items(dicts, scenario, base=facts)
    return merged, [item_id(r, n) if isinstance(r, dict) else r for n, r in enumerate(refs)]
