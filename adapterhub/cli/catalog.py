"""The catalog command: build an item catalog (popularity, category, like-rate, tags) from your own
interaction data, for recommend / eval / serve to use instead of a version's own facts."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .common import load_data


def cmd_catalog_build(args) -> int:
    from ..catalog import build, save
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} exists: pass --overwrite to replace it, or another OUT path")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    bad = [s for s in splits if s not in ("train", "valid", "test")]
    if bad or not splits:
        raise ConfigError(f"--splits {args.splits!r}: name one or more of train, valid, test")
    data = load_data(args)
    if isinstance(data, list):
        raise ConfigError("a catalog is one scenario's: give one --scenario")
    catalog = build(data, splits)
    path = save(catalog, out)
    n_known = sum(1 for e in catalog["items"].values() if e.get("p"))
    print(f"wrote {path}: {len(catalog['items'])} items ({n_known} with interactions) of scenario "
          f"{catalog['scenario']} from {catalog['built_from']['examples']} examples of split(s) {', '.join(splits)}")
    return 0


def add_commands(sub, parents: dict) -> None:
    s = sub.add_parser("catalog", help="build an item catalog from your own interaction data (for recommend "
                       "--catalog, eval --catalog, Hub(catalog=...))")
    verbs = s.add_subparsers(dest="verb", required=True, metavar="VERB", help="what to do with a catalog")
    b = verbs.add_parser("build", parents=[parents["common"], parents["data"]],
                         help="item facts from interaction data, in any format the loaders read")
    b.add_argument("out", help="the catalog file to write (JSON, the facts format)")
    b.add_argument("--splits", default="train,valid,test", help="which splits count as interactions (default: all "
                   "of them, as in a production log; 'train' when you evaluate on the others)")
    b.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    b.set_defaults(func=cmd_catalog_build)
