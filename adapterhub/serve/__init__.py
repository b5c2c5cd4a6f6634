"""`adapterhub serve`: an HTTP API over one hub (FastAPI + uvicorn + prometheus-client:
pip install 'adapterhub[serve]'). docs/SERVING.md is the operator's guide.

    adapterhub serve --registry adapters --preload news,music --api-key $KEY     # http://127.0.0.1:8000

    POST /v1/rerank   {"model": "news", "query": [history...], "documents": [candidates...], "top_n": 10}
                      -> {"model": "news@v2", "results": [{"index", "relevance_score", "document"}], "usage"}
    GET  /v1/models   the adapters (and 'base'), OpenAI's list shape
    POST /score       {"rows": [{"model": "news", "prompt": "..."}]} or {"model": ..., "prompts": [...]}
    POST /recommend   {"model": "news", "history": [...], "candidates": [...], "k": 10}
    GET  /adapters;  POST /adapters/load, /adapters/unload, /v1/load_lora_adapter, /v1/unload_lora_adapter
                      (only with --allow-runtime-loading, and an admin or API key)
    GET  /health (liveness), /ready (readiness), /metrics (Prometheus)

Modules: app (routes), schemas (bodies), config + limits (budgets, queue, deadlines), auth (API
keys), metrics (Prometheus, request ids, access log), errors (one error object), runner (uvicorn,
draining on SIGTERM). Importing this package imports no FastAPI; create_app and serve do.
"""
from __future__ import annotations


def __getattr__(name):
    if name in ("create_app", "serve", "Limits", "Auth"):
        try:
            import fastapi  # noqa: F401
            import prometheus_client  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError as e:  # the message is the point
            from ..errors import AdapterHubError
            raise AdapterHubError(f"adapterhub serve needs the 'serve' extra ({e.name} is missing): "
                                  "pip install 'adapterhub[serve]'") from e
        from .app import create_app
        from .auth import Auth
        from .config import Limits
        from .runner import serve
        return {"create_app": create_app, "serve": serve, "Limits": Limits, "Auth": Auth}[name]
    raise AttributeError(f"module 'adapterhub.serve' has no attribute {name!r}")


__all__ = ["create_app", "serve", "Limits", "Auth"]
