"""A custom scenario in the generic JSONL format, built from MovieLens-100K ratings (the
"custom dataset with categories" check): what a user with their own data would hand to
`adapterhub train --format jsonl`.

    python benchmarks/quality/custom_dataset.py OUT [--data ../shared/data]
    adapterhub train movies --scenario movies --format jsonl --data OUT --max-minutes 10

Items: the 1,682 films, text = title, category = the first genre (one label per item, as a books
shelf would have). Examples: ranking groups, one per (user, position): the positive is a film the
user rated >= 4, the history is the user's earlier films rated >= 4 (oldest first), and 19
negatives are films the user never rated (seeded). Users are split by md5("movies-" + user) 80/10/10 into
train/valid/test; a train user gives up to 4 groups, a valid/test user one (their last positive).
The folder is written where you say (the data is not redistributable: never commit it).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
NEGATIVES = 19
TRAIN_GROUPS_PER_USER = 4


def build(ml: Path, out: Path, seed: int = 0) -> dict:
    items = {}
    for line in (ml / "u.item").read_text(encoding="latin-1").splitlines():
        cols = line.split("|")
        flags = [g for g, f in zip(GENRES, cols[5:24]) if f == "1"]
        items[cols[0]] = {"id": cols[0], "text": " ".join(cols[1].split()), "category": (flags or ["unknown"])[0]}
    rated: dict[str, list[tuple[int, str, int]]] = {}
    for line in (ml / "u.data").read_text().splitlines():
        user, item, rating, ts = line.split("\t")
        rated.setdefault(user, []).append((int(ts), item, int(rating)))
    examples = []
    for user in sorted(rated, key=int):
        rows = sorted(rated[user])
        seen = {i for _, i, _ in rows}
        liked = [i for _, i, r in rows if r >= 4]
        if len(liked) < 3:
            continue
        bucket = int(hashlib.md5(f"movies-{user}".encode()).hexdigest(), 16) % 10
        split = "test" if bucket == 0 else "valid" if bucket == 1 else "train"
        rng = random.Random(f"{seed}-{user}")
        unseen = sorted(set(items) - seen)
        positions = list(range(2, len(liked)))
        positions = rng.sample(positions, min(TRAIN_GROUPS_PER_USER, len(positions))) if split == "train" \
            else [len(liked) - 1]
        for p in sorted(positions):
            group = f"{user}-{p}"
            history = liked[max(0, p - 10):p]
            for cand, label in [(liked[p], 1)] + [(n, 0) for n in rng.sample(unseen, NEGATIVES)]:
                examples.append({"user": user, "history": history, "candidate": cand, "label": label,
                                 "split": split, "group": group})
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "items.jsonl", "w") as fh:
        fh.writelines(json.dumps(it) + "\n" for it in items.values())
    with open(out / "examples.jsonl", "w") as fh:
        fh.writelines(json.dumps(ex) + "\n" for ex in examples)
    (out / "meta.json").write_text(json.dumps({
        "scenario": "movies", "task": "ranking",
        "templates": {"history": "The user liked these films, oldest first: {items}.",
                      "question": "Will the user like the film {item}?"}}, indent=1) + "\n")
    counts = {s: sum(1 for e in examples if e["split"] == s and e["label"]) for s in ("train", "valid", "test")}
    return {"items": len(items), "examples": len(examples), "groups": counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder to write items.jsonl, examples.jsonl and meta.json to")
    ap.add_argument("--data", default="../shared/data", help="the shared data folder (holding video/movielens-100k)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(build(Path(args.data) / "video" / "movielens-100k", Path(args.out), args.seed))


if __name__ == "__main__":
    main()
