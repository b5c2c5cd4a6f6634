"""The shapes every dataset loader returns, and the few helpers they share."""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

MAX_HISTORY = 10   # items kept in a history window (the prompt shows at most this many)


@dataclass(frozen=True)
class Item:
    id: str
    text: str                 # title / headline / artist name (+ short extra), one line
    category: str = ""        # e.g. MIND category, movie genres; "" if unknown


@dataclass(frozen=True)
class Example:
    user: str
    history: tuple[str, ...]  # liked / bought / clicked / listened item ids, oldest first
    candidate: str            # the target item id
    label: int                # 1 = positive, 0 = negative
    disliked: tuple[str, ...] = ()   # disliked item ids, where known (MovieLens)
    group: str = ""           # ranking group (one candidate list / impression); "" if pointwise


@dataclass
class ScenarioData:
    scenario: str                       # "video" | "ecommerce" | "news" | "music" | user's name
    source: str                         # e.g. "movielens-100k+tallrec"
    items: dict[str, Item]
    splits: dict[str, list[Example]]    # "train", "valid", "test"
    sha256: str                         # over the input files' bytes + the load parameters
    task: str                           # "pointwise" | "ranking" | "impression"
    extra: dict = field(default_factory=dict)   # train-only statistics for baselines, etc.
    load_args: dict = field(default_factory=dict)  # datasets.load's arguments besides the path: loads it again
    # the source's whole item file, where it holds more than the items read (music: every artist of
    # artists.dat); {} when `items` is already all of it. Candidate protocols draw from it.
    catalog: dict[str, Item] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        return {name: len(examples) for name, examples in self.splits.items()}


def md5_int(key: object) -> int:
    """The data README's "md5 rule": a stable integer hash of str(key)."""
    return int(hashlib.md5(str(key).encode()).hexdigest(), 16)


def rng_for(seed: int, *keys: object) -> random.Random:
    # A string seed is hashed with sha512 by `random`, so this is stable across runs and
    # independent of PYTHONHASHSEED and of the order users are processed in.
    return random.Random(":".join([str(seed), *map(str, keys)]))


def one_line(text: str, max_words: int | None = None) -> str:
    words = str(text).split()
    if max_words is not None and len(words) > max_words:
        words = words[:max_words] + ["..."]
    return " ".join(words)


def sample_negatives(rng: random.Random, pool: list[str], exclude: set[str], n: int) -> list[str]:
    """n distinct ids from `pool` (sorted list) not in `exclude`; fewer if the pool runs out."""
    free = len(pool) - len(exclude)
    if free <= 3 * n:   # small pool: enumerate instead of rejection sampling
        options = [i for i in pool if i not in exclude]
        return rng.sample(options, min(n, len(options)))
    chosen: list[str] = []
    seen = set(exclude)
    while len(chosen) < n:
        item = pool[rng.randrange(len(pool))]
        if item not in seen:
            seen.add(item)
            chosen.append(item)
    return chosen


def ranking_group(user: str, history, target: str, negatives: list[str], group: str) -> list[Example]:
    """The positive first, then the negatives, all sharing the user's history."""
    history = tuple(history)[-MAX_HISTORY:]
    return [Example(user, history, target, 1, group=group)] + [
        Example(user, history, neg, 0, group=group) for neg in negatives]


def cap(examples: list[Example], n: int | None, seed: int, split: str) -> list[Example]:
    """A loader's max_examples cap for one split (see cap_groups)."""
    return cap_groups(examples, n, rng_for(seed, "cap", split))


def cap_groups(examples: list[Example], n: int | None, rng: random.Random) -> list[Example]:
    """A seeded fair sample of at most n examples, order kept; grouped data is capped by whole
    groups (at least one). The one capping rule: loaders, training and evaluation all use it."""
    if n is None or len(examples) <= n:
        return list(examples)
    if n <= 0:
        return []
    if not any(ex.group for ex in examples):
        keep = sorted(rng.sample(range(len(examples)), n))
        return [examples[i] for i in keep]
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):  # an example without a group is a group of its own
        groups.setdefault(ex.group or f"#{i}", []).append(i)
    order = list(groups)
    rng.shuffle(order)
    keep: list[int] = []
    for g in order:   # take whole groups while they fit, but at least one
        if len(keep) + len(groups[g]) > n and keep:
            continue
        keep += groups[g]
    return [examples[i] for i in sorted(keep)]


def finish(scenario: str, source: str, items: dict[str, Item], splits: dict[str, list[Example]],
           task: str, files: list[Path], params: dict, extra: dict | None = None,
           catalog: dict[str, Item] | None = None) -> ScenarioData:
    """Apply max_examples caps and hash the inputs (file bytes + load parameters)."""
    caps = params.get("max_examples") or {}
    unknown = set(caps) - {"train", "valid", "test"}
    if unknown:
        raise DataError(f"max_examples has unknown split(s) {sorted(unknown)}; "
                        "valid keys: train, valid, test", field="max_examples")
    splits = {name: cap(splits.get(name, []), caps.get(name), params.get("seed", 0), name)
              for name in ("train", "valid", "test")}
    h = hashlib.sha256()
    for f in sorted(files, key=str):
        h.update(Path(f).name.encode() + b"\0" + Path(f).read_bytes())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    return ScenarioData(scenario, source, items, splits, h.hexdigest(), task, extra or {}, catalog=catalog or {})


def find_dir(path: Path, inner: str, must_have: str) -> Path:
    """Accept either the scenario folder or the dataset folder inside it."""
    path = Path(path)
    for cand in (path, path / inner):
        if (cand / must_have).exists():
            return cand
    raise DataError(f"'{must_have}' not found in '{path}' or '{path / inner}'. Pass the folder "
                    f"that holds it with --data PATH (or set ADAPTERHUB_DATA)", file=str(path))


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The file's text; bad bytes become a DataError naming the line."""
    data = Path(path).read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"not valid {encoding} ({e.reason})", file=str(path), line=line) from None


def read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    # split on "\n" only: str.splitlines() would also split inside fields on \u2028, \x85, ...
    lines = [line.rstrip("\r") for line in read_text(path, encoding).split("\n")]
    return lines[:-1] if lines and lines[-1] == "" else lines
