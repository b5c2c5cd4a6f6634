"""video: MovieLens-100K titles and ratings + TALLRec's train/valid CSVs (pointwise Yes/No).

train = TALLRec train.csv; TALLRec's valid.csv users are split by md5(user_id) % 2 into
valid (0) and test (1). TALLRec's own test users are not in the shared data at all.
The option valid_from_train=F moves a share F of the train users (by md5(user_id) % 1000) into
valid as well: TALLRec's valid half is 351 rows, too few to pick a step or fit the fused blend on.
Test is the same either way.

The option more_users=true adds rows built the way TALLRec built its own (each user's ratings by
time; one row per position >= 10, the previous 10 movies as history, label rating > 3) for the
u.data users that TALLRec's files lack (752 of 844), split by md5(user_id) % 10: 1 -> test,
2 -> valid, the rest -> train. TALLRec's test half is 536 rows from 5 users; this adds ~6,900
test rows from 79 more users (and ~7,500 valid, ~58,000 train).
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


def read_ratings(path: Path) -> dict[str, list[tuple[int, int, str, int]]]:
    """u.data as user -> [(timestamp, movie id as int, movie id, rating)], in file order."""
    out: dict[str, list] = {}
    for n, line in enumerate(read_lines(path), 1):
        cols = line.split("\t")
        try:
            user, movie, rating, stamp = cols[0], cols[1], int(cols[2]), int(cols[3])
            key = int(movie)
        except (IndexError, ValueError):
            raise DataError("expected user, item, rating, timestamp (tab-separated integers)",
                            file=str(path), line=n) from None
        out.setdefault(user, []).append((stamp, key, movie, rating))
    return out


def rows_from_ratings(ratings: dict[str, list], users, items: dict[str, Item], path: Path) -> list[Example]:
    """TALLRec's rows for `users`: per position >= 10 of a user's time-ordered ratings, the previous
    10 movies (liked = rating > 3, the rest disliked) and the movie rated there."""
    out = []
    for user in sorted(users):
        seq = sorted(ratings[user])   # by time; ties by movie id, so the order is stable
        for _, _, movie, _ in seq:
            if movie not in items:
                raise DataError(f"movie id {movie!r} (user {user}) is not in u.item", file=str(path))
        for p in range(10, len(seq)):
            window = seq[p - 10:p]
            out.append(Example(user, tuple(m for _, _, m, r in window if r > 3), seq[p][2], int(seq[p][3] > 3),
                               tuple(m for _, _, m, r in window if r <= 3)))
    return out


def like_rates(ratings: dict[str, list], excluded_users: set[str]) -> tuple[dict[str, float], float, dict]:
    """Per-movie share of ratings > 3 in u.data, without the valid/test users' ratings -> (rates,
    the overall rate, {movie: [liked, rated]}: what facts.OwnLabelOut takes a train row's own rating from)."""
    liked: dict[str, int] = {}
    total: dict[str, int] = {}
    for user, seq in ratings.items():
        if user in excluded_users:
            continue
        for _, _, movie, rating in seq:
            total[movie] = total.get(movie, 0) + 1
            liked[movie] = liked.get(movie, 0) + (rating > 3)
    rates = {i: liked[i] / total[i] for i in total}
    overall = sum(liked.values()) / max(1, sum(total.values()))
    return rates, overall, {i: [liked[i], total[i]] for i in total}


def load(path, *, seed: int = 0, n_candidates: int = 20, max_examples=None,
         valid_from_train: float = 0.0, more_users: bool = False) -> ScenarioData:
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
    judged = held_users | moved
    ratings = read_ratings(ml / "u.data")
    if more_users:
        tallrec_users = held_users | {ex.user for ex in train}   # built once, not per user
        new = [u for u in ratings if u not in tallrec_users]
        part = {u: {1: "test", 2: "valid"}.get(md5_int(u) % 10, "train") for u in new}
        for name in ("train", "valid", "test"):
            splits[name] += rows_from_ratings(ratings, [u for u in new if part[u] == name], items, ml / "u.data")
        judged |= {u for u in new if part[u] != "train"}
    # like-rates leave out every user whose rows are judged (valid, test): no label leaks into facts
    rates, overall, counts = like_rates(ratings, judged)
    files = [ml / "u.item", ml / "u.data", tr / "train.csv", tr / "valid.csv"]
    params = {"seed": seed, "max_examples": max_examples}
    if valid_from_train:
        params["valid_from_train"] = valid_from_train
    if more_users:
        params["more_users"] = True
    return finish("video", SOURCE, items, splits, "pointwise", files, params,
                  {"like_rate": rates, "global_like_rate": overall, "like_count": counts})
