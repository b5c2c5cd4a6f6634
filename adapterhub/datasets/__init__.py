"""Scenario datasets: `load(source, path)` -> ScenarioData (items, train/valid/test examples).

The real data is read at run time from ../shared/data (or --data PATH); it is never copied here.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError, did_you_mean
from . import amazon, generic, lastfm, mind, movielens
from .common import MAX_HISTORY, Example, Item, ScenarioData

__all__ = ["load", "SOURCES", "ALIASES", "default_data_dir", "Item", "Example", "ScenarioData", "MAX_HISTORY"]

# source -> (module, subfolder of the data dir)
SOURCES = {"video": (movielens, "video"), "ecommerce": (amazon, "ecommerce"), "news": (mind, "news"),
           "music": (lastfm, "music"), "jsonl": (generic, None), "csv": (generic, None)}
ALIASES = {"movielens": "video", "amazon": "ecommerce", "mind": "news", "lastfm": "music"}


def default_data_dir() -> Path | None:
    """$ADAPTERHUB_DATA, else the first existing of <cwd>/../shared/data, <repo>/../shared/data."""
    if os.environ.get("ADAPTERHUB_DATA"):
        return Path(os.environ["ADAPTERHUB_DATA"])
    repo = Path(__file__).resolve().parents[2]
    for cand in (Path.cwd() / ".." / "shared" / "data", repo / ".." / "shared" / "data"):
        if cand.is_dir():
            return cand.resolve()
    return None


def load(source: str, path: str | os.PathLike | None = None, *, seed: int = 0, n_candidates: int = 20,
         max_examples: dict[str, int] | None = None, options: dict | None = None) -> ScenarioData:
    """Load a scenario's items and train/valid/test examples; deterministic given `seed`.

    options: the scenario loader's own keyword options, e.g. {"full_train": True} for news (all
    of its impressions in train, see datasets/mind.py); an option the loader lacks is a DataError.

    max_examples caps split sizes with a seeded fair sample (whole groups for grouped tasks),
    e.g. {"train": 1024, "valid": 256, "test": 400}.
    """
    name = ALIASES.get(source, source)
    if name not in SOURCES:
        options = sorted(SOURCES) + sorted(ALIASES)
        raise DataError(f"unknown data source {source!r} (valid: {', '.join(options)}).{did_you_mean(source, options)}",
                        field="source")
    module, subfolder = SOURCES[name]
    if path is None:
        if subfolder is None:
            raise DataError(f"source {name!r} needs a path: pass --data PATH (a folder with items.{name} "
                            f"and examples.{name}, see docs/DATA.md)", field="path")
        root = default_data_dir()
        if root is None:
            raise DataError(f"no data folder found (tried $ADAPTERHUB_DATA, ./../shared/data and the one "
                            f"beside the repository); pass --data PATH to the {name} data", field="path")
        path = root / subfolder
    path = Path(path)
    if not path.exists():
        raise DataError(f"no {name} data here; pass the folder with --data PATH (or set ADAPTERHUB_DATA "
                        "to the folder holding video/, ecommerce/, news/ and music/)", file=str(path))
    kwargs = {"seed": seed, "n_candidates": n_candidates, "max_examples": max_examples}
    if options:
        import inspect
        known = [p for p in inspect.signature(module.load).parameters if p not in kwargs and p not in ("path", "fmt")]
        bad = sorted(set(options) - set(known))
        if bad:
            raise DataError(f"scenario {name!r} has no data option(s) {', '.join(bad)} (it has: "
                            f"{', '.join(known) or 'none'})", field="options")
        kwargs.update(options)
    data = generic.load(path, fmt=name, **kwargs) if module is generic else module.load(path, **kwargs)
    # recorded in a trained adapter's card, so its facts can be rebuilt from the same data
    data.load_args = {"seed": seed, "n_candidates": n_candidates, "max_examples": max_examples,
                      "options": dict(options or {})}
    return data
