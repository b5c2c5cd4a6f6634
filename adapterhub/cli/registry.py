"""Registry commands: list, show, promote, rm."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import AdapterHubError, RegistryError
from .common import REGISTRY_ENV, open_registry


def _metric_summary(card: dict) -> str:
    m = card.get("primary_metric")
    test = ((card.get("metrics") or {}).get("test") or {})
    if not m or "adapter" not in test:
        return "-"
    return f"test {m} {test['adapter'].get(m, float('nan')):.3f} (base {test.get('base', {}).get(m, float('nan')):.3f})"


def cmd_list(args) -> int:
    if not Path(args.registry).is_dir():
        raise RegistryError(f"registry '{args.registry}' does not exist. Pass --registry PATH or set {REGISTRY_ENV}; "
                            f"or create it by training: adapterhub train NAME --scenario SCENARIO --registry {args.registry}")
    cards = open_registry(args).list()
    if args.json:
        print(json.dumps(cards, indent=2))
        return 0
    if not cards:
        print(f"no adapters in {args.registry}/ (train one with: adapterhub train NAME --scenario SCENARIO --data PATH)")
        return 0
    rows = [("NAME", "CURRENT", "VERSIONS", "SCENARIO", "BASE", "METRIC")]
    for c in cards:
        rows.append((c["name"], c.get("current") or "-", str(len(c.get("versions", []))), c.get("scenario", "-"),
                     (c.get("base") or {}).get("spec", "-"), _metric_summary(c) if "error" not in c else "CORRUPT: " + c["error"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


def protocol_table(card: dict, split: str = "test") -> str:
    """The card's primary metric per method (rows) and candidate protocol (columns), with intervals;
    a pointwise card shows its pooled and per-user AUC instead."""
    metric = card.get("primary_metric")
    from ..protocols import PROTOCOLS
    tables = {"sampled": ((card.get("metrics") or {}).get(split) or {})}
    measured = (card.get("protocols") or {}).get(split) or {}
    for name in sorted(measured, key=lambda p: PROTOCOLS.index(p) if p in PROTOCOLS else len(PROTOCOLS)):
        tables[name] = measured[name] or {}   # a 'sampled' here was measured with the others, on their sample (eval --n)
    pointwise = (card.get("data") or {}).get("task") == "pointwise"
    columns = [("sampled", m) for m in (metric, "user_auc")] if pointwise else [(p, metric) for p in tables]
    methods = list(dict.fromkeys(m for rows in tables.values() for m, r in rows.items() if isinstance(r, dict)))
    if not methods or not metric:
        return f"no {split} metrics in this card"

    def cell(protocol, m, method):
        row = tables.get(protocol, {}).get(method) or {}
        if m not in row:
            return "-"
        ci = row.get(f"{m}_ci95")
        return f"{row[m]:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    head = [f"{p} {m}" for p, m in columns]
    sizes = []
    for p, _ in columns:
        any_row = next((r for r in tables.get(p, {}).values() if isinstance(r, dict)), {})
        sizes.append(f"{any_row.get('n_groups', any_row.get('n', '?'))}")
    rows = [["method", *head], ["size", *sizes]] + [[method] + [cell(p, m, method) for p, m in columns]
                                                     for method in methods]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    unit = "examples" if pointwise else "groups"
    lines = [f"{card.get('name', '?')}@{card.get('version', '?')} {split} {metric} by candidate protocol "
             f"(size: {unit}; docs/DATA.md states each protocol's rule)"]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def cmd_show(args) -> int:
    card = open_registry(args).card(args.ref)
    if args.table:
        print(protocol_table(card))
        return 0
    if not args.full:
        card = {k: v for k, v in card.items() if k != "train"} | {"train": {k: v for k, v in card.get("train", {}).items() if k != "log"}}
    print(json.dumps(card, indent=2, sort_keys=True))
    return 0


def cmd_promote(args) -> int:
    v = open_registry(args).promote(args.ref)
    print(f"{args.ref.split('@')[0]} -> {v}")
    return 0


def cmd_rm(args) -> int:
    if "@" not in args.ref and not args.all:
        raise AdapterHubError(f"'{args.ref}' names every version; remove one with 'adapterhub rm {args.ref}@vN' "
                              f"or all of them with 'adapterhub rm {args.ref} --all'")
    removed = open_registry(args).remove(args.ref)
    print(f"removed {args.ref.split('@')[0]} {', '.join(removed)}")
    return 0


def add_commands(sub, parents: dict) -> None:
    s = sub.add_parser("list", parents=[parents["common"]], help="list the registry's adapters")
    s.add_argument("--json", action="store_true", help="print the cards as JSON instead of a table")
    s.set_defaults(func=cmd_list)
    s = sub.add_parser("show", parents=[parents["common"]], help="print an adapter's card")
    s.add_argument("ref", help="adapter: name (its current version) or name@vN")
    s.add_argument("--full", action="store_true", help="include the training log")
    s.add_argument("--table", action="store_true", help="print the test metrics as a table (methods x candidate "
                   "protocols, with bootstrap intervals) instead of the card")
    s.set_defaults(func=cmd_show)
    s = sub.add_parser("promote", parents=[parents["common"]], help="make a version current")
    s.add_argument("ref", help="the version to make current: name@vN")
    s.set_defaults(func=cmd_promote)
    s = sub.add_parser("rm", parents=[parents["common"]], help="remove a version (name@vN) or, with --all, an adapter")
    s.add_argument("ref", help="name@vN, or a bare name with --all")
    s.add_argument("--all", action="store_true", help="remove every version of a bare name")
    s.set_defaults(func=cmd_rm)
