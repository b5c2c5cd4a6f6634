"""`adapterhub serve`: an HTTP API over one hub (FastAPI + uvicorn: pip install 'adapterhub[serve]').

    adapterhub serve --registry adapters --preload news,music        # http://127.0.0.1:8000

    POST /score            {"rows": [{"adapter": "news", "prompt": "..."}, ...]}
                           or {"adapter": "news@v1", "prompts": ["...", ...]}
                           -> {"scores": [...], "adapters": ["news@v2", ...]}   (the version each row used)
    POST /recommend        {"adapter": "news", "history": [...], "candidates": [...], "k": 10, "raw": false}
                           -> {"adapter": "news@v2", "items": [{"item": "...", "score": 0.73}, ...]}
    GET  /adapters         the registry's adapters (current version, versions) and the resident ones
    POST /adapters/load    {"adapter": "news", "reload": true}: a promoted version replaces the resident one
    POST /adapters/unload  {"adapter": "news"}
    GET  /health

Adapters are named as in Python ('news', 'news@v1', 'base'); the registry resolves and checks them,
and no request can name a path. Concurrent requests are batched across adapters (adapterhub.batcher).
Errors are JSON {"error": "..."}: 400 a malformed reference, 404 an unknown adapter, 409 an adapter
this base cannot serve, 413 a body over the size limit, 422 a body that does not fit the schema.
There is no authentication: bind to 127.0.0.1 (the default) or put a proxy in front.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
from typing import Optional

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, model_validator
except ImportError as e:  # pragma: no cover - the message is the point
    from .errors import AdapterHubError
    raise AdapterHubError("adapterhub serve needs FastAPI and uvicorn: pip install 'adapterhub[serve]'") from e

from .batcher import WINDOW_MS, Batcher
from .errors import AdapterHubError, AdapterNotFoundError, IncompatibleAdapterError, RegistryError
from .hub import Hub
from .memory import rss_bytes
from .registry import parse_ref

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20      # a request body; larger ones get 413 before they are parsed
MAX_ROWS = 256                # rows of one /score request
MAX_TEXT_CHARS = 16_000       # one prompt or item text
MAX_ITEMS = 1_000             # candidates (or history items) of one /recommend request

Text = Field(max_length=MAX_TEXT_CHARS)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class Row(_Body):
    adapter: Optional[str] = Field(None, description="name, name@vN, or 'base' / null for the base alone")
    prompt: str = Text


class ScoreBody(_Body):
    rows: Optional[list[Row]] = Field(None, max_length=MAX_ROWS)
    adapter: Optional[str] = None
    prompts: Optional[list[str]] = Field(None, max_length=MAX_ROWS)

    @model_validator(mode="after")
    def _one_form(self):
        if (self.rows is None) == (self.prompts is None):
            raise ValueError("give either 'rows' [{adapter, prompt}] or 'adapter' + 'prompts'")
        if self.rows is not None and self.adapter is not None:
            raise ValueError("'adapter' goes with 'prompts'; with 'rows' each row names its adapter")
        if any(len(p) > MAX_TEXT_CHARS for p in self.prompts or ()):
            raise ValueError(f"a prompt is longer than {MAX_TEXT_CHARS} characters")
        return self

    def pairs(self) -> list[tuple[Optional[str], str]]:
        if self.rows is not None:
            return [(r.adapter, r.prompt) for r in self.rows]
        return [(self.adapter, p) for p in self.prompts]


class RecommendBody(_Body):
    adapter: str
    history: list[str] = Field(max_length=MAX_ITEMS)
    candidates: list[str] = Field(max_length=MAX_ITEMS)
    k: int = Field(10, ge=1, le=MAX_ITEMS)
    disliked: list[str] = Field(default_factory=list, max_length=MAX_ITEMS)
    scenario: Optional[str] = Field(None, max_length=64)
    raw: bool = Field(False, description="rank by the adapter's P(yes) alone, not the version's fused score")

    @model_validator(mode="after")
    def _texts(self):
        if any(len(t) > MAX_TEXT_CHARS for t in self.history + self.candidates + self.disliked):
            raise ValueError(f"an item text is longer than {MAX_TEXT_CHARS} characters")
        return self


class LoadBody(_Body):
    adapter: str
    reload: bool = Field(False, description="re-resolve a plain name: a promoted version replaces the resident one")


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _check(ref: str) -> str:
    """A malformed reference ('../x', '/abs', 'a@b') is the client's error: 400, before any disk access."""
    try:
        parse_ref(ref)
    except RegistryError as e:
        raise HTTPError(400, str(e)) from None
    return ref


def _resolve(hub: Hub, ref: Optional[str]) -> Optional[str]:
    """A client's adapter reference -> the resident key it means now (None: the base)."""
    if ref is None or ref == "base":
        return None
    return hub.load(_check(ref)).key


