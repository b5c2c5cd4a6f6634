"""The batcher's two kinds of forward: score rows of one adapter packed side by side into rows
(each attends only to itself, with its own positions: no padding, and each row's answer is what it
would be alone), and packed ranking groups in chunks of hub.batch_size rows."""
from __future__ import annotations

import torch

MIN_PACK_WIDTH = 256      # tokens: a packed row holds at least this many, or the longest prompt


def score_rows(hub, keys: list, ids: list[list[int]]) -> list[float]:
    """P(yes) per row: rows of one adapter packed side by side (first-fit, longest first)."""
    width = max(MIN_PACK_WIDTH, max(len(x) for x in ids))
    bins: list[tuple[object, list[int], list[int]]] = []  # (key, [tokens used], row indices)
    for i in sorted(range(len(ids)), key=lambda i: -len(ids[i])):
        for key, used, rows in bins:
            if key == keys[i] and used[0] + len(ids[i]) <= width:
                used[0] += len(ids[i])
                rows.append(i)
                break
        else:
            bins.append((keys[i], [len(ids[i])], [i]))
    probs = torch.sigmoid(chunked(hub, [key for key, _, _ in bins],
                                  [([], [ids[i] for i in rows]) for _, _, rows in bins])).tolist()
    out = [0.0] * len(ids)
    for p, i in zip(probs, (i for _, _, rows in bins for i in rows)):
        out[i] = p
    return out


def chunked(hub, keys: list, groups: list) -> torch.Tensor:
    """Hub.packed_logits over at most hub.batch_size packed rows per forward (bounds the masks)."""
    bs = hub.batch_size
    parts = [hub.packed_logits(keys[i:i + bs], groups[i:i + bs]) for i in range(0, len(groups), bs)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)
