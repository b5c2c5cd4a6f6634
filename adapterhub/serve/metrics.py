"""Prometheus metrics (prometheus-client), a request id on every request, and one access-log line each.

GET /metrics serves the text format from a registry of the app's own (several apps in one process
do not mix). Labels only take bounded values: route templates (not raw paths), status codes,
refusal reasons, and adapter versions that resolved (never a client's string).
"""
from __future__ import annotations

import logging
import re
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

access_log = logging.getLogger("adapterhub.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
LATENCY_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKENS = (16, 64, 256, 1024, 4096, 16384, 65536)
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("adapterhub_http_requests_total", "HTTP requests answered", ["method", "route", "status"],
                                registry=r)
        self.latency = Histogram("adapterhub_http_request_duration_seconds", "Time from request to response",
                                 ["route"], buckets=LATENCY_S, registry=r)
        self.queue_wait = Histogram("adapterhub_queue_wait_seconds", "Time a request waited for its first forward",
                                    buckets=LATENCY_S, registry=r)
        self.forward = Histogram("adapterhub_forward_seconds", "Time of one batched forward", buckets=LATENCY_S,
                                 registry=r)
        self.batch_items = Histogram("adapterhub_batch_items", "Score rows or ranking groups per forward",
                                     buckets=COUNTS, registry=r)
        self.batch_tokens = Histogram("adapterhub_batch_tokens", "Tokens per forward", buckets=TOKENS, registry=r)
        self.adapter_requests = Counter("adapterhub_adapter_requests_total", "Requests per adapter version",
                                        ["adapter"], registry=r)
        self.request_tokens = Counter("adapterhub_request_tokens_total", "Prompt tokens of admitted requests",
                                      registry=r)
        self.refused = Counter("adapterhub_refused_total", "Requests refused, by reason", ["reason"], registry=r)
        self.queue = Gauge("adapterhub_queue_requests", "Requests admitted and not finished", registry=r)
        self.resident = Gauge("adapterhub_resident_adapters", "Adapters resident over the base", registry=r)
        self.ready = Gauge("adapterhub_ready", "1 when the server takes scoring requests", registry=r)

    def on_batch(self, items: int, tokens: int, forward_s: float, waits: list[float]) -> None:
        """The batcher's callback after each forward."""
        self.batch_items.observe(items)
        self.batch_tokens.observe(tokens)
        self.forward.observe(forward_s)
        for w in waits:
            self.queue_wait.observe(w)

    def count_adapters(self, keys) -> None:
        for key in set(keys):
            self.adapter_requests.labels("base" if key is None else key).inc()


class Observe:
    """ASGI middleware: a request id (the client's X-Request-ID when it is a plain token, else a new
    one) in request.state and the response's headers; the request's metrics and access-log line; and
    its time in the app so far as a Server-Timing header ('app;dur=ms'), so that a client can tell
    the server's part of a slow reply from the network's and its own; for a request whose forward
    was awaited on the event loop, also its parts (queue, forward, resume: adapterhub.serve.forward)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        t = time.perf_counter()
        status = [500]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                parts = scope["state"].get("timing") or {}
                timing = ", ".join([f"app;dur={1000 * (time.perf_counter() - t):.2f}"]
                                   + [f"{k};dur={1000 * v:.2f}" for k, v in parts.items()]).encode()
                message = {**message, "headers": list(message.get("headers", [])) + [(b"x-request-id", rid.encode()),
                                                                                       (b"server-timing", timing)]}
            await send(message)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - t
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "OTHER"  # a label takes bounded values
            self.metrics.requests.labels(method, path, str(status[0])).inc()
            self.metrics.latency.labels(path).observe(seconds)
            client = scope.get("client")
            access_log.info('%s "%s %s" %d %.1fms id=%s', f"{client[0]}:{client[1]}" if client else "-",
                            method, path if path != "unmatched" else "(unmatched)", status[0],
                            1000 * seconds, rid)
