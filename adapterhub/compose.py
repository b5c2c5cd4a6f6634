"""Load-time composition: `hub.load("news+music")` serves the sum of the parents' deltas.

A composition reference joins adapter references with '+', each optionally weighted:

    news+music              d = d_news + d_music          (task arithmetic, weights 1)
    0.5*news+0.5*music@v1   d = 0.5 d_news + 0.5 d_music@v1

The composed adapter is the exact 'cat' merge (adapterhub.merge): A = [A_1; A_2], B = [w_1 s_1 B_1,
w_2 s_2 B_2], so B @ A = sum w_i d_i. Nothing is published; it is resident like any adapter (its
key names every parent's version, e.g. 'news@v2+music@v1') and can be chosen per call or per row.
"""
from __future__ import annotations

import re
from pathlib import Path

from .errors import ConfigError, IncompatibleAdapterError
from .lora import adapter_config, split_peft_key
from .registry import parse_ref

_WEIGHT = re.compile(r"^([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\*(.+)$")


def is_composition(ref) -> bool:
    return isinstance(ref, str) and ("+" in ref or "*" in ref)


def parse(ref: str) -> list[tuple[float, str]]:
    """'0.5*news+music@v1' -> [(0.5, 'news'), (1.0, 'music@v1')]; each part is checked like any ref."""
    parts = []
    for part in ref.split("+"):
        part = part.strip()
        m = _WEIGHT.match(part)
        weight, sub = (float(m.group(1)), m.group(2)) if m else (1.0, part)
        if not part or "*" in sub:
            raise ConfigError(f"invalid composition {ref!r}: write parts as 'name', 'name@vN' or 'W*name', joined by "
                              "'+', e.g. 'news+music' or '0.5*news+0.5*music'")
        parse_ref(sub)
        parts.append((weight, sub))
    if len(parts) < 2:
        raise ConfigError(f"a composition needs two adapters or more, e.g. 'news+music' (got {ref!r})")
    return parts


def canonical(registry, ref: str) -> str:
    """Every part resolved to its version now: '0.5*news+music' -> '0.5*news@v2+music@v1'."""
    out = []
    for weight, sub in parse(ref):
        name, version = parse_ref(sub)
        key = f"{name}@{version or registry.resolve(name).name}"
        out.append(key if weight == 1.0 else f"{weight:g}*{key}")
    return "+".join(out)


def build(registry, key: str) -> tuple[dict, dict, dict, Path]:
    """-> (adapter_config, PEFT tensors, card, folder) of the composed adapter, as Registry.load gives them."""
    from .merge import merge_tensors, read_pairs
    parents, cards = [], []
    for weight, sub in parse(key):
        pairs, scale, _config, card = read_pairs(registry, sub)
        parents.append((pairs, scale, weight))
        cards.append(card)
    prints = {(c.get("base") or {}).get("fingerprint") for c in cards}
    if len(prints) > 1:
        raise IncompatibleAdapterError(f"cannot compose {key!r}: its parents were trained on different bases "
                                       f"(fingerprints {', '.join(sorted(map(str, prints)))})")
    for card in cards:  # a custom scenario's prompt sentences travel with its card
        if card.get("templates"):
            from .prompts import register_templates
            register_templates(card.get("scenario", card.get("name")), **card["templates"])
    tensors, rank = merge_tensors(parents, "cat")
    targets = {split_peft_key(k)[0].rsplit(".", 1)[-1] for k in tensors}
    config = adapter_config(rank, float(rank), targets, (cards[0].get("base") or {}).get("spec") or "")
    card = {"scenario": "+".join(c.get("scenario", "?") for c in cards),
            "base": cards[0].get("base") or {},
            "composed": [{"ref": sub, "weight": w} for w, sub in parse(key)],
            "description": f"load-time sum of {len(cards)} adapters' deltas (exact cat merge): {key}"}
    return config, tensors, card, Path(registry.root) / key
