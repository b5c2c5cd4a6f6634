"""What the hub refuses before it runs anything: an adapter whose tensors it cannot serve, and a row
whose text would give a wrong score (no tokens: the forward would read a neighbour's token; a lone
surrogate: the tokenizer fails; more tokens than the base has positions). Each error names the row.
Candidate texts' token ids are kept per hub (an LRU), since a catalog's items recur in every ranking.
"""
from __future__ import annotations

import functools
from array import array

import torch

from .errors import DataError, IncompatibleAdapterError
from .lora import SERVABLE, group_pairs, scale_of

MAX_RANK = 256
SUFFIX_CACHE = 16_384  # candidate texts whose token ids a hub keeps: a catalog's items recur in every ranking
SUFFIX_CHARS = 256     # longer candidate texts are tokenized each time: the cache holds at most ~20 MB


def max_positions(model) -> int | None:
    """The longest prompt the base was built for (config.max_position_embeddings), or None if unknown."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def check_text(text, where: str) -> str:
    """`text` is a str that encodes as UTF-8 (a lone surrogate such as '\\ud800' does not)."""
    if not isinstance(text, str):
        raise DataError(f"{where}: expected text, got {type(text).__name__} {text!r:.60}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{where}: not valid Unicode text (character {e.start} is a lone surrogate "
                        f"{text[e.start]!r}); send UTF-8 text") from None
    return text


def encode_row(hub, text, where: str, special: bool = True, extra: int = 0) -> list[int]:
    """`text` -> token ids, refused when it has no token or when, with `extra` tokens before it (a
    shared prefix), it is longer than the base's positions."""
    text = check_text(text, where)
    ids = list(_suffix_ids(hub)(text)) if not special and len(text) <= SUFFIX_CHARS else hub.encode(text, special)
    if not ids:
        raise DataError(f"{where}: {text!r:.60} has no tokens; send a non-empty prompt")
    if hub.max_model_len is not None and extra + len(ids) > hub.max_model_len:
        raise DataError(f"{where}: {extra + len(ids)} tokens, over the base's {hub.max_model_len} positions "
                        f"({hub.base.spec}); shorten it")
    return ids


def _suffix_ids(hub):
    """The hub's cache of candidate token ids (a thread-safe LRU; made on first use). Re-ranking the same
    items, a server counts a request's tokens, and refuses one over budget, without the tokenizer."""
    cache = getattr(hub, "_suffix_ids", None)
    if cache is None:
        tokenizer = hub.tokenizer
        cache = hub._suffix_ids = functools.lru_cache(maxsize=SUFFIX_CACHE)(
            lambda text: array("i", tokenizer.encode(text, add_special_tokens=False)))  # 4 bytes an id
    return cache


class OverBudget(DataError):
    """More tokens than a caller's budget (a server's per-request limit): raised as soon as the count
    passes it, so refusing a huge request costs about the budget's worth of tokenizing, not the request's."""

    def __init__(self, counted: int, limit: int, what: str = "the request"):
        super().__init__(f"{what} has more than {limit} tokens ({counted} counted so far), over the per-request "
                         f"budget; send fewer or shorter items")
        self.counted, self.limit = counted, limit


def encode_rows(hub, rows, max_tokens: int | None = None) -> list[list[int]]:
    """[(ref, prompt), ...] -> token ids per row, every row checked (encode_row); OverBudget once the
    rows' tokens pass max_tokens."""
    out, total = [], 0
    for i, row in enumerate(rows):
        if not isinstance(row, (tuple, list)) or len(row) != 2:
            raise DataError(f"row {i}: expected an (adapter, prompt) pair, got {row!r:.60}")
        out.append(encode_row(hub, row[1], f"row {i}"))
        total += len(out[-1])
        if max_tokens is not None and total > max_tokens:
            raise OverBudget(total, max_tokens)
    return out


def check_items(items, where: str) -> list:
    """A ranking's items (titles or dataset ids): every title is valid text."""
    items = list(items)
    for i, item in enumerate(items):
        if isinstance(item, str):
            check_text(item, f"{where}[{i}]")
    return items


def check_and_cast(hub, key, config, tensors, card, folder) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """An adapter's PEFT tensors -> {module path: (A, B * scale)} in the base's compute dtype, or an
    IncompatibleAdapterError saying what this hub cannot serve."""
    from .lora import check_same_base
    check_same_base(card, hub.base, f"adapter '{key}'")
    r, alpha = config.get("r"), config.get("lora_alpha", config.get("alpha"))
    if not isinstance(r, int) or not 1 <= r <= MAX_RANK or not isinstance(alpha, (int, float)):
        raise IncompatibleAdapterError(f"{folder}/adapter_config.json: r={r!r}, lora_alpha={alpha!r}; "
                                       f"need an integer r in 1..{MAX_RANK} and a numeric alpha")
    for flag in ("use_dora", "fan_in_fan_out"):
        if config.get(flag):
            raise IncompatibleAdapterError(f"{folder}/adapter_config.json: {flag}=true is not served by adapterhub")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise IncompatibleAdapterError(f"{folder}/adapter_config.json: per-module rank_pattern/alpha_pattern are not served")
    scale = scale_of(config)
    halves = group_pairs(tensors, where=str(folder))
    for path in halves:
        if path not in hub.wrapped:
            leaf = path.rsplit(".", 1)[-1]
            raise IncompatibleAdapterError(f"adapter '{key}' targets module '{path}', which this hub cannot serve "
                                           f"(servable: {', '.join(SERVABLE)}); leaf name '{leaf}'")
    dtype = hub.base.compute_dtype
    placed = {}
    for path, ab in halves.items():
        mod = hub.wrapped[path]
        A, B = ab.get("A"), ab.get("B")
        if A is None or B is None or A.shape != (r, mod.in_features) or B.shape != (mod.out_features, r):
            raise IncompatibleAdapterError(
                f"adapter '{key}', module '{path}': expected A {(r, mod.in_features)} and B {(mod.out_features, r)}, "
                f"got A {None if A is None else tuple(A.shape)} and B {None if B is None else tuple(B.shape)}")
        if A.dtype != dtype or A.device != hub.device:
            A, B = A.to(hub.device, dtype), B.to(hub.device, dtype)
        placed[path] = (A, B.mul_(scale) if B.data_ptr() == ab["B"].data_ptr() else B * scale)
    if not placed:
        raise IncompatibleAdapterError(f"{folder}: the adapter holds no LoRA weights")
    return placed
