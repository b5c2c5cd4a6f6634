"""One input row checked into a Request: user, history, candidates, and the optional adapter, k,
disliked and scenario. Every problem is a DataError naming the field and saying what is wanted.

JSONL and Parquet give lists as lists; an item is a title, a dataset id, or (JSONL) an object with
the item's own facts (adapterhub.catalog.FIELDS). A CSV cell (or a Parquet string column) holding a list is
either a JSON list ('["Heat (1995)", "Alien (1979)"]') or items separated by '|'
('Heat (1995)|Alien (1979)'), as `adapterhub recommend --history` takes them.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass

from ..errors import DataError

FIELDS = ("user", "history", "candidates", "adapter", "k", "disliked", "scenario")


@dataclass
class Request:
    index: int
    line: int
    user: object
    history: list
    candidates: list
    adapter: str | None
    k: int | None
    disliked: list
    scenario: str | None


def _missing(name: str, data: dict) -> DataError:
    close = difflib.get_close_matches(name, [str(f) for f in data], n=1)
    hint = (f" (found {close[0]!r}: did you mean {name!r}?)" if close
            else f" (fields here: {', '.join(map(str, data)) or 'none'})")
    return DataError(f"no {name!r}{hint}", field=name)


def _absent(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _items(value, name: str, required: bool) -> list:
    """A list of item references (titles or dataset ids: strings or integers)."""
    if _absent(value):
        if required:
            raise DataError("is empty: give at least one item", field=name)
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"starts with '[' but is not a JSON list ({e.msg} at column {e.colno}); write "
                                "a JSON list or items separated by '|'", field=name) from None
        else:
            value = [t.strip() for t in text.split("|") if t.strip()]
    if not isinstance(value, (list, tuple)):
        raise DataError(f"is a {type(value).__name__}; give a list of item titles or ids", field=name)
    for i, item in enumerate(value):  # a dict item (adapterhub.catalog.FIELDS) is checked by recommend.plan
        blank = isinstance(item, str) and not item.strip()
        if isinstance(item, bool) or not isinstance(item, (str, int, dict)) or blank:
            raise DataError(f"item {i} is {item!r}; each item is a non-empty title or id (text or an integer), "
                            "or an object with the item's fields", field=name)
    if required and not value:
        raise DataError("is empty: give at least one item", field=name)
    return list(value)


def _text(value, name: str) -> str | None:
    if _absent(value):
        return None
    if not isinstance(value, str):
        raise DataError(f"is {value!r}; give a name as text", field=name)
    return value.strip()


def _k(value) -> int | None:
    if _absent(value):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"is {value!r}; give how many ranked candidates to keep, an integer >= 1", field="k")
    return value


def check(index: int, line: int, data: dict) -> Request:
    """A parsed record -> a Request, or a DataError naming the field (the caller adds file and line)."""
    for name in ("user", "history", "candidates"):  # history may be empty, but a misspelt one is not silent
        if name not in data:
            raise _missing(name, data)
    user = data["user"]
    if _absent(user) or isinstance(user, bool) or not isinstance(user, (str, int)):
        raise DataError(f"is {user!r}; give the user's id (text or an integer)", field="user")
    return Request(index, line, user,
                   history=_items(data.get("history"), "history", required=False),
                   candidates=_items(data["candidates"], "candidates", required=True),
                   adapter=_text(data.get("adapter"), "adapter"),
                   k=_k(data.get("k")),
                   disliked=_items(data.get("disliked"), "disliked", required=False),
                   scenario=_text(data.get("scenario"), "scenario"))
