"""API keys, as vLLM takes them: `Authorization: Bearer <key>` on every route but the probes and
/metrics. Keys come from --api-key or ADAPTERHUB_API_KEY (comma-separated for several).

Loading and unloading adapters at run time is off unless the server starts with
--allow-runtime-loading; then it takes an admin key (--admin-key / ADAPTERHUB_ADMIN_KEY) when one is
set, else an API key. Scoring an adapter that is not resident still loads it (up to --max-resident).
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import ApiError

bearer = HTTPBearer(auto_error=False, description="an API key of the server (--api-key / ADAPTERHUB_API_KEY)")


@dataclass(frozen=True)
class Auth:
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    allow_runtime_loading: bool = False

    def matches(self, keys: tuple[str, ...], creds: HTTPAuthorizationCredentials | None) -> bool:
        given = (creds.credentials if creds is not None else "").encode()
        hits = [hmac.compare_digest(given, k.encode()) for k in keys]  # every key compared: no timing hint
        return any(hits)


def _refuse(request: Request, reason: str, status: int, message: str):
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.refused.labels(reason).inc()
    raise ApiError(status, message, headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


async def require_key(request: Request, creds: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    """A dependency: the caller holds an API key (when the server has any). async: FastAPI runs a sync
    dependency in a worker thread, a trip there and back on every request for a few comparisons."""
    auth: Auth = request.app.state.auth
    if auth.api_keys and not auth.matches(auth.api_keys, creds):
        _refuse(request, "unauthorized", 401, "missing or wrong API key: send 'Authorization: Bearer <key>' "
                                               "with a key the server was started with (--api-key)")


async def require_admin(request: Request, creds: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    """A dependency: runtime loading is on and the caller holds an admin key (or an API key when no
    admin key is set)."""
    auth: Auth = request.app.state.auth
    if not auth.allow_runtime_loading:
        _refuse(request, "forbidden", 403, "loading or unloading adapters at run time is off on this server "
                                            "(start it with --allow-runtime-loading)")
    keys = auth.admin_keys or auth.api_keys
    if keys and not auth.matches(keys, creds):
        _refuse(request, "unauthorized", 401, "missing or wrong admin key: send 'Authorization: Bearer <key>' "
                                               "with the server's --admin-key (or --api-key when it has none)")