class _BodyLimit:
    """ASGI middleware: 413 for a body over max_bytes, by Content-Length or as it streams in (the body is
    read here, up to the limit, and handed on whole)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        try:
            too_large = length is not None and int(length) > self.max_bytes
        except ValueError:
            return await _send_json(send, 400, {"error": f"bad Content-Length header {length!r}"})
        if too_large:
            return await _send_json(send, 413, {"error": f"request body of {int(length)} bytes is over the "
                                                         f"{self.max_bytes}-byte limit"})
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _send_json(send, 413, {"error": f"request body is over the {self.max_bytes}-byte limit"})
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}
        await self.app(scope, replay, send)


async def _send_json(send, status: int, payload: dict) -> None:
    import json
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _Direct:
    """No gathering: each request's thread calls the (thread-safe) hub itself."""

    def __init__(self, hub: Hub):
        self.hub, self.batches, self._count = hub, 0, itertools.count(1)
        self.requests = 0

    def score(self, rows):
        out = self.hub.score(rows)
        self.requests = self.batches = next(self._count)
        return out

    def recommend(self, *args, **kwargs):
        out = self.hub.recommend(*args, **kwargs)
        self.requests = self.batches = next(self._count)
        return out

    def close(self):
        pass


def create_app(hub: Hub, window_ms: float = WINDOW_MS, max_rows: Optional[int] = None,
               max_body_bytes: int = MAX_BODY_BYTES, threads: Optional[int] = None, batch: bool = True) -> FastAPI:
    """The FastAPI app over `hub`; app.state.batcher batches its requests (batch=False: each request's
    thread runs its own forward). threads: requests handled at once (default: anyio's 40)."""
    batcher = Batcher(hub, window_ms=window_ms, max_rows=max_rows) if batch else _Direct(hub)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if threads:
            import anyio.to_thread
            anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        yield
        batcher.close()

    app = FastAPI(title="adapterhub", summary="One base LLM, many LoRA recommendation adapters", lifespan=lifespan)
    app.state.hub, app.state.batcher = hub, batcher
    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, e: HTTPError):
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(AdapterNotFoundError)
    async def _not_found(request: Request, e: AdapterNotFoundError):
        return JSONResponse({"error": str(e), "available": e.available}, status_code=404)

    @app.exception_handler(IncompatibleAdapterError)
    async def _incompatible(request: Request, e: IncompatibleAdapterError):
        return JSONResponse({"error": str(e)}, status_code=409)

    @app.exception_handler(AdapterHubError)
    async def _server_side(request: Request, e: AdapterHubError):  # e.g. a corrupt registry entry
        log.error("%s %s: %s", request.method, request.url.path, e)
        return JSONResponse({"error": str(e)}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _bad_body(request: Request, e: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'body'}: {err.get('msg')}"
                    for err in e.errors()]
        return JSONResponse({"error": "bad request body: " + "; ".join(problems)}, status_code=422)

    @app.post("/score")
    def score(body: ScoreBody):
        pairs = body.pairs()
        keys = {ref: _resolve(hub, ref) for ref in dict.fromkeys(ref for ref, _ in pairs)}
        rows = [(keys[ref], prompt) for ref, prompt in pairs]
        return {"scores": batcher.score(rows), "adapters": [key for key, _ in rows]}

    @app.post("/recommend")
    def recommend(body: RecommendBody):
        key = _resolve(hub, body.adapter)
        if key is None:
            raise HTTPError(400, "recommend needs an adapter (name or name@vN), not the base")
        ranked = batcher.recommend(key, body.history, body.candidates, k=body.k, disliked=body.disliked,
                                   scenario=body.scenario, raw=body.raw)
        return {"adapter": key, "items": [{"item": c, "score": s} for c, s in ranked]}

    @app.get("/adapters")
    def adapters():
        cards = [{k: c.get(k) for k in ("name", "current", "versions", "scenario", "description", "error") if k in c}
                 for c in hub.list()]
        return {"resident": hub.resident(), "adapters": cards}

    @app.post("/adapters/load")
    def load(body: LoadBody):
        adapter = hub.load(_check(body.adapter), reload=body.reload)
        return {"loaded": adapter.key, "resident": hub.resident()}

    @app.post("/adapters/unload")
    def unload(body: LoadBody):
        _check(body.adapter)
        return {"unloaded": hub.unload(body.adapter), "resident": hub.resident()}

    @app.get("/health")
    def health():
        return {"status": "ok", "base": hub.base.spec, "device": str(hub.device), "resident": len(hub.resident()),
                "requests": batcher.requests, "batches": batcher.batches, "rss_bytes": rss_bytes() or None, "pid": os.getpid()}

    return app


def serve(hub: Hub, host: str = "127.0.0.1", port: int = 8000, window_ms: Optional[float] = None,
          max_rows: Optional[int] = None, threads: int = 64, batch: bool = True) -> None:
    """Run the API until interrupted. threads: requests handled at once (each waits in the batcher)."""
    import uvicorn
    window_ms = WINDOW_MS if window_ms is None else window_ms
    uvicorn.run(create_app(hub, window_ms=window_ms, max_rows=max_rows, threads=threads, batch=batch), host=host,
                port=port, log_level="warning", access_log=False)
