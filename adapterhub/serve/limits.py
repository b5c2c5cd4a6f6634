"""What bounds the server's work: body size, tokens per request and per forward, the queue, deadlines.

A scoring request goes through `Gate.run`:
1. admission, on the event loop (no thread, so a refusal is fast): 503 + Retry-After while the base
   is loading, while draining, or when `max_queue` requests are already admitted;
2. its plan: references resolved, prompts rendered, tokenized and counted. Over `max_model_len` or
   `max_request_tokens` is a 400, over `max_queue_tokens` queued a 503, all before any forward. A
   small request over resident adapters (`prepare_on_loop_chars`) is planned on the event loop, so
   a refusal costs no thread; any other in its thread (every admitted request has one: no hidden
   queue), before its forward;
3. the forward in the batcher (awaited on the loop by a request planned there, adapterhub.serve.forward;
   else waited for in its thread), which drops the request unstarted when it has waited
   `queue_timeout_s` (503) or when the client disconnects, and runs at most `max_batch_tokens` per forward;
4. `request_timeout_s` after arrival the client gets a 504, whatever is still running.
"""
from __future__ import annotations

import json
import threading
import time

import anyio
from fastapi import Request

from ..batcher import Refused
from .config import Limits
from .errors import ApiError, error_body


class Call:
    """One admitted request as its thread sees it: its deadlines, its cancel flag, its token count."""

    def __init__(self, limits: Limits):
        now = time.monotonic()
        self.start_by = now + limits.queue_timeout_s
        self.deadline = now + limits.request_timeout_s
        self.cancelled = threading.Event()
        self.tokens = 0
        self.timing: dict[str, float] = {}  # seconds per part of its forward's wait (serve.forward), for Server-Timing


class Gate:
    """Admission and the run of one scoring request (see the module's docstring)."""

    def __init__(self, limits: Limits, metrics=None):
        self.limits, self.metrics = limits, metrics
        self.limiter = anyio.CapacityLimiter(limits.max_queue)
        self._lock = threading.Lock()
        self.admitted = 0        # requests admitted and not finished (their thread may outlive a 504)
        self.tokens = 0          # their tokens, once counted
        self.ready = False       # the base is loaded
        self.not_ready = False   # shutting down: /ready says 503, work is still taken (adapterhub.serve.runner)
        self.draining = False    # shutting down: new work is refused

    def refuse(self, reason: str, message: str, status: int = 503):
        if self.metrics is not None:
            self.metrics.refused.labels(reason).inc()
        raise ApiError(status, message, headers={"Retry-After": str(self.limits.retry_after_s)} if status == 503
                       else None)

    def _admit(self) -> Call:
        if self.draining:
            self.refuse("draining", "the server is shutting down; retry on another replica")
        if not self.ready:
            self.refuse("loading", "the server is still loading its base; retry shortly (GET /ready says when)")
        with self._lock:
            if self.admitted >= self.limits.max_queue:
                full = True
            else:
                full = False
                self.admitted += 1
        if full:
            self.refuse("queue_full", f"server overloaded: {self.limits.max_queue} requests already queued "
                                      f"(--max-queue); retry after {self.limits.retry_after_s} s")
        return Call(self.limits)

    def count(self, call: Call, tokens: int) -> None:
        """In the request's thread, once its prompts are tokenized: the token budgets, before any forward."""
        limit = self.limits.max_request_tokens
        if tokens > limit:
            self.refuse("too_many_tokens", f"the request has {tokens} tokens, over the per-request budget of "
                                           f"{limit} (--max-request-tokens); send fewer or shorter items", 400)
        with self._lock:
            over = self.tokens + tokens > self.limits.max_queue_tokens and self.tokens > 0
            if not over:
                self.tokens += tokens
                call.tokens = tokens
        if over:
            self.refuse("queue_full", f"server overloaded: {self.tokens} tokens already queued "
                                      f"(--max-queue-tokens {self.limits.max_queue_tokens}); retry later")

    def _release(self, call: Call) -> None:
        with self._lock:
            self.admitted -= 1
            self.tokens -= call.tokens

    async def run(self, request: Request, plan, work, on_loop: bool = False, forward=None):
        """plan(call, on_loop) -> planned (tokenize, count, refuse), then work(planned, call) -> the response
        body (the forward), in a thread. With on_loop (a small request over resident adapters), the plan
        runs on the event loop first, so a refusal needs no thread (Cold from it: in the thread after
        all); and given `forward`, an async forward(planned, call) -> the body, the forward is awaited
        there too. See the module's docstring."""
        call = self._admit()
        end = _End(self, call)
        if on_loop:
            try:
                planned = plan(call, True)
            except Cold:
                on_loop = False
            except BaseException:
                end()
                raise
        awaited = on_loop and forward is not None

        def body():
            try:
                if not end.start():
                    raise Refused("cancelled", "the request was given up before its thread started")
                return work(planned if on_loop else plan(call, False), call)
            finally:
                end()

        async def in_loop():
            try:
                return await forward(planned, call)
            finally:
                end()
        out, error = None, None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch_disconnect, request, call.cancelled)
                with anyio.move_on_after(max(0.0, call.deadline - time.monotonic())) as scope:
                    try:
                        out = (await in_loop() if awaited else
                               await anyio.to_thread.run_sync(body, abandon_on_cancel=True, limiter=self.limiter))
                    except Exception as e:  # noqa: BLE001 - raised below, outside the task group (no ExceptionGroup)
                        error = e
                tg.cancel_scope.cancel()
        except BaseException:  # the server cancelled the handler (shutdown)
            call.cancelled.set()
            end(unstarted_only=True)
            raise
        if error is not None or scope.cancelled_caught:
            call.cancelled.set()  # what is left of its work in the batcher is dropped
            end(unstarted_only=True)  # a thread given up before it started never runs body()
        if error is not None:
            raise error
        if scope.cancelled_caught:
            if self.metrics is not None:
                self.metrics.refused.labels("deadline").inc()
            raise ApiError(504, f"no answer within the {self.limits.request_timeout_s:g} s deadline "
                                "(--request-timeout-s); the server is busy or the request is large")
        request.state.timing = call.timing  # Observe adds it to the reply's Server-Timing
        return out


