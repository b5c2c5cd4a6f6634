"""news: MIND impressions as sampled by RecPrompt (one impression = one ranking group).

Impressions come from test_group/variant*/*.csv (news ids, categories) and from
sampled_1000_order.csv / sampled_100.csv (headlines only: ids and categories are looked up by
headline in the test_group files, else the id is a hash of the headline and the category "").
Duplicates are dropped by impression_id. Split by md5(impression_id) % 10: 0 test, 1 valid, else
train. The sampled_* impressions are used for train only (27% of their history headlines have no
category, which would handicap the category baseline on valid/test). Train keeps every click and
up to 4 sampled non-clicks per impression. load()'s full_train / sampled_eval options use all the
impressions read (see load). Labels ('C4', 'C13,C14') are 1-based positions in the candidate
column's C1..Cn lines, which must match the candidate_news_id list one to one.
"""
from __future__ import annotations

import csv
import hashlib
import io
import sys
from pathlib import Path

from ..errors import DataError
from .common import Example, Item, ScenarioData, finish, find_dir, md5_int, one_line, read_text, rng_for

SOURCE = "mind-recprompt"
TRAIN_NEGATIVES = 4


def strip_prefix(line: str) -> str:
    """'C12: headline' -> 'headline'."""
    head, sep, rest = line.partition(": ")
    return rest if sep and head[:1] in "HC" and head[1:].isdigit() else line


def read_csv(path: Path) -> list[tuple[int, dict]]:
    csv.field_size_limit(sys.maxsize)   # multi-line quoted fields are long
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    missing = {"impression_id", "history", "candidate", "label"} - set(reader.fieldnames or ())
    if missing:
        raise DataError(f"missing column(s) {sorted(missing)}", file=str(path), line=1)
    return [(reader.line_num, row) for row in reader]


def load(path, *, seed: int = 0, n_candidates: int = 20, max_examples=None, full_train: bool = False,
         sampled_eval: bool = False) -> ScenarioData:
    """full_train: train keeps every candidate of its impressions (not 4 sampled non-clicks), and the
    sampled_* impressions of the valid/test buckets go to train rather than being dropped.
    sampled_eval: those sampled_* impressions go to valid/test instead (natural MIND impressions:
    the test_group files over-represent clicks off the history's topics, see benchmarks/quality/news_diagnosis.md).
    Both False (the default) is the split the v1 adapters were trained and evaluated on."""
    root = find_dir(Path(path), "mind-recprompt", "test_group")
    grouped = sorted((root / "test_group").glob("variant*/*.csv"))
    sampled = [root / n for n in ("sampled_1000_order.csv", "sampled_100.csv") if (root / n).exists()]
    items: dict[str, Item] = {}
    subcategory: dict[str, str] = {}
    by_title: dict[str, str] = {}
    impressions: dict[str, tuple[list[str], list[str], set[int]]] = {}   # id -> history, candidates, clicked positions
    train_only: set[str] = set()

    def parse_label(row, path, line, n):
        try:
            clicked = {int(c.strip()[1:]) - 1 for c in row["label"].split(",") if c.strip()}
        except ValueError:
            raise DataError(f"label {row['label']!r} is not like 'C4' or 'C13,C14'",
                            file=str(path), line=line, field="label") from None
        if not clicked or max(clicked) >= n or min(clicked) < 0:
            raise DataError(f"label {row['label']!r} does not name one of the {n} candidates",
                            file=str(path), line=line, field="label")
        return clicked

    for f in grouped:   # rows with ids and categories first, so headlines can be looked up
        for line, row in read_csv(f):
            lists = {}
            for side in ("history", "candidate"):
                cols = [row[f"{side}_{c}"].split("\n") for c in ("news_id", "title", "category", "subvert")]
                if len({len(c) for c in cols}) != 1:
                    raise DataError(f"{side} id/title/category/subvert lists differ in length",
                                    file=str(f), line=line, field=f"{side}_news_id")
                for nid, title, cat, sub in zip(*cols):
                    nid = nid.strip()
                    if nid not in items:
                        items[nid] = Item(nid, one_line(title), cat.strip())
                        subcategory[nid] = sub.strip()
                        by_title.setdefault(items[nid].text, nid)
                lists[side] = [c.strip() for c in cols[0]]
            numbered = sum(1 for t in row["candidate"].split("\n") if strip_prefix(t) != t)
            if numbered != len(lists["candidate"]):   # the label counts C-lines, ids come from the list
                raise DataError(f"the candidate column has {numbered} 'C<n>: ' lines but candidate_news_id has "
                                f"{len(lists['candidate'])} ids; labels could not be matched to candidates",
                                file=str(f), line=line, field="candidate")
            if row["impression_id"] not in impressions:
                clicked = parse_label(row, f, line, len(lists["candidate"]))
                impressions[row["impression_id"]] = (lists["history"], lists["candidate"], clicked)

    def headline_id(title: str) -> str:
        title = one_line(title)
        if title not in by_title:
            nid = "h" + hashlib.md5(title.encode()).hexdigest()[:12]
            items[nid] = Item(nid, title, "")
            by_title[title] = nid
        return by_title[title]

    for f in sampled:
        for line, row in read_csv(f):
            if row["impression_id"] in impressions:
                continue
            hist = [headline_id(strip_prefix(t)) for t in row["history"].split("\n") if t.strip()]
            cands = [headline_id(strip_prefix(t)) for t in row["candidate"].split("\n") if t.strip()]
            impressions[row["impression_id"]] = (hist, cands, parse_label(row, f, line, len(cands)))
            train_only.add(row["impression_id"])

    splits: dict[str, list[Example]] = {"train": [], "valid": [], "test": []}
    for imp in sorted(impressions, key=md5_int):
        hist, cands, clicked = impressions[imp]
        bucket = md5_int(imp) % 10
        split = "test" if bucket == 0 else "valid" if bucket == 1 else "train"
        if split != "train" and imp in train_only and not sampled_eval:
            if not full_train:
                continue
            split = "train"
        keep = range(len(cands))
        if split == "train" and not full_train:   # all clicks + a few seeded non-clicks: small, balanced
            negs = [i for i in keep if i not in clicked]
            negs = rng_for(seed, "news", imp).sample(negs, min(TRAIN_NEGATIVES, len(negs)))
            keep = sorted(set(clicked) | set(negs))
        user = f"imp{imp}"   # MIND user ids are not in these files
        history = tuple(hist)   # full click history: prompts show the last 10, baselines use all
        splits[split] += [Example(user, history, cands[i], int(i in clicked), group=user) for i in keep]
    params = {"seed": seed, "max_examples": max_examples}   # options only when set: the default keeps its hash
    params.update({k: True for k, v in (("full_train", full_train), ("sampled_eval", sampled_eval)) if v})
    return finish("news", SOURCE, items, splits, "impression", grouped + sampled, params,
                  {"subcategory": subcategory})
