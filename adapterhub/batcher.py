"""Concurrent calls gathered into mixed batches: many callers, one forward.

    batcher = Batcher(hub, window_ms=2)
    batcher.score([("news", prompt)])                      # from any number of threads
    batcher.recommend("music", history, candidates, k=10)

A call runs the hub's own `score` / `recommend` in the caller's thread (references resolved,
prompts rendered and tokenized there), up to the forward: that is handed to one worker thread. The
worker takes the requests waiting (up to `max_rows` rows) and runs them as one mixed batch through
Hub.packed_logits (adapterhub.packing), one adapter per packed row:
- score rows of one adapter are packed side by side into rows of about the longest prompt's width
  (first-fit, longest first), each attending only to itself with its own positions: no padding,
  and each row's answer is what it would be alone;
- ranking groups keep their own packed row each: a call's history prefix is shared by its own
  candidates only.
Each caller gets its own rows back, or the error its own rows raised.

While the worker runs a batch, new requests queue for the next one. Before it starts a batch, the
worker waits for callers already inside a call but still tokenizing, up to `window_ms` after the
oldest request arrived; a lone call does not wait.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import torch

from .errors import ConfigError
from .hub import BATCHER, Hub

WINDOW_MS = 2.0
MAX_ROWS = 32          # score rows (or ranking groups) per batch
MIN_PACK_WIDTH = 256   # tokens: a packed row holds at least this many, or the longest prompt


@dataclass
class _Request:
    kind: str                # "rows" (score) or "packed" (ranking)
    keys: object             # rows: a key per row; packed: one key or a key per group
    items: list              # rows: token ids per row; packed: [(prefix ids, [suffix ids])] per group
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None

    @property
    def size(self) -> int:
        return len(self.items)


class Batcher:
    """Gathers concurrent `score` / `recommend` calls on one hub into mixed batches."""

    def __init__(self, hub: Hub, window_ms: float = WINDOW_MS, max_rows: int | None = None):
        """window_ms: how long the oldest waiting request waits for others to join its batch.
        max_rows: score rows or ranking groups per batch (default MAX_ROWS)."""
        if window_ms < 0:
            raise ConfigError(f"window_ms={window_ms} must be >= 0")
        if max_rows is not None and max_rows < 1:
            raise ConfigError(f"max_rows={max_rows} must be >= 1")
        self.hub = hub
        self.window_s = window_ms / 1000
        self.max_rows = max_rows or MAX_ROWS
        self._queue: list[_Request] = []
        self._cv = threading.Condition()
        self._closed = False
        self._coming = 0   # callers inside score/recommend that have not handed over their rows yet
        self.batches = 0   # forwards run (score batches + ranking batches)
        self.requests = 0  # requests answered
        self._worker = threading.Thread(target=self._run, name="adapterhub-batcher", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------ the callers' side
    def score(self, rows) -> list[float]:
        """hub.score(rows), its forward batched with other threads' calls."""
        with self.joined():
            return self.hub.score(rows)

    def recommend(self, ref: str, history: list[str], candidates: list[str], k: int = 10,
                  disliked: list[str] = (), scenario: str | None = None, raw: bool = False) -> list[tuple[str, float]]:
        """hub.recommend(...), its forward batched with other threads' calls."""
        with self.joined():
            return self.hub.recommend(ref, history, candidates, k=k, disliked=disliked, scenario=scenario, raw=raw)

    @contextlib.contextmanager
    def joined(self):
        """Inside the `with`, this thread's hub forwards (Hub.score's rows, packed_logits) go through the batcher."""
        token = BATCHER.set(self)
        with self._cv:
            self._coming += 1
        try:
            yield self
        finally:
            BATCHER.reset(token)
            with self._cv:
                self._coming -= 1
                self._cv.notify_all()

    def rows(self, keys: list, ids: list[list[int]]) -> list[float]:
        """Hub.score's rows for one caller (token ids): P(yes) per row."""
        if not ids:
            return []
        return self._submit(_Request("rows", list(keys), list(ids)))

    def packed(self, key, groups: list) -> torch.Tensor:
        """Hub.packed_logits for one caller: the Yes-No logit of every candidate, groups in order."""
        keys = key if isinstance(key, list) else [key] * len(groups)
        return self._submit(_Request("packed", keys, list(groups)))

    def _submit(self, req: _Request):
        counted = BATCHER.get() is self  # inside joined(): counted in _coming
        with self._cv:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append(req)
            self._coming -= counted  # this caller no longer holds up a batch
            self._cv.notify_all()
        try:
            req.done.wait()
        finally:
            with self._cv:
                self._coming += counted  # (joined() counts it out again; a recommend may submit twice)
        if req.error is not None:
            raise req.error
        return req.result

    def close(self) -> None:
        """Answer what is queued, then stop the worker."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ the worker
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                deadline = self._queue[0].arrived + self.window_s
                while not self._closed and self._coming > 0 and sum(r.size for r in self._queue) < self.max_rows:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                batch, rows = [], 0
                while self._queue and (not batch or rows + self._queue[0].size <= self.max_rows):
                    req = self._queue.pop(0)
                    batch.append(req)
                    rows += req.size
            for kind in ("rows", "packed"):
                reqs = [r for r in batch if r.kind == kind]
                if reqs:
                    self._answer(reqs)

    def _answer(self, reqs: list[_Request]) -> None:
        try:
            results = self._forward(reqs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller, which raises it
            if len(reqs) > 1:  # whose rows failed? each request alone
                for r in reqs:
                    self._answer([r])
                return
            reqs[0].error, results = e, [None]
        for r, res in zip(reqs, results):
            r.result = res
        self.batches += 1
        self.requests += len(reqs)
        for r in reqs:
            r.done.set()

    @torch.inference_mode()
    def _forward(self, reqs: list[_Request]) -> list:
        """One mixed batch for all of reqs (one kind) -> each request's own result."""
        keys = [k for r in reqs for k in r.keys]
        items = [x for r in reqs for x in r.items]
        if reqs[0].kind == "rows":
            flat = self._score_rows(keys, items)
            sizes = [r.size for r in reqs]
        else:
            flat = self._chunked(keys, items)
            sizes = [sum(len(suffixes) for _, suffixes in r.items) for r in reqs]
        out, at = [], 0
        for n in sizes:
            out.append(flat[at:at + n])
            at += n
        return out

    def _score_rows(self, keys: list, ids: list[list[int]]) -> list[float]:
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
        probs = torch.sigmoid(self._chunked([key for key, _, _ in bins],
                                            [([], [ids[i] for i in rows]) for _, _, rows in bins])).tolist()
        out = [0.0] * len(ids)
        for p, i in zip(probs, (i for _, _, rows in bins for i in rows)):
            out[i] = p
        return out

    def _chunked(self, keys: list, groups: list) -> torch.Tensor:
        """Hub.packed_logits over at most hub.batch_size packed rows per forward (bounds the masks)."""
        bs = self.hub.batch_size
        parts = [self.hub.packed_logits(keys[i:i + bs], groups[i:i + bs]) for i in range(0, len(groups), bs)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)
