"""Print the shipped adapters' table from their cards (nothing re-measured):

    python benchmarks/quality/adapter_table.py [adapters] [--all-versions | --protocols]

One row per current version: the test split's primary metric for the adapter alone (raw), the
fused score, the bare base and every no-learning rule, all on the same examples, with the 95%
bootstrap interval where the card has one; the test size, training and evaluation minutes, and
the verdict (which rules the raw and the fused score beat). --protocols: one row per scenario and
candidate protocol instead (sampled, catalog, popular, new; per-user AUC for a pointwise card).
"""
from __future__ import annotations

import sys

from adapterhub.protocols import PROTOCOLS
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


def test_rows(card: dict) -> dict:
    """The card's test figures under `sampled`: on its own examples, or, for a version measured on a
    sample of them only (a reblended version, eval --n), on that sample."""
    return ((card.get("metrics") or {}).get("test")
            or ((card.get("protocols") or {}).get("test") or {}).get("sampled") or {})


def size(card: dict, test: dict) -> str:
    first = next(iter(test.values()))
    n = card.get("data", {}).get("used", {}).get("test")
    if "n_groups" not in first:
        return f"{first.get('n', n)} examples"
    return f"{first['n_groups']} groups ({n} cands)"


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
            test = test_rows(card)
            if "adapter" not in test or card.get("scenarios"):  # a joint adapter: per-scenario rows in its card
                continue
            metric, scenario = card["primary_metric"], card.get("scenario", name)
            rule = RULE.get(scenario) or next((k for k in test if k.endswith("-overlap")), None)
            train_min = card.get("train", {}).get("train_s", 0) / 60
            eval_s = card.get("eval_s")   # (a reblended version's card was measured by eval --update-card)
            eval_min = f"{sum(eval_s.values()) / 60:.1f}" if eval_s else "-"
            out.append(f"| {scenario} | {name}@{v} | {metric} | {cell(test.get('adapter'), metric)} | "
                       f"{cell(test.get('adapter (fused)'), metric)} | {cell(test.get('base'), metric)} | "
                       f"{rule} {cell(test.get(rule), metric)} | {cell(test.get('most-popular'), metric)} | "
                       f"{cell(test.get('random'), metric)} | {auc(test)} | {size(card, test)} | {train_min:.1f} | "
                       f"{eval_min} | {verdict(test, metric, 'adapter')} | {verdict(test, metric, 'adapter (fused)')} |")
    return out


def protocol_rows(reg: Registry) -> list[str]:
    """One row per current scenario adapter and candidate protocol (docs/DATA.md): the test split's
    primary metric for each method, on that protocol's redrawn groups; a pointwise card gives its
    pooled AUC and its per-user AUC."""
    out = ["| scenario | protocol | test size | adapter (raw) | adapter (fused) | fused, no facts | base | rule | "
           "most-popular | random | fused beats most-popular and rule |", "|" + "---|" * 11]
    for name in reg.names():
        card = reg.card(f"{name}@{reg.current(name)}")
        protocols = (card.get("protocols") or {}).get("test") or {}
        test = test_rows(card)
        if "adapter" not in test or card.get("scenarios"):
            continue
        metric, scenario = card["primary_metric"], card.get("scenario", name)
        rule = RULE.get(scenario) or next((k for k in test if k.endswith("-overlap")), None)
        sampled = protocols.get("sampled") or test   # measured with the others on their sample (eval --n)
        if card.get("data", {}).get("task") == "pointwise":   # no other protocol: its own examples if measured
            sampled = test if "user_auc" in (test.get("adapter") or {}) else sampled
            tables = [("sampled", sampled, metric), ("per-user AUC", sampled, "user_auc")]
        else:
            tables = [("sampled", sampled, metric)]
        tables += [(p, protocols[p] or {}, metric) for p in PROTOCOLS[1:] if p in protocols]
        for protocol, rows, m in tables:
            if "adapter" not in rows:
                out.append(f"| {scenario} | {protocol} | no group kept | - | - | - | - | - | - | - | - |")
                continue
            first = rows["adapter"]
            n = f"{first['n_groups']} groups" if "n_groups" in first else f"{first.get('n', '?')} examples"
            fused = (rows.get("adapter (fused)") or {}).get(m)
            beats = "-" if fused is None else ("yes" if all(fused > (rows.get(k) or {}).get(m, -1)
                                                            for k in ("most-popular", rule)) else "no")
            out.append(f"| {scenario} | {protocol} | {n} | {cell(rows.get('adapter'), m)} | "
                       f"{cell(rows.get('adapter (fused)'), m)} | {cell(rows.get('adapter (fused, no facts)'), m)} | "
                       f"{cell(rows.get('base'), m)} | {rule} {cell(rows.get(rule), m)} | "
                       f"{cell(rows.get('most-popular'), m)} | {cell(rows.get('random'), m)} | {beats} |")
    return out


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    reg = Registry(args[0] if args else "adapters")
    print("\n".join(protocol_rows(reg) if "--protocols" in sys.argv else rows(reg, "--all-versions" in sys.argv)))
