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
  regmean    data-aware (adapterhub.regmean): per module, the delta that best reproduces each
             parent's delta on the inputs of that parent's own train prompts. Stored in cat form
             (no truncation: rank = the sum of the ranks). Needs each parent's data; weights weigh how much
             each parent's inputs count, so equal weights (sum or mean) give the same merge.
"""
from __future__ import annotations

import torch

import logging

from . import regmean
from .errors import AdapterHubError, ConfigError, did_you_mean
from .lora import adapter_config, check_same_base, group_pairs, peft_key, scale_of, split_peft_key

log = logging.getLogger(__name__)
METHODS = ("cat", "linear", "svd", "ties", "dare_ties", "regmean")
# what merge() does when not told: the recipe whose worst scenario kept the most of its gain on the
# full valid splits (benchmarks/merge/README.md: regmean, worst 79%, against 71% for cat-sum with the same
# parents; with earlier parents cat-sum 65%, ties-sum 54%, dare_ties-sum 56%): method, and weight per parent ("sum": 1 each, task arithmetic for cat,
# the same model as the composition "a+b"; "mean": 1/n each). regmean needs every parent's train
# data: without it the default falls back to FALLBACK_METHOD, and the card says why.
DEFAULT_METHOD, DEFAULT_WEIGHTS, FALLBACK_METHOD = "regmean", "sum", "cat"
REGMEAN_ALPHA = 0.9  # the Grams' off-diagonal scale (RegMean's regulariser)
KEPT_WARN = 0.5  # a merge keeping less than this share of a parent's gain over the base says so


def read_pairs(registry, ref: str) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float, dict, dict]:
    """-> ({module path: (A, B)}, scale alpha/r, adapter_config, card), in fp32."""
    config, tensors, card, _ = registry.load(ref)
    scale = scale_of(config)
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
                  density: float = 0.5, seed: int = 0, grams: list[dict] | None = None,
                  regmean_alpha: float = REGMEAN_ALPHA) -> tuple[dict[str, torch.Tensor], int]:
    """parents: [(pairs, scale, weight)] -> (PEFT tensors with scale 1, new rank).
    grams: regmean's, one {module path: Gram} per parent (adapterhub.regmean.parent_grams)."""
    if method not in METHODS:
        raise ConfigError(f"unknown merge method '{method}' (choose: {', '.join(METHODS)}).{did_you_mean(method, METHODS)}")
    if not 0 < density <= 1:
        raise ConfigError(f"density={density} must be in (0, 1]")
    if method == "regmean" and (grams is None or len(grams) != len(parents)):
        raise ConfigError("method 'regmean' needs one set of input Gram matrices per parent (adapterhub.regmean)")
    if not 0 <= regmean_alpha <= 1:
        raise ConfigError(f"regmean_alpha={regmean_alpha} must be in [0, 1]")
    paths = sorted({p for pairs, _, _ in parents for p in pairs})
    ranks = [next(iter(pairs.values()))[0].shape[0] for pairs, _, _ in parents]
    if method == "linear" and len(set(ranks)) > 1:
        raise ConfigError(f"method 'linear' needs equal ranks, got {ranks}; use 'cat' (exact) or 'svd'")
    new_rank = sum(ranks) if method in ("cat", "regmean") else (ranks[0] if method == "linear" else (rank or max(ranks)))
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for path in paths:
        present = [(pairs[path], s, w) for pairs, s, w in parents if path in pairs]
        if method in ("cat", "regmean"):
            if method == "cat":
                A = torch.cat([a for (a, _), _, _ in present])
                B = torch.cat([w * s * b for (_, b), s, w in present], dim=1)
            else:
                weighted = [(w * g[path], pairs.get(path), s) for (pairs, s, w), g in zip(parents, grams)]
                A, B = regmean.solve([(ab[0], s * ab[1], g) for g, ab, s in weighted if ab is not None],
                                     [g for g, _, _ in weighted], regmean_alpha)
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