class Cold(Exception):
    """A plan on the event loop that would need the disk (an adapter not resident): plan in a thread."""


class _End:
    """An admitted request's release from the gate, once, by whichever path ends it first. A thread
    started after its request was given up (start() -> False) does no work."""

    def __init__(self, gate: Gate, call: Call):
        self.gate, self.call, self._lock = gate, call, threading.Lock()
        self.started = self.ended = False

    def start(self) -> bool:
        with self._lock:
            self.started = not self.ended
            return self.started

    def __call__(self, unstarted_only: bool = False) -> None:
        with self._lock:
            if self.ended or (unstarted_only and self.started):
                return
            self.ended = True
        self.gate._release(self.call)


async def _watch_disconnect(request: Request, cancelled: threading.Event) -> None:
    """Sets `cancelled` when the client goes away (its work still queued is then dropped)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancelled.set()
            return


class BodyLimit:
    """ASGI middleware: 413 for a body over max_bytes, by Content-Length or as it streams in (the body is
    read here, up to the limit, and handed on whole)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        request = Request(scope)
        try:
            too_large = length is not None and int(length) > self.max_bytes
        except ValueError:
            return await send_json(send, 400, error_body(request, 400, f"bad Content-Length header {length!r}"))
        if too_large:
            return await send_json(send, 413, error_body(request, 413, f"request body of {int(length)} bytes is over "
                                                                       f"the {self.max_bytes}-byte limit (--max-body-bytes)"))
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await send_json(send, 413, error_body(request, 413, f"request body is over the "
                                                                           f"{self.max_bytes}-byte limit (--max-body-bytes)"))
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}
        await self.app(scope, replay, send)


async def send_json(send, status: int, payload: dict, headers: list | None = None) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + (headers or [])})
    await send({"type": "http.response.body", "body": body})
