"""Refreshing a published version's card with a new evaluation (adapterhub eval --update-card).

A version's weights, config and facts never change after publishing; its card may gain figures
measured later (the candidate protocols, say), so that every card reports the same protocols.
Only card.json is rewritten, atomically and under the name's registry lock, and the card says
when and how it was refreshed.
"""
from __future__ import annotations

import json
import time

from . import __version__
from .files import atomic_write
from .train.evaluate import verdict


def refresh(registry, key: str, result: dict, command: str, subset: bool = False) -> dict:
    """Write scoring.evaluate_version's `result` (one split, several protocols) into the card of
    version `key` ('name@vN'): the 'sampled' rows replace metrics[split] (the same examples the
    card was measured on, now with the rows without facts), the others go under
    protocols[split]; the verdict follows. subset: the result is on a sample of the card's
    examples (eval --n), so metrics[split] stays and 'sampled' goes under protocols[split] too,
    beside the others measured on that sample. -> the new card."""
    name = key.split("@")[0]
    split = result["split"]
    with registry._lock(name):   # the lock publish and promote take: one writer per name
        folder = registry.resolve(key)
        card = registry.card(key)
        tables = result["protocols"]
        if tables.get("sampled") and not subset:
            card.setdefault("metrics", {})[split] = tables["sampled"]
        others = {p: rows for p, rows in tables.items() if p != "sampled" or subset}
        if others:   # the protocols measured before stay: a card fills up one protocol at a time
            card.setdefault("protocols", {}).setdefault(split, {}).update(others)
        card["verdict"] = verdict(card)
        card.setdefault("refreshed", []).append({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                 "split": split, "protocols": list(tables),
                                                 "subset": subset, "n_examples": result["n_examples"], "command": command,
                                                 "adapterhub_version": __version__})
        atomic_write(folder / "card.json", json.dumps(card, indent=2, sort_keys=True))   # as publish writes it
    return card
