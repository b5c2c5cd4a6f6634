"""Concurrent calls gathered into mixed batches: many callers, one forward at a time.

    batcher = Batcher(hub, window_ms=2, max_batch_tokens=2048)
    batcher.score([("news", prompt)])                      # from any number of threads
    batcher.recommend("music", history, candidates, k=10)
    with batcher.joined(deadline=time.monotonic() + 5, cancelled=event):
        ...                                                # hub calls here are batched, and dropped
                                                           # unstarted once past the deadline or cancelled

A call runs the hub's own `score` / `recommend` in the caller's thread (references resolved,
prompts rendered, tokenized and checked there), up to the forward: that is handed to one worker
thread, which runs the waiting requests' items (score rows, or ranking groups of one history prefix
and its candidates) through Hub.packed_logits, one adapter per packed group:
- score rows of one adapter are packed side by side into rows of about the longest prompt's width
  (first-fit, longest first), each attending only to itself with its own positions: no padding,
  and each row's answer is what it would be alone;
- a ranking group keeps its own packed row: a call's history prefix is shared by its own candidates.

Each forward holds at most `max_rows` items and `max_batch_tokens` tokens (one item over the budget
runs alone). A request too big for one forward runs over several, its items in order, and the
forwards in between serve other requests (Batcher._pick): a heavy request neither stalls light ones
for more than about one forward nor starves.

Before each forward the worker drops the requests whose deadline has passed or whose caller gave up
(`cancelled`), unstarted items and all; their callers get `Refused`. While a forward runs, new
requests queue for the next one; before it starts one, the worker waits for callers already inside
a call but still tokenizing, up to `window_ms` after the oldest request arrived.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from dataclasses import dataclass, field

import torch

from .errors import AdapterHubError, ConfigError, DataError
from .hub import BATCHER, Hub

WINDOW_MS = 2.0
MAX_ROWS = 32             # score rows (or ranking groups) per forward
MAX_BATCH_TOKENS = 4096   # tokens per forward (an item over it runs alone)
MIN_PACK_WIDTH = 256      # tokens: a packed row holds at least this many, or the longest prompt
STARVE_FORWARDS = 3       # a request passed over this many forwards in a row goes first in the next
# (deadline, cancelled event, start_by) of the call running in this thread, set by Batcher.joined
_CALL: contextvars.ContextVar = contextvars.ContextVar("adapterhub_batcher_call", default=(None, None, None))


class Refused(AdapterHubError, RuntimeError):
    """The batcher dropped a request before (some of) its forward ran. reason: 'deadline' (past its
    deadline), 'queue' (not started in time), 'cancelled' (its caller gave up) or 'closed' (shutting down)."""

    def __init__(self, reason: str, message: str, waited_s: float = 0.0):
        super().__init__(message)
        self.reason, self.waited_s = reason, waited_s


@dataclass
class _Request:
    kind: str                # "rows" (score) or "packed" (ranking)
    keys: list               # a key per item
    items: list              # rows: token ids per row; packed: (prefix ids, [suffix ids]) per group
    deadline: float | None = None              # its unstarted items are dropped after this (time.monotonic())
    cancelled: threading.Event | None = None   # ... or once this is set
    start_by: float | None = None              # ... or when its first forward has not started by then
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None
    tokens: list = field(default_factory=list)  # per item
    taken: int = 0           # items [0, taken) handed to a forward
    parts: list = field(default_factory=list)   # each finished forward's results for this request, in order
    started: float | None = None

    def __post_init__(self):
        self.skipped = 0  # forwards in a row that passed it over
        if self.kind == "rows":
            self.tokens = [len(x) for x in self.items]
        else:
            self.tokens = [len(p) + sum(map(len, s)) for p, s in self.items]
        self.left = sum(self.tokens)  # tokens not yet handed to a forward

    def dead(self, now: float) -> str | None:
        if self.cancelled is not None and self.cancelled.is_set():
            return "cancelled"
        if self.deadline is not None and now > self.deadline:
            return "deadline"
        if self.start_by is not None and self.started is None and now > self.start_by:
            return "queue"
        return None


class Batcher:
    """Gathers concurrent `score` / `recommend` calls on one hub into mixed batches."""

    def __init__(self, hub: Hub, window_ms: float = WINDOW_MS, max_rows: int | None = None,
                 max_batch_tokens: int | None = None, on_batch=None):
        """window_ms: how long the oldest waiting request waits for others to join its batch.
        max_rows: score rows or ranking groups per forward (default MAX_ROWS); max_batch_tokens: tokens
        per forward (default MAX_BATCH_TOKENS). on_batch(items, tokens, forward_s, queue_waits_s):
        called after each forward (the server's metrics)."""
        if window_ms < 0:
            raise ConfigError(f"window_ms={window_ms} must be >= 0")
        for name, value in (("max_rows", max_rows), ("max_batch_tokens", max_batch_tokens)):
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value} must be >= 1")
        self.hub = hub
        self.window_s = window_ms / 1000
        self.max_rows = max_rows or MAX_ROWS
        self.max_batch_tokens = max_batch_tokens or MAX_BATCH_TOKENS
        self.on_batch = on_batch
        self._queue: list[_Request] = []
        self._running: list[_Request] = []   # the requests of the forward running now
        self._cv = threading.Condition()
        self._closed = False
        self._coming = 0   # callers inside score/recommend that have not handed over their rows yet
        self.batches = 0   # forwards run
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
    def joined(self, deadline: float | None = None, cancelled: threading.Event | None = None,
               start_by: float | None = None):
        """Inside the `with`, this thread's hub forwards (Hub.score's rows, packed_logits) go through the
        batcher. The worker drops this call's unstarted work, and the call raises Refused, once
        time.monotonic() passes `deadline`, once `cancelled` is set, or when its first forward has not
        started by `start_by`."""
        token, call = BATCHER.set(self), _CALL.set((deadline, cancelled, start_by))
        with self._cv:
            self._coming += 1
        try:
            yield self
        finally:
            BATCHER.reset(token)
            _CALL.reset(call)
            with self._cv:
                self._coming -= 1
                self._cv.notify_all()

    def rows(self, keys: list, ids: list[list[int]]) -> list[float]:
        """Hub.score's rows for one caller (token ids): P(yes) per row."""
        if not ids:
            return []
        for i, x in enumerate(ids):
            if not x:  # packed beside another row it would read that row's last token
                raise DataError(f"row {i} has no tokens: every row needs at least one token of its own")
        return self._submit(_Request("rows", list(keys), list(ids), *_CALL.get()))

    def packed(self, key, groups: list) -> torch.Tensor:
        """Hub.packed_logits for one caller: the Yes-No logit of every candidate, groups in order."""
        if not groups:  # (a request of no item would never be picked)
            return torch.empty(0)
        keys = key if isinstance(key, list) else [key] * len(groups)
        return self._submit(_Request("packed", keys, list(groups), *_CALL.get()))

    def _submit(self, req: _Request):
        counted = BATCHER.get() is self  # inside joined(): counted in _coming
        with self._cv:
            if self._closed:
                raise Refused("closed", "the batcher is closed")
            self._queue.append(req)
            self._coming -= counted  # this caller no longer holds up a batch
            self._cv.notify_all()
        try:
            # the caller watches its own deadlines too: the worker only looks between forwards
            poll = None if req.deadline is None and req.cancelled is None and req.start_by is None else 0.05
            while not req.done.wait(poll):
                with self._cv:
                    self._drop_if_dead(req, time.monotonic())
        finally:
            with self._cv:
                self._coming += counted  # (joined() counts it out again; a recommend may submit twice)
        if req.error is not None:
            raise req.error
        return req.result

    def depth(self) -> tuple[int, int]:
        """(requests waiting or running, their tokens not yet run)."""
        with self._cv:
            return len(self._queue) + len(self._running), sum(r.left for r in self._queue)

    def close(self) -> None:
        """Answer what is queued, then stop the worker."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join()

    def abort(self, message: str = "the server is shutting down") -> int:
        """Refuse every request queued or running now (a running forward finishes, its answers are
        dropped) and close. -> how many were refused."""
        with self._cv:
            self._closed = True
            victims = [r for r in self._queue + self._running if not r.done.is_set()]
            self._queue.clear()
            for r in victims:
                self._finish(r, Refused("closed", message, time.monotonic() - r.arrived))
            self._cv.notify_all()
        return len(victims)

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
                while (not self._closed and self._coming > 0 and self.window_s > 0
                       and sum(len(r.items) - r.taken for r in self._queue) < self.max_rows):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                self._drop_dead()
                picks = self._pick()
                self._running = [r for r, _, _ in picks]
            if picks:
                self._forward(picks)
            with self._cv:
                self._running = []

    def _drop_dead(self) -> None:
        now = time.monotonic()
        for r in list(self._queue):
            self._drop_if_dead(r, now)

    def _drop_if_dead(self, r: _Request, now: float) -> None:
        """(Under the lock.) Refuse `r`, and drop its unstarted items, once past a deadline or cancelled;
        a forward already running its items finishes, and its answer for `r` is dropped."""
        why = None if r.done.is_set() else r.dead(now)
        if why is None:
            return
        if r in self._queue:
            self._queue.remove(r)
        msg = {"cancelled": "the caller went away",
               "deadline": f"its deadline passed after {now - r.arrived:.2f} s",
               "queue": f"it waited {now - r.arrived:.2f} s in the queue (--queue-timeout-s); the server is busy, "
                        "retry later"}[why]
        self._finish(r, Refused(why, f"request dropped, its work not run: {msg}", now - r.arrived))

    def _pick(self) -> list[tuple[_Request, int, int]]:
        """(request, first item, end item) slices for one forward, within max_rows and max_batch_tokens.
        The lightest requests first, and only those that finish in this forward (a heavy one pads no
        light one's forward, unless nothing else waits); but a request passed over STARVE_FORWARDS
        forwards in a row goes first, so a heavy one gets at least one forward in STARVE_FORWARDS + 1."""
        starved = [r for r in self._queue if r.skipped >= STARVE_FORWARDS]
        order = starved + sorted((r for r in self._queue if r.skipped < STARVE_FORWARDS), key=lambda r: r.left)
        rows, tokens, picks = self.max_rows, self.max_batch_tokens, []
        for r in order:
            if picks and r.skipped < STARVE_FORWARDS and (r.left > tokens or len(r.items) - r.taken > rows):
                break
            start = end = r.taken
            while end < len(r.items) and rows > 0 and (r.tokens[end] <= tokens or not picks and end == start):
                tokens -= r.tokens[end]
                rows -= 1
                end += 1
            if end > start:
                picks.append((r, start, end))
            if rows <= 0 or tokens <= 0:
                break
        chosen = {id(r) for r, _, _ in picks}
        for r in self._queue:
            r.skipped = 0 if id(r) in chosen else r.skipped + 1
        now = time.monotonic()
        for r, start, end in picks:
            r.taken = end
            r.left -= sum(r.tokens[start:end])
            r.started = r.started or now
            if end == len(r.items):
                self._queue.remove(r)
        return picks

    def _forward(self, picks: list[tuple[_Request, int, int]]) -> None:
        """Run the picked slices (score rows in one forward, ranking groups in another) and hand each
        request its part; a request whose part raised gets that error alone."""
        t = time.perf_counter()
        waits = [r.started - r.arrived for r, start, _ in picks if start == 0]
        for kind in ("rows", "packed"):
            mine = [p for p in picks if p[0].kind == kind]
            if not mine:
                continue
            try:
                results = self._run_slices(kind, mine)
            except BaseException:  # noqa: BLE001 - whose items failed? each slice alone
                results = []
                for p in mine:
                    try:
                        results += self._run_slices(kind, [p])
                    except BaseException as e:  # noqa: BLE001 - handed to the caller, which raises it
                        results.append(e)
            with self._cv:
                for (r, _, end), res in zip(mine, results):
                    if r.done.is_set():  # refused meanwhile (abort)
                        continue
                    if isinstance(res, BaseException):
                        if r in self._queue:
                            self._queue.remove(r)
                        self._finish(r, res)
                        continue
                    r.parts.append(res)
                    if end == len(r.items):
                        r.result = (sum(r.parts, []) if kind == "rows" else
                                    r.parts[0] if len(r.parts) == 1 else torch.cat(r.parts))
                        self._finish(r, None)
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(sum(e - s for _, s, e in picks), sum(sum(r.tokens[s:e]) for r, s, e in picks),
                          time.perf_counter() - t, waits)

    def _finish(self, r: _Request, error: BaseException | None) -> None:
        r.error = error
        if error is None:
            self.requests += 1
        r.done.set()

    @torch.inference_mode()
    def _run_slices(self, kind: str, slices: list[tuple[_Request, int, int]]) -> list:
        """One batch for all of the slices (one kind) -> each slice's results (rows: floats; packed: logits)."""
        keys = [k for r, s, e in slices for k in r.keys[s:e]]
        items = [x for r, s, e in slices for x in r.items[s:e]]
        if kind == "rows":
            flat = self._score_rows(keys, items)
            sizes = [e - s for _, s, e in slices]
        else:
            flat = self._chunked(keys, items)
            sizes = [sum(len(suffixes) for _, suffixes in r.items[s:e]) for r, s, e in slices]
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
