"""RegMean merging: what each LoRA module's inputs look like in each parent's own scenario.

RegMean (Jin et al., ICLR 2023, "Dataless Knowledge Fusion by Merging Weights of Language
Models") picks, per linear module, the one delta d that best reproduces every parent's delta on
that parent's own inputs: it minimises sum_i ||d X_i - d_i X_i||^2, whose solution is

    d = (sum_i d_i G_i) (sum_i G_i)^-1,     G_i = X_i^T X_i (the Gram matrix of the module's inputs)

A task-arithmetic sum applies every parent's delta to every scenario's inputs; RegMean lets each
delta act where its own scenario's inputs lie. With LoRA parents, d_i G_i = s_i B_i (A_i G_i), so
d stays in the cat form: A'_i = A_i G_i (sum G)^-1 and B'_i = s_i B_i, rank = the sum of the ranks.

This module collects the G_i: the adapter's own forward over a sample of its train prompts (as it
was trained: its scenario's template and facts), with a hook on each LoRA module's input. The
solve itself is in adapterhub.merge. Only train data is read.
"""
from __future__ import annotations

import torch

from . import packing
from .errors import ConfigError

N_EXAMPLES = 256      # train prompts per parent: thousands of tokens, more than the inputs' width (576)
CHUNK_TOKENS = 2048   # tokens per forward while collecting


def parent_grams(hub, ref: str, card: dict, paths, n: int = N_EXAMPLES, seed: int = 0) -> dict[str, torch.Tensor]:
    """{module path: G / tokens} of adapter `ref` on n of its own train prompts (fp32), for the
    modules `paths` (those some parent targets)."""
    from .recommend import facts_of
    from .scoring import cap_examples, encode_examples
    from .train import card_splits, load_card_data
    if card.get("scenarios") or "merge" in card or "train" not in card:
        raise ConfigError(f"regmean needs each parent's own training data: {ref} is a joint, merged or "
                          "imported adapter; merge it with cat instead")
    data = load_card_data(card)
    train, _, _ = card_splits(card, data)
    examples = cap_examples(train, n, seed)
    encoded = encode_examples(hub, data, examples, facts_of(hub.registry, ref))
    return input_grams(hub, hub.load(ref).key, encoded, paths)


def input_grams(hub, key: str | None, encoded: list[tuple[list[int], list[int]]], paths) -> dict[str, torch.Tensor]:
    """Mean outer product of the input of each wrapped module in `paths` over every real token of
    `encoded` ([(prefix ids, suffix ids)], as scoring.encode_examples gives), under adapter `key`."""
    groups: dict[tuple, list[list[int]]] = {}
    for prefix, suffix in encoded:  # one user's candidates share their prefix, as in scoring
        groups.setdefault(tuple(prefix), []).append(suffix)
    chunks, cur, size = [], [], 0
    for prefix, suffixes in groups.items():
        cur.append((list(prefix), suffixes))
        size += len(prefix) + sum(map(len, suffixes))
        if size >= CHUNK_TOKENS:
            chunks.append(cur)
            cur, size = [], 0
    chunks += [cur] if cur else []
    sums: dict[str, torch.Tensor] = {}
    real = [0]  # tokens of the chunk in its one packed row; the pads after them are left out
    last: list = [None, None]  # q, k and v read the same input tensor: its Gram is computed once

    def hook(path):
        def pre(module, args):
            if last[0] is not args[0]:
                x = args[0].reshape(-1, args[0].shape[-1])[:real[0]].float()
                last[0], last[1] = args[0], x.T @ x
            sums[path] = last[1].clone() if path not in sums else sums[path].add_(last[1])
        return pre

    handles = [hub.wrapped[p].register_forward_pre_hook(hook(p)) for p in paths]
    tokens = 0
    try:
        with torch.inference_mode(), hub.use(key):
            for chunk in chunks:
                real[0] = sum(len(p) + sum(map(len, s)) for p, s in chunk)
                # share=False, prune=False: every prompt's tokens count in every layer's Grams (and in real[0])
                packed = packing.pack(chunk, hub.device, one_row=True, share=False)
                packing.last_hidden(hub.decoder, packed, prune=False)
                tokens += real[0]
    finally:
        for h in handles:
            h.remove()
        last.clear()
    return {p: (g / max(1, tokens)).cpu() for p, g in sums.items()}


def solve(present: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], all_grams: list[torch.Tensor],
          alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One module. present: [(A_i, scale_i * B_i, weight_i * G_i)] of the parents that
    target it; all_grams: every parent's weight_i * G_i for this module (a parent without a delta
    here still wants its inputs mapped as the base maps them). alpha scales the Grams' off-diagonal
    entries (the paper's regulariser; 1 = the exact least-squares solution). -> (A, B) in cat form.
    A weight scales a parent's Gram, so equal weights (sum or mean) give the same merge."""
    def shrink(g):
        return alpha * g + (1 - alpha) * torch.diag(torch.diagonal(g))
    total = sum(shrink(g) for g in all_grams)
    total = total + 1e-6 * total.diagonal().mean() * torch.eye(total.shape[0])  # never singular
    A = torch.cat([torch.linalg.solve(total, shrink(g) @ a.T).T for a, _, g in present])
    B = torch.cat([b for _, b, _ in present], dim=1)
    return A, B
