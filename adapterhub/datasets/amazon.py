"""ecommerce: Amazon 2018 Industrial_and_Scientific next-item samples (MiniOneRec processing).

Only the valid and test CSVs exist. test = one ranking group per test row; valid = one group per
valid row of users with md5(user_id) % 2 == 0; train = prefix -> next-item windows over the valid
rows of the other users (their history + targets), each with one sampled negative.
"""
from __future__ import annotations

import ast
import csv
import io
import json
from pathlib import Path

from ..errors import DataError
from .common import (MAX_HISTORY, Example, Item, ScenarioData, finish, find_dir, md5_int,
                     one_line, ranking_group, read_text, rng_for, sample_negatives)

SOURCE = "amazon18-industrial"
CSV_NAME = "Industrial_and_Scientific_5_2016-10-2018-11.csv"


def read_items(path: Path) -> dict[str, Item]:
    try:
        raw = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON ({e.msg})", file=str(path), line=e.lineno) from None
    items = {}
    for item_id, meta in raw.items():
        cats = meta.get("categories") or ""
        if isinstance(cats, str) and cats.startswith("["):
            cats = ast.literal_eval(cats)
        # The categories are empty in this snapshot: fall back to the brand as the "category".
        category = (cats[-1] if isinstance(cats, list) and cats else cats) or meta.get("brand") or ""
        items[str(item_id)] = Item(str(item_id), one_line(meta.get("title", ""), 20), one_line(category))
    return items


def read_rows(path: Path, items: dict[str, Item]) -> list[tuple[str, list[str], str]]:
    """(user, history ids oldest first, target id) per CSV row, in file (= time) order."""
    out = []
    for n, row in enumerate(csv.DictReader(io.StringIO(read_text(path), newline="")), 2):
        try:
            hist = [str(i) for i in ast.literal_eval(row["history_item_id"])]
            user, target = row["user_id"], str(int(row["item_id"]))
        except (KeyError, ValueError, SyntaxError, TypeError) as e:
            raise DataError(f"cannot parse row ({e!r})", file=str(path), line=n) from None
        for i in hist + [target]:
            if i not in items:
                raise DataError(f"item id {i!r} is not in the item.json", file=str(path), line=n)
        out.append((user, hist, target))
    return out


def user_sequences(rows) -> dict[str, list[str]]:
    """Each user's items oldest first: the first row's history, then every row's target."""
    seqs: dict[str, list[str]] = {}
    for user, hist, target in rows:
        if user not in seqs:
            seqs[user] = list(hist)
        seqs[user].append(target)
    return seqs


def load(path, *, seed: int = 0, n_candidates: int = 20, max_examples=None) -> ScenarioData:
    root = find_dir(Path(path), "amazon18-industrial", "Industrial_and_Scientific.item.json")
    files = [root / "Industrial_and_Scientific.item.json", root / "valid" / CSV_NAME, root / "test" / CSV_NAME]
    items = read_items(files[0])
    valid_rows = read_rows(files[1], items)
    test_rows = read_rows(files[2], items)
    pool = sorted(items, key=int)

    # Everything known about a user: negatives (train and evaluation) never include a true
    # interaction, so a later valid/test target is never a train negative either.
    known: dict[str, set[str]] = {}
    for user, hist, target in valid_rows + test_rows:
        known.setdefault(user, set()).update(hist + [target])

    def groups(rows, split):
        out = []
        for n, (user, hist, target) in enumerate(rows):
            rng = rng_for(seed, split, user, n)
            negs = sample_negatives(rng, pool, known[user], n_candidates - 1)
            out += ranking_group(user, hist, target, negs, f"{split}:{user}:{n}")
        return out

    is_valid_user = {u: md5_int(u) % 2 == 0 for u, _, _ in valid_rows}
    valid = groups([r for r in valid_rows if is_valid_user[r[0]]], "valid")
    test = groups(test_rows, "test")

    # Later targets of each user (valid or test): a train window must not contain them, which
    # only matters for repeat purchases.
    later = {}
    for user, _, target in test_rows + [r for r in valid_rows if is_valid_user[r[0]]]:
        later.setdefault(user, set()).add(target)
    train = []
    for user, seq in user_sequences([r for r in valid_rows if not is_valid_user[r[0]]]).items():
        for i in range(1, len(seq)):
            hist, target = tuple(seq[max(0, i - MAX_HISTORY):i]), seq[i]
            if later.get(user, set()) & (set(hist) | {target}):
                continue
            rng = rng_for(seed, "train", user, i)
            neg = sample_negatives(rng, pool, known[user], 1)
            train.append(Example(user, hist, target, 1))
            train += [Example(user, hist, j, 0) for j in neg]
    params = {"seed": seed, "n_candidates": n_candidates, "max_examples": max_examples}
    return finish("ecommerce", SOURCE, items, {"train": train, "valid": valid, "test": test},
                  "ranking", files, params)
