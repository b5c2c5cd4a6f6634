"""Print the shipped adapters' table from their cards (nothing re-measured):

    python benchmarks/quality/adapter_table.py [adapters] [--all-versions]

One row per current version: the test split's primary metric for the adapter alone (raw), the
fused score, the bare base and every no-learning rule, all on the same examples, with the 95%
bootstrap interval where the card has one; the test size, training and evaluation minutes, and
the verdict (which rules the raw and the fused score beat).
"""
from __future__ import annotations

import sys

from adapterhub.registry import Registry

RULE = {"video": "like-share+rate", "news": "category-overlap", "ecommerce": "brand-overlap",
        "music": "tag-overlap"}


def cell(row: dict | None, metric: str) -> str:
    if not row or metric not in row:
        return "-"
    ci = row.get(f"{metric}_ci95")
    return f"{row[metric]:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def auc(test: dict) -> str:
    """The LLM alone against the bare base on AUC (the bar: + 0.10 in every scenario)."""
    raw, base = (test.get(k, {}).get("auc") for k in ("adapter", "base"))
    return "-" if raw is None or base is None else f"{raw:.3f} / {base:.3f} ({raw - base:+.3f})"


def size(card: dict, test: dict) -> str:
    first = next(iter(test.values()))
    n = card.get("data", {}).get("used", {}).get("test")
    return f"{first['n_groups']} groups ({n} cands)" if "n_groups" in first else f"{n} examples"


def verdict(test: dict, metric: str, who: str) -> str:
    if who not in test:
        return "-"
    mine = test[who][metric]
    others = [k for k in test if not k.startswith("adapter") and metric in test[k]]
    lost = [k for k in others if test[k][metric] >= mine]
    return "beats all" if not lost else "loses to " + ", ".join(lost)


def rows(reg: Registry, all_versions: bool = False) -> list[str]:
    out = ["| scenario | version | metric (test) | adapter (raw) | adapter (fused) | base | rule | most-popular | "
           "random | AUC raw / base | test size | train min | eval min | raw | fused |", "|" + "---|" * 15]
    for name in reg.names():
        versions = reg.versions(name) if all_versions else [reg.current(name)]
        for v in versions:
            card = reg.card(f"{name}@{v}")
            test = (card.get("metrics") or {}).get("test") or {}
            if "adapter" not in test or card.get("scenarios"):  # a joint adapter: per-scenario rows in its card
                continue
            metric, scenario = card["primary_metric"], card.get("scenario", name)
            rule = RULE.get(scenario) or next((k for k in test if k.endswith("-overlap")), None)
            train_min = card.get("train", {}).get("train_s", 0) / 60
            eval_min = sum((card.get("eval_s") or {}).values()) / 60
            out.append(f"| {scenario} | {name}@{v} | {metric} | {cell(test.get('adapter'), metric)} | "
                       f"{cell(test.get('adapter (fused)'), metric)} | {cell(test.get('base'), metric)} | "
                       f"{rule} {cell(test.get(rule), metric)} | {cell(test.get('most-popular'), metric)} | "
                       f"{cell(test.get('random'), metric)} | {auc(test)} | {size(card, test)} | {train_min:.1f} | "
                       f"{eval_min:.1f} | {verdict(test, metric, 'adapter')} | {verdict(test, metric, 'adapter (fused)')} |")
    return out


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    print("\n".join(rows(Registry(args[0] if args else "adapters"), "--all-versions" in sys.argv)))
