"""Concurrent calls gathered into mixed batches: many callers, one forward at a time.

    batcher = Batcher(hub, window_ms=2, max_batch_tokens=2048)
    batcher.score([("news", prompt)])                      # from any number of threads
    batcher.recommend("music", history, candidates, k=10)
    with batcher.joined(deadline=time.monotonic() + 5, cancelled=event):
        ...                     # hub calls here are batched, and dropped unstarted once past the deadline or cancelled

A call runs the hub's own `score` / `recommend` in the caller's thread (references resolved,
prompts rendered, tokenized and checked there), up to the forward: that is handed to one worker
thread, which runs the waiting requests' items (score rows, packed side by side; or ranking groups
of one history prefix and its candidates) through Hub.packed_logits (adapterhub.side_by_side), or
hands them to its process (`processes`, adapterhub.forward_process). A caller on an event loop
queues its tokenized items with `submit` and is called back instead (adapterhub.serve.forward).

Each forward holds at most `max_rows` items and `max_batch_tokens` tokens (one item over the budget
runs alone). A request too big for one forward runs over several, its items in order, and the
forwards in between serve other requests (Batcher._pick): a heavy request neither stalls light ones
for more than about one forward nor starves. With `bulk_tokens`, requests over it run on a second
worker whose forwards pause twice a layer while the first has work (adapterhub.give_way; in a
process: at idle priority).
Before each forward the worker drops the requests whose deadline has passed or whose caller gave up
(`cancelled`), unstarted items and all; their callers get `Refused`. While a forward runs, new
requests queue for the next one; before it starts one, the worker waits for callers inside
`joined()` but still tokenizing, up to `window_ms` after the oldest request arrived (a submitted
request comes tokenized: there is nothing to wait for).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from dataclasses import dataclass, field

import torch

from . import give_way, side_by_side
from .errors import AdapterHubError, ConfigError, DataError
from .forward_process import ForwardProcess, ForwardProcessError
from .hub import BATCHER, Hub

log = logging.getLogger(__name__)
WINDOW_MS = 2.0
MAX_ROWS = 32             # score rows (or ranking groups) per forward
MAX_BATCH_TOKENS = 4096   # tokens per forward (an item over it runs alone)
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
    on_done: object = None   # called (no arguments) in the worker's thread once it is answered or refused

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
                 max_batch_tokens: int | None = None, on_batch=None, bulk_tokens: int | None = None,
                 processes: bool = False, bulk_idle: bool = False, _main: "Batcher | None" = None):
        """window_ms: how long the oldest waiting request waits for others to join its batch.
        max_rows: score rows or ranking groups per forward (default MAX_ROWS); max_batch_tokens: tokens
        per forward (default MAX_BATCH_TOKENS). on_batch(items, tokens, forward_s, queue_waits_s):
        called after each forward (the server's metrics). bulk_tokens: a request of more tokens runs
        on a second worker (the bulk lane), whose forwards pause twice a decoder layer while this
        lane has work: a light request waits for half a layer of a heavy forward, not for all of it
        (bulk_idle: its thread also runs at the OS's idle priority, give_way.idle_priority; only for a
        process with cores of its own). None: one worker for all. processes: each lane's forwards run
        in a process of its own (adapterhub.forward_process; the bulk lane's at idle priority, with no
        pauses), not in its thread."""
        if window_ms < 0:
            raise ConfigError(f"window_ms={window_ms} must be >= 0")
        for name, value in (("max_rows", max_rows), ("max_batch_tokens", max_batch_tokens),
                            ("bulk_tokens", bulk_tokens)):
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value} must be >= 1")
        self.hub, self.window_s, self.on_batch = hub, window_ms / 1000, on_batch
        self.max_rows, self.max_batch_tokens = max_rows or MAX_ROWS, max_batch_tokens or MAX_BATCH_TOKENS
        self._queue: list[_Request] = []
        self._running: list[_Request] = []   # the requests of the forward running now
        self._cv, self._closed = threading.Condition(), False
        self._coming = 0   # callers inside score/recommend that have not handed over their rows yet
        self._batches = self._requests = 0   # forwards run, requests answered (this lane)
        self.main, self.bulk_tokens, self.bulk, self.bulk_idle = _main, bulk_tokens, None, bulk_idle
        name = "adapterhub-batcher" + ("-bulk" if _main is not None else "")
        self.process = ForwardProcess(hub, name, low_priority=_main is not None) if processes else None
        if bulk_tokens is not None:
            if not processes:
                give_way.pause_points(hub)
            try:
                self.bulk = Batcher(hub, 0, max_rows, max_batch_tokens, on_batch, processes=processes, _main=self)
            except BaseException:
                if self.process is not None:  # (no worker yet: only the process to stop)
                    self.process.close()
                raise
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
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
        batcher. The worker drops this call's unstarted work, and the call raises Refused, once past
        `deadline` (time.monotonic()), once `cancelled` is set, or when not started by `start_by`."""
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

    def submit(self, kind: str, keys: list, items: list, deadline: float | None = None,
               cancelled: threading.Event | None = None, start_by: float | None = None, on_done=None):
        """Queue a request without waiting for it (a caller on an event loop) -> (the request, its lane).
        kind: 'rows' (token ids per row, as rows()) or 'packed' (ranking groups, as packed()). on_done()
        is called once req.result or req.error is set (in the worker's thread, or the thread that
        refused it: drop_if_dead, abort) and must not block; meanwhile the caller
        calls lane.drop_if_dead(req) now and then, since the worker only looks between forwards."""
        req = _Request(kind, list(keys), list(items), deadline, cancelled, start_by, on_done=on_done)
        return req, self._enqueue(req)

    def _enqueue(self, req: _Request) -> "Batcher":
        lane = self.bulk if self.bulk is not None and req.left > self.bulk_tokens else self
        with self._cv:
            if self._closed:
                raise Refused("closed", "the batcher is closed")
        with lane._cv:
            lane._queue.append(req)
            lane._cv.notify_all()
        return lane

    def drop_if_dead(self, req: _Request) -> None:
        """Refuse `req` now if it is past a deadline or cancelled (see _drop_if_dead)."""
        with self._cv:
            self._drop_if_dead(req, time.monotonic())

    def _submit(self, req: _Request):
        counted = BATCHER.get() is self  # inside joined(): counted in _coming
        with self._cv:
            self._coming -= counted  # this caller no longer holds up a batch
            self._cv.notify_all()
        try:
            lane = self._enqueue(req)
            # the caller watches its own deadlines too: the worker only looks between forwards
            poll = None if req.deadline is None and req.cancelled is None and req.start_by is None else 0.05
            while not req.done.wait(poll):
                lane.drop_if_dead(req)
        finally:
            with self._cv:
                self._coming += counted  # (joined() counts it out again; a recommend may submit twice)
        if req.error is not None:
            raise req.error
        return req.result

    batches = property(lambda self: self._batches + (self.bulk.batches if self.bulk else 0), doc="forwards run")
    requests = property(lambda self: self._requests + (self.bulk.requests if self.bulk else 0), doc="requests answered")

    def depth(self) -> tuple[int, int]:
        """(requests waiting or running, their tokens not yet run), both lanes."""
        n, left = self.bulk.depth() if self.bulk is not None else (0, 0)
        with self._cv:
            return n + len(self._queue) + len(self._running), left + sum(r.left for r in self._queue)

    def close(self, timeout: float | None = None) -> None:
        """Answer what is queued, then stop the workers (and processes: a forward past `timeout` fails)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self.bulk is not None:
            self.bulk.close(timeout)
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)
            if self.process is not None:
                self.process.close()

    def abort(self, message: str = "the server is shutting down") -> int:
        """Refuse every request queued or running now (a running forward finishes, its answers are
        dropped) and close. -> how many were refused."""
        return self._abort(message) + (self.bulk._abort(message) if self.bulk is not None else 0)

    def _abort(self, message: str) -> int:
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
        if self.main is not None:   # the bulk lane's worker: its forwards give way to the main lane's
            give_way.enter_bulk_lane(self.main, idle=self.main.bulk_idle and self.process is None)
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
                now = time.monotonic()
                for r in list(self._queue):
                    self._drop_if_dead(r, now)
                picks = self._pick()
                self._running = [r for r, _, _ in picks]
            if picks:
                self._forward(picks)
            with self._cv:
                self._running = []
                self._cv.notify_all()   # a bulk forward paused for this lane goes on

    def _wait_idle(self, timeout: float) -> None:  # until this lane has nothing queued or running
        with self._cv:
            self._cv.wait_for(lambda: not (self._queue or self._running) or self._closed, timeout)

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
        """Run the picked slices (score rows, then ranking groups) and hand each request its part, or its error."""
        t = time.perf_counter()
        waits = [r.started - r.arrived for r, start, _ in picks if start == 0]
        for kind in ("rows", "packed"):
            mine = [p for p in picks if p[0].kind == kind]
            if not mine:
                continue
            try:
                results = side_by_side.run_slices(self.hub, kind, mine, self.process)
            except ForwardProcessError as e:  # the lane's process died or cannot start: no retry, all refused
                results = [e] * len(mine)
            except BaseException:  # noqa: BLE001 - whose items failed? each slice alone
                results = []
                for p in mine:
                    try:
                        results += side_by_side.run_slices(self.hub, kind, [p], self.process)
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
        self._batches += 1
        if self.on_batch is not None:
            self.on_batch(sum(e - s for _, s, e in picks), sum(sum(r.tokens[s:e]) for r, s, e in picks),
                          time.perf_counter() - t, waits)

    def _finish(self, r: _Request, error: BaseException | None) -> None:
        r.error = error
        if error is None:
            self._requests += 1
        r.done.set()
        if r.on_done is not None:
            try:
                r.on_done()
            except Exception:  # noqa: BLE001 - a caller's callback must not stop the worker (or the others' answers)
                log.exception("a request's on_done callback failed")
