"""Merge several adapters into one new adapter (published to the registry).

Methods, for per-module deltas d_i = s_i * B_i @ A_i (s_i = alpha_i / r_i) and weights w_i:
  cat        exact: A = [A_1; A_2; ...], B = [w_1 s_1 B_1, w_2 s_2 B_2, ...], so B @ A = sum w_i d_i.
             Its rank is the sum of the parents' ranks.
  linear     PEFT's combination of A and B separately (same ranks only): A = sum sqrt(w_i s_i) A_i,
             B = sum sqrt(w_i s_i) B_i. B @ A then holds cross terms B_i A_j (PEFT issue #3004):
             it is NOT the weighted sum of the deltas. Kept because users know it from PEFT.
  svd        the exact weighted sum of deltas, truncated to `rank` by SVD (approximate).
  ties       TIES on the full deltas (keep the top `density` share by magnitude, elect a sign per
             entry, average the agreeing entries), then SVD to `rank`.
  dare_ties  as ties, but the trimming drops entries at random with probability 1 - density and
             rescales the kept ones by 1/density (seeded).
"""
from __future__ import annotations

import torch

from .errors import ConfigError, did_you_mean
from .lora import adapter_config, check_same_base, group_pairs, peft_key, split_peft_key

METHODS = ("cat", "linear", "svd", "ties", "dare_ties")


def read_pairs(registry, ref: str) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float, dict, dict]:
    """-> ({module path: (A, B)}, scale alpha/r, adapter_config, card), in fp32."""
    config, tensors, card, _ = registry.load(ref)
    r = config["r"]
    scale = config["lora_alpha"] / (r ** 0.5 if config.get("use_rslora") else r)
    pairs = {p: (ab["A"].float().clone(), ab["B"].float().clone()) for p, ab in group_pairs(tensors).items()}
    return pairs, scale, config, card


def _ties(deltas: list[torch.Tensor], density: float, dare: bool, gen: torch.Generator) -> torch.Tensor:
    trimmed = []
    for d in deltas:
        if dare:
            keep = torch.rand(d.shape, generator=gen) < density
            trimmed.append(d * keep / density)
        else:
            k = max(1, int(density * d.numel()))
            threshold = d.abs().flatten().kthvalue(d.numel() - k + 1).values
            trimmed.append(d * (d.abs() >= threshold))
    stack = torch.stack(trimmed)                          # (n, out, in)
    sign = torch.sign(stack.sum(0))                       # elected sign per entry
    agree = (torch.sign(stack) == sign) & (stack != 0)
    return (stack * agree).sum(0) / agree.sum(0).clamp(min=1)


def _svd(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    return Vh[:rank].contiguous(), (U[:, :rank] * S[:rank]).contiguous()  # A (rank, in), B (out, rank)


def merge_tensors(parents: list[tuple[dict, float, float]], method: str, rank: int | None = None,
                  density: float = 0.5, seed: int = 0) -> tuple[dict[str, torch.Tensor], int]:
    """parents: [(pairs, scale, weight)] -> (PEFT tensors with scale 1, new rank)."""
    if method not in METHODS:
        raise ConfigError(f"unknown merge method '{method}' (choose: {', '.join(METHODS)}).{did_you_mean(method, METHODS)}")
    if not 0 < density <= 1:
        raise ConfigError(f"density={density} must be in (0, 1]")
    paths = sorted({p for pairs, _, _ in parents for p in pairs})
    ranks = [next(iter(pairs.values()))[0].shape[0] for pairs, _, _ in parents]
    if method == "linear" and len(set(ranks)) > 1:
        raise ConfigError(f"method 'linear' needs equal ranks, got {ranks}; use 'cat' (exact) or 'svd'")
    new_rank = sum(ranks) if method == "cat" else (ranks[0] if method == "linear" else (rank or max(ranks)))
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for path in paths:
        present = [(pairs[path], s, w) for pairs, s, w in parents if path in pairs]
        if method == "cat":
            A = torch.cat([a for (a, _), _, _ in present])
            B = torch.cat([w * s * b for (_, b), s, w in present], dim=1)
            if len(present) < len(parents):  # pad so every module has the same rank
                pad = new_rank - A.shape[0]
                A = torch.cat([A, A.new_zeros(pad, A.shape[1])])
                B = torch.cat([B, B.new_zeros(B.shape[0], pad)], dim=1)
        elif method == "linear":
            A = sum(((w * s) ** 0.5) * a for (a, _), s, w in present)
            B = sum(((w * s) ** 0.5) * b for (_, b), s, w in present)
        else:
            deltas = [w * s * (b @ a) for (a, b), s, w in present]
            delta = sum(deltas) if method == "svd" else _ties(deltas, density, method == "dare_ties", gen)
            A, B = _svd(delta, new_rank)
        out[peft_key(path, "A")], out[peft_key(path, "B")] = A.contiguous(), B.contiguous()
    return out, new_rank


def merge(hub, weights: dict[str, float], method: str = "cat", name: str | None = None, rank: int | None = None,
          density: float = 0.5, seed: int = 0, description: str = "") -> str:
    """Merge registry adapters into a new adapter `name`; returns the new reference 'name@vN'."""
    from .registry import check_name
    if len(weights) < 2:
        raise ConfigError("a merge needs at least two adapters, e.g. {'news': 0.5, 'music': 0.5}")
    name = check_name(name or "-".join(ref.split("@")[0] for ref in weights)[:64])
    parents, cards = [], []
    for ref, w in weights.items():
        pairs, scale, _config, card = read_pairs(hub.registry, ref)
        check_same_base(card, hub.base, f"cannot merge '{ref}': it")
        parents.append((pairs, scale, float(w)))
        cards.append(card)
    tensors, new_rank = merge_tensors(parents, method, rank, density, seed)
    targets = sorted({split_peft_key(k)[0].rsplit(".", 1)[-1] for k in tensors})
    config = adapter_config(new_rank, float(new_rank), targets, hub.base.spec)
    exact = {"cat": "exact", "linear": "has cross terms (PEFT #3004)"}.get(method, f"approximate (rank {new_rank})")
    card = {"scenario": "+".join(c.get("scenario", "?") for c in cards),
            "description": description or f"{method} merge of {', '.join(weights)}: {exact}",
            "base": {"spec": hub.base.spec, "fingerprint": hub.fingerprint, "quant": hub.base.quant},
            "lora": {"r": new_rank, "alpha": float(new_rank), "targets": targets, "dropout": 0.0},
            "merge": {"method": method, "rank": new_rank, "density": density, "seed": seed, "exactness": exact},
            "parents": [{"ref": f"{c['name']}@{c['version']}", "weight": w, "role": "merge"}
                        for c, w in zip(cards, weights.values())],
            "metrics": {}}
    version = hub.registry.publish(name, tensors, config, card, promote=True)
    return f"{name}@{version}"