def merge(hub, weights, method: str | None = None, name: str | None = None, rank: int | None = None,
          density: float = 0.5, seed: int = 0, description: str = "", measure: bool = True,
          regmean_alpha: float = REGMEAN_ALPHA) -> str:
    """Merge registry adapters into a new adapter `name`; returns the new reference 'name@vN'.

    weights: {ref: weight}, or a list of refs, weighted by the default rule (DEFAULT_WEIGHTS).
    method: default DEFAULT_METHOD, the measured best. measure: score the merge on each parent's
    valid split (as the parent's card measured it, with its facts) before publishing, and record
    kept = (merged - base) / (own - base) per parent in the card (parents whose data or facts are
    not here are listed as skipped); a parent kept below KEPT_WARN is warned about in the card."""
    from .registry import check_name
    if not isinstance(weights, dict):
        weights = weights_for(DEFAULT_WEIGHTS, list(weights))
    default, method = method is None, method or DEFAULT_METHOD
    if len(weights) < 2:
        raise ConfigError("a merge needs at least two adapters, e.g. {'news': 0.5, 'music': 0.5}")
    name = check_name(name or "-".join(ref.split("@")[0] for ref in weights)[:64])
    parents, cards = [], []
    for ref, w in weights.items():
        pairs, scale, _config, card = read_pairs(hub.registry, ref)
        check_same_base(card, hub.base, f"cannot merge '{ref}': it")
        parents.append((pairs, scale, float(w)))
        cards.append(card)
    grams, fallback = None, None
    if method == "regmean":  # each parent's inputs, from its own train prompts (before anything is written)
        paths = sorted({p for pairs, _, _ in parents for p in pairs})
        try:
            grams = [regmean.parent_grams(hub, f"{c['name']}@{c['version']}", c, paths) for c in cards]
        except AdapterHubError as e:
            if not default:
                raise
            method, fallback = FALLBACK_METHOD, f"merged with {FALLBACK_METHOD}, not the default regmean: {e}"
            log.warning("%s: %s", name, fallback)
    tensors, new_rank = merge_tensors(parents, method, rank, density, seed, grams, regmean_alpha)
    targets = sorted({split_peft_key(k)[0].rsplit(".", 1)[-1] for k in tensors})
    config = adapter_config(new_rank, float(new_rank), targets, hub.base.spec)
    exact = {"cat": "exact", "linear": "has cross terms (PEFT #3004)",
             "regmean": f"least-squares fit to the parents on their train inputs, not truncated (rank {new_rank})"
             }.get(method, f"approximate (rank {new_rank})")
    card = {"scenario": "+".join(c.get("scenario", "?") for c in cards),
            "description": description or f"{method} merge of {', '.join(weights)}: {exact}",
            "base": {"spec": hub.base.spec, "fingerprint": hub.fingerprint, "quant": hub.base.quant},
            "lora": {"r": new_rank, "alpha": float(new_rank), "targets": targets, "dropout": 0.0},
            "merge": {"method": method, "rank": new_rank, "density": density, "seed": seed, "exactness": exact,
                      **({"regmean": {"alpha": regmean_alpha, "train_examples_per_parent": regmean.N_EXAMPLES}}
                         if method == "regmean" else {}), **({"fallback": fallback} if fallback else {})},
            "parents": [{"ref": f"{c['name']}@{c['version']}", "weight": w, "role": "merge"}
                        for c, w in zip(cards, weights.values())],
            "metrics": {}}
    if measure:
        with hub.staged(f"{name}@measuring", config, tensors, card) as staged:
            card["merge"]["kept"] = kept_on_valid(hub, staged.key, cards)
        low = [f"{s}: kept {k['kept']:.0%} of its gain over the base (valid {k['metric']} {k['merged']:.3f}, "
               f"own {k['own']:.3f}, base {k['base']:.3f})"
               for s, k in card["merge"]["kept"].items() if k.get("kept") is not None and k["kept"] < KEPT_WARN]
        if low:
            card["warnings"] = [f"this merge keeps less than {KEPT_WARN:.0%} of a parent's gain: " + "; ".join(low)]
            log.warning("%s: %s", name, card["warnings"][0])
    version = hub.registry.publish(name, tensors, config, card, promote=True)
    return f"{name}@{version}"


def weights_for(rule: str, refs: list[str]) -> dict[str, float]:
    """A weight rule over parents: "sum" gives each 1.0 (task arithmetic), "mean" 1/n (an average)."""
    if rule not in ("sum", "mean"):
        raise ConfigError(f"unknown weight rule {rule!r} (choose: sum, mean)")
    return {r: 1.0 if rule == "sum" else 1.0 / max(1, len(refs)) for r in refs}


def kept_on_valid(hub, key: str, cards: list[dict]) -> dict[str, dict]:
    """Per parent scenario: adapter `key`'s primary metric on that parent's valid examples (the
    ones its card measured, with its facts in the prompts) beside the parent's own and the bare
    base's from its card, and kept = (merged - base) / (own - base). A parent that cannot be
    measured here (no data, no facts file, a joint or merged parent) gets {"skipped": why}."""
    from .evaluation import evaluate
    from .recommend import facts_of
    from .scoring import encode_examples, score_examples
    from .train import card_splits, load_card_data
    out = {}
    for card in cards:
        ref = f"{card['name']}@{card['version']}"
        scenario = card.get("scenario", card["name"])
        try:
            valid = (card.get("metrics") or {}).get("valid") or {}
            metric = card.get("primary_metric")
            if card.get("scenarios") or "merge" in card or metric not in (valid.get("adapter") or {}) \
                    or "sha256" not in (card.get("data") or {}):
                raise ConfigError("its card has no single-scenario valid metrics and data record "
                                  "(a joint, merged or imported adapter)")
            if "facts.json" in (card.get("files") or {}) and facts_of(hub.registry, ref) is None:
                raise ConfigError(f"its facts.json is not here (rebuild it: adapterhub facts {ref})")
            data = load_card_data(card)
            _, examples, _ = card_splits(card, data)
            scores = score_examples(hub, key, encode_examples(hub, data, examples, facts_of(hub.registry, ref)))
        except AdapterHubError as e:
            out[scenario] = {"parent": ref, "skipped": str(e)}
            continue
        own, base = valid["adapter"][metric], valid["base"][metric]
        merged = evaluate(data.task, examples, scores)[metric]
        out[scenario] = {"parent": ref, "metric": metric, "n": len(examples), "merged": round(merged, 4),
                         "own": round(own, 4), "base": round(base, 4),
                         "kept": round((merged - base) / (own - base), 4) if abs(own - base) > 1e-9 else None}
    return out
