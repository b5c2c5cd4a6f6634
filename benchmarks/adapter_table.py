"""Print the shipped adapters' table (from their cards, nothing re-measured):

    python benchmarks/adapter_table.py [adapters]
"""
from __future__ import annotations

import sys

from adapterhub.registry import Registry

HEURISTIC = {"video": "like-share+rate", "news": "category-overlap", "ecommerce": "brand-overlap", "music": "tag-overlap"}


def main(root: str = "adapters") -> None:
    reg = Registry(root)
    print("| scenario | adapter | metric (test) | adapter | base, no adapter | heuristic | most-popular | random | "
          "test examples | verdict |\n|---|---|---|---|---|---|---|---|---|---|")
    for card in reg.list():
        test = card.get("metrics", {}).get("test", {})
        if "adapter" not in test:
            continue
        scenario = card.get("scenario", "?")
        heur = HEURISTIC.get(scenario)
        for m in dict.fromkeys([card["primary_metric"], "auc"]):
            row = {k: test.get(k, {}).get(m) for k in ("adapter", "base", heur, "most-popular", "random")}
            beaten = [k for k in ("base", heur, "most-popular", "random") if row.get(k) is not None and row[k] > row["adapter"]]
            verdict = "beats all baselines" if not beaten else "loses to " + ", ".join(beaten)
            n = test["adapter"].get("n") or f"{test['adapter'].get('n_groups')} groups"
            cells = [f"{row[k]:.3f}" if row.get(k) is not None else "-" for k in ("adapter", "base", heur, "most-popular", "random")]
            cells[2] = f"{heur} {cells[2]}"
            print(f"| {scenario} | {card['name']}@{card['current']} | {m} | " + " | ".join(cells) + f" | {n} | {verdict} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
