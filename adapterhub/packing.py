"""Shared-prefix packing: one row per group, the history prefix once, every candidate after it.

A ranking group is one user's history prefix and several candidate suffixes. Instead of running
prefix+suffix once per candidate, a packed row is

    [prefix][cand 1][cand 2]...[cand K][pad]

with an attention mask under which each candidate sees the prefix and itself only, and position
ids that restart at len(prefix) for every candidate. Every candidate's last hidden state is then
exactly what it would be in its own prompt (tested), the prefix runs once, and the whole group
is one differentiable forward: the same trick serves scoring and training.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


WIDTH_STEP = 32


def pad_width(width: int) -> int:
    """Round a batch's width up to a multiple of WIDTH_STEP. oneDNN (torch's CPU matmuls) builds and
    caches a kernel per input shape: with a new width every batch, an evaluation of a few thousand
    prompts grew the process by GBs (measured 5 GB on video) and paid the build each time."""
    return -(-width // WIDTH_STEP) * WIDTH_STEP


@dataclass
class Packed:
    input_ids: torch.Tensor      # (rows, width)
    position_ids: torch.Tensor   # (rows, width)
    mask: torch.Tensor           # (rows, 1, width, width) additive float mask: 0 = attend, min = blocked
    last: tuple[torch.Tensor, torch.Tensor]  # (row, column) of each candidate's last token, flat order
    sizes: list[int]             # candidates per group


def pack(groups: list[tuple[list[int], list[list[int]]]], dtype: torch.dtype, device) -> Packed:
    """groups: [(prefix ids, [suffix ids, ...]), ...] -> one packed row per group."""
    widths = [len(p) + sum(len(s) for s in sufs) for p, sufs in groups]
    width = pad_width(max(widths))
    n = len(groups)
    input_ids = torch.zeros(n, width, dtype=torch.long)
    position_ids = torch.zeros(n, width, dtype=torch.long)
    segment = torch.full((n, width), -1, dtype=torch.long)  # -1 pad, 0 prefix, j candidate j
    rows, cols = [], []
    for g, (prefix, suffixes) in enumerate(groups):
        p = len(prefix)
        input_ids[g, :p] = torch.tensor(prefix)
        position_ids[g, :p] = torch.arange(p)
        segment[g, :p] = 0
        at = p
        for j, suf in enumerate(suffixes, start=1):
            m = len(suf)
            input_ids[g, at:at + m] = torch.tensor(suf)
            position_ids[g, at:at + m] = torch.arange(p, p + m)
            segment[g, at:at + m] = j
            rows.append(g)
            cols.append(at + m - 1)
            at += m
    seg_q, seg_k = segment[:, :, None], segment[:, None, :]  # (rows, width, 1), (rows, 1, width)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & (seg_k != -1) & ((seg_k == 0) | (seg_k == seg_q))
    # a pad query attends to itself only: a fully blocked row would make NaNs that leak into gradients
    allowed |= torch.eye(width, dtype=torch.bool) & (seg_q == -1)
    mask = torch.zeros(n, 1, width, width, dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return Packed(input_ids.to(device), position_ids.to(device), mask.to(device),
                  (torch.tensor(rows, device=device), torch.tensor(cols, device=device)),
                  [len(s) for _, s in groups])


def last_hidden(decoder, packed: Packed) -> torch.Tensor:
    """Final hidden state at each candidate's last token -> (candidates, hidden), groups in order."""
    h = decoder(input_ids=packed.input_ids, attention_mask=packed.mask, position_ids=packed.position_ids,
                use_cache=False).last_hidden_state  # (rows, width, hidden)
    return h[packed.last]
