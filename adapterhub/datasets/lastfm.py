"""music: Last.fm HetRec 2K, each user's artists in the order the user first tagged them.

Only artists the user both tagged (user_taggedartists.dat, the only dates) and listened to
(user_artists.dat) are kept; users with fewer than 5 such artists are dropped. Leave-last-out:
test = last artist, valid = second-last (each + n_candidates-1 sampled negatives), train = the
earlier positions (history = previous <= 10 artists, one positive + one sampled negative).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..errors import DataError
from .common import (MAX_HISTORY, Example, Item, ScenarioData, finish, find_dir, one_line,
                     ranking_group, read_lines, rng_for, sample_negatives)

SOURCE = "hetrec2011-lastfm-2k"
MIN_ARTISTS = 5


def read_table(path: Path, n_cols: int, encoding: str = "utf-8") -> list[tuple[int, list[str]]]:
    """(line number, columns) of a tab-separated file with one header line."""
    rows = []
    for n, line in enumerate(read_lines(path, encoding)[1:], 2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < n_cols:
            raise DataError(f"expected {n_cols} tab-separated columns, got {len(cols)}", file=str(path), line=n)
        rows.append((n, cols))
    return rows


def load(path, *, seed: int = 0, n_candidates: int = 20, max_examples=None) -> ScenarioData:
    root = find_dir(Path(path), "hetrec2011-lastfm-2k", "user_taggedartists.dat")
    files = [root / f for f in ("artists.dat", "tags.dat", "user_artists.dat", "user_taggedartists.dat")]
    names = {c[0]: one_line(c[1]) for _, c in read_table(files[0], 2)}
    tag_names = {c[0]: one_line(c[1]) for _, c in read_table(files[1], 2, "latin-1")}
    listened = {(c[0], c[1]) for _, c in read_table(files[2], 3)}

    first: dict[tuple[str, str], tuple[int, int, int]] = {}   # (user, artist) -> first tag date
    tag_counts: dict[str, Counter] = {}
    for n, c in read_table(files[3], 6):
        try:
            date = (int(c[5]), int(c[4]), int(c[3]))   # year, month, day
        except ValueError:
            raise DataError("day/month/year are not integers", file=str(files[3]), line=n) from None
        key = (c[0], c[1])
        first[key] = min(first.get(key, date), date)
        tag_counts.setdefault(c[1], Counter())[tag_names.get(c[2], c[2])] += 1

    seqs: dict[str, list[str]] = {}
    for (user, artist), date in sorted(first.items(), key=lambda kv: (int(kv[0][0]), kv[1], int(kv[0][1]))):
        if (user, artist) in listened and artist in names:
            seqs.setdefault(user, []).append(artist)
    seqs = {u: s for u, s in seqs.items() if len(s) >= MIN_ARTISTS}

    catalog, tags = {}, {}
    for artist in sorted(names, key=int):   # every artist of artists.dat: the candidate protocols' catalog
        # most used tags first; ties by name so the text is deterministic
        top = [t for t, _ in sorted(tag_counts.get(artist, {}).items(), key=lambda kv: (-kv[1], kv[0]))[:3]]
        if top:
            tags[artist] = top
        text = names[artist] + (f" (tags: {', '.join(top)})" if top else "")
        catalog[artist] = Item(artist, text, top[0] if top else "")
    items = {a: catalog[a] for a in sorted({a for s in seqs.values() for a in s}, key=int)}
    pool = sorted(items, key=int)

    splits: dict[str, list[Example]] = {"train": [], "valid": [], "test": []}
    for user in sorted(seqs, key=int):
        seq = seqs[user]
        everything = set(seq)   # negatives avoid all the user's artists, held-out ones too
        for split, pos in (("valid", len(seq) - 2), ("test", len(seq) - 1)):
            negs = sample_negatives(rng_for(seed, split, user), pool, everything, n_candidates - 1)
            splits[split] += ranking_group(user, seq[:pos], seq[pos], negs, f"{split}:{user}")
        for i in range(1, len(seq) - 2):
            hist = tuple(seq[max(0, i - MAX_HISTORY):i])
            neg = sample_negatives(rng_for(seed, "train", user, i), pool, everything, 1)
            splits["train"] += [Example(user, hist, seq[i], 1)] + [Example(user, hist, j, 0) for j in neg]
    params = {"seed": seed, "n_candidates": n_candidates, "max_examples": max_examples}
    return finish("music", SOURCE, items, splits, "ranking", files, params, {"tags": tags}, catalog)
