"""video: MovieLens-100K titles and ratings + TALLRec's train/valid CSVs (pointwise Yes/No).

train = TALLRec train.csv; TALLRec's valid.csv users are split by md5(user_id) % 2 into
valid (0) and test (1). TALLRec's own test users are not in the shared data at all.
The option valid_from_train=F moves a share F of the train users (by md5(user_id) % 1000) into
valid as well: TALLRec's valid half is 351 rows, too few to pick a step or fit the fused blend on.
Test is the same either way.
"""
from __future__ import annotations

import ast
import csv
import io
from pathlib import Path

from ..errors import DataError
from .common import Example, Item, ScenarioData, finish, find_dir, md5_int, read_lines, read_text

SOURCE = "movielens-100k+tallrec"
GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def read_items(path: Path) -> dict[str, Item]:
    items = {}
    for n, line in enumerate(read_lines(path, "latin-1"), 1):
        if not line.strip():
            continue
        cols = line.split("|")
        if len(cols) < 5 + len(GENRES):
            raise DataError(f"expected {5 + len(GENRES)} '|'-separated columns, got {len(cols)}",
                            file=str(path), line=n)
        genres = [g for g, flag in zip(GENRES, cols[5:]) if flag.strip() == "1"]
        items[cols[0]] = Item(cols[0], " ".join(cols[1].split()), "|".join(genres))
    return items


def read_tallrec(path: Path, items: dict[str, Item]) -> list[Example]:
    rows = csv.DictReader(io.StringIO(read_text(path), newline=""))
    out = []
    for n, row in enumerate(rows, 2):
        try:
            hist = [str(i) for i in ast.literal_eval(row["history_movie_id"])]
            rates = [int(r) for r in ast.literal_eval(row["history_rating"])]
            movie, label = str(row["movie_id"]), int(row["rating"])
        except (KeyError, ValueError, SyntaxError, TypeError) as e:
            raise DataError(f"cannot parse TALLRec row ({e!r})", file=str(path), line=n) from None
        if len(hist) != len(rates) or label not in (0, 1):
            raise DataError("history ids/ratings differ in length or rating is not 0/1",
                            file=str(path), line=n)
        for i in hist + [movie]:
            if i not in items:
                raise DataError(f"movie id {i!r} is not in u.item", file=str(path), line=n)
        out.append(Example(str(row["user_id"]), tuple(h for h, r in zip(hist, rates) if r == 1),
                           movie, label, tuple(h for h, r in zip(hist, rates) if r != 1)))
    return out


def like_rates(path: Path, excluded_users: set[str]) -> tuple[dict[str, float], float]:
    """Per-movie share of ratings > 3 in u.data, without the valid/test users' ratings."""
    liked: dict[str, int] = {}
    total: dict[str, int] = {}
    for n, line in enumerate(read_lines(path), 1):
        cols = line.split("\t")
        if len(cols) != 4:
            raise DataError("expected user, item, rating, timestamp", file=str(path), line=n)
        if cols[0] in excluded_users:
            continue
        total[cols[1]] = total.get(cols[1], 0) + 1
        liked[cols[1]] = liked.get(cols[1], 0) + (int(cols[2]) > 3)
    rates = {i: liked[i] / total[i] for i in total}
    overall = sum(liked.values()) / max(1, sum(total.values()))
    return rates, overall


def load(path, *, seed: int = 0, n_candidates: int = 20, max_examples=None,
         valid_from_train: float = 0.0) -> ScenarioData:
    path = Path(path)
    ml = find_dir(path, "movielens-100k", "u.item")
    tr = find_dir(path, "tallrec-movie", "train.csv")
    items = read_items(ml / "u.item")
    train = read_tallrec(tr / "train.csv", items)
    held = read_tallrec(tr / "valid.csv", items)
    held_users = {ex.user for ex in held}
    # TALLRec cut its 8:1:1 split inside one user's rows: drop that user's train rows so that
    # train, valid and test are user-disjoint.
    train = [ex for ex in train if ex.user not in held_users]
    if not 0 <= valid_from_train < 1:
        raise DataError(f"valid_from_train={valid_from_train}: give the share of train users to move to valid, "
                        "in [0, 1), e.g. 0.1", field="valid_from_train")
    moved = {ex.user for ex in train if md5_int(ex.user) % 1000 < valid_from_train * 1000}
    splits = {"train": [ex for ex in train if ex.user not in moved],
              "valid": [ex for ex in held if md5_int(ex.user) % 2 == 0] + [ex for ex in train if ex.user in moved],
              "test": [ex for ex in held if md5_int(ex.user) % 2 == 1]}
    # like-rates leave out every user whose rows are judged (valid, test): no label leaks into facts
    rates, overall = like_rates(ml / "u.data", held_users | moved)
    files = [ml / "u.item", ml / "u.data", tr / "train.csv", tr / "valid.csv"]
    params = {"seed": seed, "max_examples": max_examples}
    if valid_from_train:
        params["valid_from_train"] = valid_from_train
    return finish("video", SOURCE, items, splits, "pointwise", files, params,
                  {"like_rate": rates, "global_like_rate": overall})
