"""The FastAPI app over one hub: routes, and the wiring of limits, auth, metrics and errors."""
from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Optional, Union

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import checks, forward_process, ranking
from ..batcher import WINDOW_MS, Batcher, Refused
from ..errors import ConfigError, RegistryError
from ..hub import Hub
from ..memory import rss_bytes
from ..registry import parse_ref
from . import errors, forward
from .auth import Auth, require_admin, require_key
from .errors import ApiError, Redactor
from .config import Limits
from .limits import BodyLimit, Call, Cold, Gate
from .metrics import Metrics, Observe
from .schemas import (LoadBody, LoraLoadBody, LoraUnloadBody, ModelCard, ModelList, RecommendBody, RerankBody,
                      RerankReply, ScoreBody, ScoreReply)

log = logging.getLogger("adapterhub.serve")
LOOP_PAIRS = 4096  # history x candidate pairs a ranking planned on the event loop may have (~2 ms with facts)


class _Direct:
    """No gathering (--no-batch): each request's thread runs its own forward on the (thread-safe) hub."""

    def __init__(self, hub: Hub):
        self.hub, self.batches, self.requests, self._count = hub, 0, 0, itertools.count(1)

    @contextlib.contextmanager
    def joined(self, deadline=None, cancelled=None, start_by=None):
        if cancelled is not None and cancelled.is_set():
            raise Refused("cancelled", "the caller went away")
        yield self
        self.requests = self.batches = next(self._count)

    def depth(self) -> tuple[int, int]:
        return 0, 0

    def close(self, timeout=None) -> None:
        pass

    def abort(self, message: str = "") -> int:
        return 0


def _check(ref: str) -> str:
    """A malformed reference ('../x', '/abs', 'a@b') is the client's error: 400, before any disk access."""
    try:
        parse_ref(ref)
    except RegistryError as e:
        raise ApiError(400, str(e), "model") from None
    return ref


def _resolve(hub: Hub, ref: Optional[str], disk: bool = True) -> Optional[str]:
    """A client's adapter reference -> the resident key it means now (None: the base). disk=False (on
    the event loop): Cold when that needs the disk (not resident, or evicted since it was checked)."""
    if ref is None or ref == "base":
        return None
    if not disk:
        key = hub._key(_check(ref), disk=False)
        if key is None:
            raise Cold(ref)
        return key
    return hub.load(_check(ref)).key


def scenarios_of(card: dict, key: str) -> list[str]:
    joint = card.get("scenarios") or {}
    return list(joint) if joint else [card.get("scenario", key.split("@")[0])]


