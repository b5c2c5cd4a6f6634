"""The batcher's two kinds of forward: score rows of one adapter packed side by side into rows
(each attends only to itself, with its own positions: no padding, and each row's answer is what it
would be alone), and packed ranking groups in chunks of hub.batch_size rows. run_slices runs the
batcher's picks of one kind as one batch, here or in a lane's process (adapterhub.forward_process)."""
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


def flat(slices: list) -> tuple[list, list]:
    """The batcher's (request, first item, end item) slices -> (keys, items) of one batch."""
    return ([k for r, s, e in slices for k in r.keys[s:e]], [x for r, s, e in slices for x in r.items[s:e]])


@torch.inference_mode()
def run_flat(hub, kind: str, keys: list, items: list):
    """One batch: rows -> P(yes) floats per row; packed -> logits of every candidate (on the CPU:
    synchronised here, in the worker)."""
    return score_rows(hub, keys, items) if kind == "rows" else chunked(hub, keys, items).cpu()


def split(kind: str, slices: list, results) -> list:
    """run_flat's results over the slices -> each slice's part."""
    if kind == "rows":
        sizes = [e - s for _, s, e in slices]
    else:
        sizes = [sum(len(suffixes) for _, suffixes in r.items[s:e]) for r, s, e in slices]
    out, at = [], 0
    for n in sizes:
        out.append(results[at:at + n])
        at += n
    return out


def run_slices(hub, kind: str, slices: list, process=None) -> list:
    """One batch for the batcher's slices of one kind -> each slice's results (rows: P(yes) floats;
    packed: logits). process: a ForwardProcess that runs it (adapterhub.forward_process), else here."""
    keys, items = flat(slices)
    results = process.run(kind, keys, items) if process is not None else run_flat(hub, kind, keys, items)
    return split(kind, slices, results)