def create_app(hub: Union[Hub, Callable[[], Hub]], window_ms: float = WINDOW_MS, max_rows: Optional[int] = None,
               max_body_bytes: Optional[int] = None, threads: Optional[int] = None, batch: bool = True,
               limits: Optional[Limits] = None, auth: Optional[Auth] = None, gc_freeze: bool = False,
               processes: bool = False, bulk_idle: bool = False) -> FastAPI:
    """The app over `hub`, or over the hub `hub()` builds (it then loads in a thread at start-up; /health
    answers meanwhile and /ready says 503 until it is done). app.state.batcher batches the requests
    (batch=False: each request's thread runs its own forward). threads: an old name of
    limits.max_queue (every admitted request has a thread). gc_freeze (adapterhub serve sets it): once
    the hub is loaded, every object alive then leaves the garbage collector's view. A full collection
    of a server's heap (the base, the libraries: 419-512k objects on random:small or SmolLM2) holds
    the GIL, so every request, for 222-271 ms (benchmarks/serving_load/gc_pause.py); frozen, those
    objects, which live as long as the server, are never walked again. processes: the batcher's forwards
    run in processes of their own (adapterhub.forward_process), not in its threads. bulk_idle: the Batcher's."""
    limits = limits or Limits()
    if max_body_bytes is not None:
        limits = limits.replace(max_body_bytes=max_body_bytes)
    if threads is not None:
        limits = limits.replace(max_queue=threads)
    limits.check()
    metrics = Metrics()
    gate = Gate(limits, metrics)
    state = {"hub": None, "batcher": None, "error": None}

    def start(h: Hub) -> None:
        state["batcher"] = (Batcher(h, window_ms=window_ms, max_rows=max_rows, max_batch_tokens=limits.max_batch_tokens,
                                    on_batch=metrics.on_batch, bulk_tokens=limits.bulk_tokens, processes=processes,
                                    bulk_idle=bulk_idle)
                             if batch else _Direct(h))
        state["hub"] = h
        app.state.hub, app.state.batcher = h, state["batcher"]
        app.state.redact = Redactor(h.registry.root)
        metrics.resident.set_function(lambda: len(h.resident()))
        if gc_freeze:   # before ready: the collection below holds the GIL for a quarter of a second
            gc.collect()
            gc.freeze()
            app.state.gc_frozen = gc.get_freeze_count()
        gate.ready = True

    def build() -> None:
        try:
            start(hub())
        except BaseException as e:  # noqa: BLE001 - /ready reports it, and app.state.on_load_error (runner: stop)
            state["error"] = f"{type(e).__name__}: {e}"
            app.state.load_error = e
            log.error("the hub failed to load: %s", state["error"])
            if app.state.on_load_error is not None:
                app.state.on_load_error(e)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if not isinstance(hub, Hub):
            threading.Thread(target=build, name="adapterhub-load", daemon=True).start()
        yield
        if state["batcher"] is not None:
            state["batcher"].abort("the server is shutting down")
            state["batcher"].close(timeout=0)   # its forward processes stopped; a stuck worker not waited for

    app = FastAPI(title="adapterhub", version="1", lifespan=lifespan,
                  summary="One base LLM, many LoRA recommendation adapters: rerank, score, list models")
    app.state.limits, app.state.metrics, app.state.gate = limits, metrics, gate
    app.state.auth = auth or Auth()
    app.state.redact = Redactor()
    app.state.load_error, app.state.on_load_error = None, None
    app.state.gc_freeze, app.state.gc_frozen = gc_freeze, 0
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(Observe, metrics=metrics)  # outermost: every reply has a request id and a log line
    metrics.ready.set_function(lambda: float(gate.ready and not gate.not_ready and not gate.draining))
    metrics.queue.set_function(lambda: gate.admitted)
    if isinstance(hub, Hub):
        start(hub)
    keyed = [Depends(require_key)]

    def max_len(h: Hub) -> Optional[int]:
        """The tighter of --max-model-len and the base's positions."""
        known = [n for n in (limits.max_model_len, h.max_model_len) if n]
        return min(known) if known else None

    # ------------------------------------------------------------ the work, in the request's thread
    def score_plan(pairs, call: Call, loop: bool) -> tuple:
        """Tokenize and count a /score request -> (keys, ids); a 400 or 503 for what it may not run."""
        h = state["hub"]
        keys = {ref: _resolve(h, ref, disk=not loop) for ref in dict.fromkeys(ref for ref, _ in pairs)}
        rows = [(keys[ref], prompt) for ref, prompt in pairs]
        try:
            ids = checks.encode_rows(h, rows, max_tokens=limits.max_request_tokens)
        except checks.OverBudget as e:
            gate.refuse("too_many_tokens", f"{e} (--max-request-tokens)", 400)
        longest = max_len(h)
        for i, x in enumerate(ids):
            if longest and len(x) > longest:
                raise ApiError(400, f"row {i}: {len(x)} tokens, over --max-model-len {longest}; shorten it", "rows")
        gate.count(call, sum(map(len, ids)))
        metrics.count_adapters(keys.values())
        metrics.request_tokens.inc(call.tokens)
        return [k for k, _ in rows], ids

    def score_work(planned: tuple, call: Call) -> dict:
        h, batcher = state["hub"], state["batcher"]
        keys, ids = planned
        with batcher.joined(deadline=call.deadline, cancelled=call.cancelled, start_by=call.start_by):
            return score_reply(keys, h._score_rows(keys, ids), call)

    def score_reply(keys, scores, call: Call) -> dict:
        return {"scores": scores, "adapters": keys, "usage": {"total_tokens": call.tokens}}

    def rank_plan(ref: str, history, candidates, disliked, scenario, call: Call, loop: bool):
        """Render, tokenize and count a ranking -> (key, ranking.Ranking); a 400 or 503 for what it may not run."""
        h = state["hub"]
        key = _resolve(h, ref, disk=not loop)
        if key is None:
            raise ApiError(400, "ranking needs an adapter (a name or name@vN), not the base", "model")
        adapter = h.resident_adapter(key) if loop else h.load(key)
        if adapter is None:  # evicted by another thread since it was resolved: read it in a thread
            raise Cold(ref)
        try:
            planned = ranking.plan(h, key, history, candidates, disliked, scenario, adapter=adapter,
                                   max_group_tokens=limits.max_batch_tokens, max_tokens=limits.max_request_tokens)
        except checks.OverBudget as e:
            ranked.add((key, scenario))
            gate.refuse("too_many_tokens", f"{e} (--max-request-tokens)", 400)
        except ConfigError as e:  # a scenario the adapter was not trained for
            raise ApiError(400, str(e), "scenario", allowed=scenarios_of(adapter.card, key)) from None
        ranked.add((key, scenario))  # its facts are read now: its next rankings may be planned on the loop
        longest = max_len(h)
        prefix = len(planned.groups[0][0]) if planned.groups else 0
        widest = prefix + max((len(s) for _, sufs in planned.groups for s in sufs), default=0)
        if longest and widest > longest:
            raise ApiError(400, f"history + a candidate is {widest} tokens, over --max-model-len {longest}; send a "
                                "shorter history", "query")
        gate.count(call, planned.tokens)
        metrics.count_adapters([key])
        metrics.request_tokens.inc(call.tokens)
        return key, planned

    def rank_work(planned: tuple, raw: bool, call: Call):
        """-> (key, scores in candidate order, tokens)."""
        h, batcher = state["hub"], state["batcher"]
        key, plan = planned
        with batcher.joined(deadline=call.deadline, cancelled=call.cancelled, start_by=call.start_by):
            scores = ranking.scores(h, plan, raw)
        return key, scores, call.tokens

    async def score_awaited(planned: tuple, call: Call) -> dict:
        keys, ids = planned
        return score_reply(keys, await forward.scored(state["batcher"], keys, ids, call), call)

    async def rank_awaited(planned: tuple, raw: bool, call: Call):
        key, plan = planned
        return key, await forward.ranked(state["batcher"], plan, raw, call), call.tokens

    async def ranked_scores(request: Request, model, history, candidates, disliked, scenario, raw: bool):
        """One ranking through the gate (/v1/rerank and /recommend) -> (key, scores in candidate order, tokens).
        Without the batcher (batch=False) its forward runs in its thread."""
        return await gate.run(
            request, lambda call, loop: rank_plan(model, history, candidates, disliked, scenario, call, loop),
            lambda planned, call: rank_work(planned, raw, call),
            on_loop=on_loop([model], [*history, *candidates, *disliked], history, candidates, scenario, True),
            forward=(lambda planned, call: rank_awaited(planned, raw, call)) if batch else None)

    ranked: set = set()  # (key, scenario) ranked here before: its facts are in memory

    def on_loop(refs, texts, history=(), candidates=(), scenario=None, ranking_: bool = False) -> bool:
        """Plan a request on the event loop: few characters; few history x candidate pairs (with facts,
        each candidate is compared with each history item, here and after the forward); every adapter
        it names resident; for a ranking, its version ranked here before (its facts read from the disk)."""
        most, h = limits.prepare_on_loop_chars, state["hub"]
        if (most is None or h is None or sum(map(len, texts)) > most
                or len(history) * len(candidates) > LOOP_PAIRS):
            return False
        try:
            keys = [_resolve(h, ref, disk=False) for ref in refs]
        except (Cold, ApiError):  # not resident, or a malformed name (refused by the plan, in a thread)
            return False
        return not ranking_ or all((k, scenario) in ranked for k in keys)

    # ------------------------------------------------------------ scoring routes
    @app.post("/v1/rerank", response_model=RerankReply, response_model_exclude_none=True, dependencies=keyed,
              tags=["ranking"])
    async def rerank(body: RerankBody, request: Request):
        """Rank `documents` (the candidates) for a user whose history is `query`, as Cohere, Jina and vLLM
        rerank. `relevance_score` is the adapter's (fused) probability that the user likes the item."""
        texts = body.texts()
        key, scores, tokens = await ranked_scores(request, body.model, body.history(), texts, body.disliked,
                                                  body.scenario, body.raw)
        order = sorted(range(len(texts)), key=lambda i: -scores[i])[:body.top_n or len(texts)]
        return {"id": f"rerank-{request.state.request_id}", "model": key, "usage": {"total_tokens": tokens},
                "results": [{"index": i, "relevance_score": scores[i],
                             **({"document": {"text": texts[i]}} if body.return_documents else {})} for i in order]}

    @app.post("/score", response_model=ScoreReply, dependencies=keyed, tags=["scoring"])
    async def score(body: ScoreBody, request: Request):
        """P(yes) of whole prompts: {"rows": [{model, prompt}, ...]} (one adapter per row) or
        {"model": ..., "prompts": [...]}."""
        pairs = body.pairs()
        return await gate.run(request, lambda call, loop: score_plan(pairs, call, loop), score_work,
                              on_loop=on_loop({ref for ref, _ in pairs}, [p for _, p in pairs]),
                              forward=score_awaited if batch else None)

    @app.post("/recommend", dependencies=keyed, tags=["ranking"])
    async def recommend(body: RecommendBody, request: Request):
        """The first ranking route: top-k {item, score} of `candidates` for `history` (see /v1/rerank)."""
        key, scores, _ = await ranked_scores(request, body.model, body.history, body.candidates, body.disliked,
                                             body.scenario, body.raw)
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[:body.k]
        return {"adapter": key, "items": [{"item": body.candidates[i], "score": scores[i]} for i in order]}

    # ------------------------------------------------------------ models and adapters
    def hub_or_503() -> Hub:
        if state["hub"] is None:
            raise ApiError(503, "the server is still loading its base; retry shortly", headers={"Retry-After": "1"})
        return state["hub"]

    def model_cards(h: Hub) -> list[ModelCard]:
        resident = h.resident()
        out = [ModelCard(id="base", root=Path(str(h.base.spec)).name, scenarios=[],
                         description="the base alone, no adapter")]
        for c in h.list():
            name = c.get("name") or "?"
            out.append(ModelCard(id=name, root=f"{name}@{c.get('current')}", parent="base", current=c.get("current"),
                                 versions=c.get("versions") or [], description=c.get("description"),
                                 scenarios=scenarios_of(c, name) if "error" not in c else [],
                                 resident=[k for k in resident if k.split("@")[0] == name],
                                 error=app.state.redact(c["error"]) if c.get("error") else None))
        return out

    @app.get("/v1/models", response_model=ModelList, dependencies=keyed, tags=["models"])
    def list_models():
        """Every adapter of the registry (a name means its current version; name@vN pins one), and 'base'."""
        return ModelList(data=model_cards(hub_or_503()))

    @app.get("/v1/models/{model_id}", response_model=ModelCard, dependencies=keyed, tags=["models"])
    def get_model(model_id: str):
        h = hub_or_503()
        if model_id != "base":
            h.registry.resolve(_check(model_id))  # 404 with the names there are
        return next(c for c in model_cards(h) if c.id == model_id.split("@")[0])

    @app.get("/adapters", dependencies=keyed, tags=["models"])
    def adapters():
        """The first listing route (see /v1/models)."""
        h = hub_or_503()
        cards = [{k: (app.state.redact(c[k]) if k == "error" else c[k])
                  for k in ("name", "current", "versions", "scenario", "description", "error") if k in c}
                 for c in h.list()]
        return {"resident": h.resident(), "adapters": cards}

    def load(ref: str, reload: bool) -> dict:
        h = hub_or_503()
        before = set(h.resident())
        adapter = h.load(_check(ref), reload=reload)
        resident = h.resident()
        sync([adapter.key], before - set(resident))  # (a version a reload replaced)
        return {"loaded": adapter.key, "resident": resident}

    def unload(ref: str) -> dict:
        h = hub_or_503()
        keys = h.unload(_check(ref))
        sync((), keys)
        return {"unloaded": keys, "resident": h.resident()}

    def sync(loaded, unloaded) -> None:  # the same in the forward processes
        forward_process.sync(state["batcher"], loaded, sorted(unloaded))

    admin = [Depends(require_admin)]

    @app.post("/adapters/load", dependencies=admin, tags=["admin"])
    def load_adapter(body: LoadBody):
        """Load an adapter (reload=true: a promoted version replaces the one resident under its name)."""
        return load(body.model, body.reload)

    @app.post("/adapters/unload", dependencies=admin, tags=["admin"])
    def unload_adapter(body: LoadBody):
        return unload(body.model)

    @app.post("/v1/load_lora_adapter", dependencies=admin, tags=["admin"])
    def load_lora(body: LoraLoadBody):
        """vLLM's route: {"lora_name": "news", "reload": true}."""
        if body.lora_path is not None:
            raise ApiError(400, "adapters load from the registry by name; lora_path is not accepted", "lora_path")
        return load(body.lora_name, body.reload)

    @app.post("/v1/unload_lora_adapter", dependencies=admin, tags=["admin"])
    def unload_lora(body: LoraUnloadBody):
        return unload(body.lora_name)

    # ------------------------------------------------------------ probes and metrics (no key, no thread)
    @app.get("/health", tags=["probes"])
    async def health():
        """Liveness: answers while the process runs, however busy its workers are."""
        h, b = state["hub"], state["batcher"]
        return {"status": "ok", "base": Path(str(h.base.spec)).name if h else None,
                "device": str(h.device) if h else None, "resident": len(h.resident()) if h else 0,
                "queue": gate.admitted, "requests": b.requests if b else 0, "batches": b.batches if b else 0,
                "rss_bytes": rss_bytes() or None, "pid": os.getpid()}

    @app.get("/ready", tags=["probes"])
    async def ready():
        """Readiness: 200 when the base is loaded, the server is not draining and its queue has room."""
        status = ("failed" if state["error"] else "loading" if not gate.ready else "draining" if gate.not_ready or gate.draining
                  else "overloaded" if gate.admitted >= limits.max_queue else "ready")
        body = {"status": status, "queue": gate.admitted, "max_queue": limits.max_queue}
        if state["error"]:
            body["error"] = app.state.redact(state["error"])
        return JSONResponse(body, status_code=200 if status == "ready" else 503)

    @app.get("/metrics", tags=["probes"])
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
