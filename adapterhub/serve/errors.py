"""One error object for every refusal, in the shape OpenAI-style clients read:

    {"error": {"message": "...", "type": "invalid_request_error", "code": 400, "param": "model",
               "request_id": "3f2a...", ...extra fields such as "allowed" or "available"}}

and no server path in it: the registry's folder, the cache, the working and home folders are
replaced by names before a message leaves the server (redact).
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..batcher import Refused
from ..errors import (AdapterHubError, AdapterNotFoundError, ConfigError, DataError, IncompatibleAdapterError,
                      RegistryError)

log = logging.getLogger("adapterhub.serve")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error", 413: "request_too_large",
         415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
         500: "server_error", 503: "overloaded_error", 504: "timeout_error"}
_LONG_PATH = re.compile(r"(?<![\w.~-])(?:/[\w.@+~-]+){3,}")


class ApiError(Exception):
    """A refusal with its HTTP status; extra fields join the error object, headers the response."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.param, self.headers, self.extra = status, param, headers or {}, extra


class Redactor:
    """Replaces the server's own folders in a message by names, then any other long absolute path by
    its last two parts."""

    def __init__(self, registry_root=None):
        roots = []
        if registry_root is not None:
            roots.append((registry_root, "registry"))
        roots += [(os.environ.get("ADAPTERHUB_CACHE"), "cache"), (Path.home() / ".cache", "cache"),
                  (tempfile.gettempdir(), "tmp"), (os.getcwd(), "."), (Path.home(), "~")]
        seen, self.roots = set(), []
        for root, name in roots:
            if not root:
                continue
            for form in (str(root), str(Path(root).resolve())):
                if form not in seen and len(form) > 1:
                    seen.add(form)
                    self.roots.append((form.rstrip("/"), name))
        self.roots.sort(key=lambda r: -len(r[0]))  # the most specific folder first

    def __call__(self, text: str) -> str:
        for root, name in self.roots:
            text = text.replace(root + "/", name + "/").replace(root, name)
        return _LONG_PATH.sub(lambda m: ".../" + "/".join(m.group(0).split("/")[-2:]), text)


def error_body(request: Request | None, status: int, message: str, param: str | None = None, **extra) -> dict:
    redact = getattr(getattr(request, "app", None), "state", None)
    redact = getattr(redact, "redact", None) or Redactor()
    body = {"message": redact(message), "type": TYPES.get(status, "server_error" if status >= 500 else
                                                           "invalid_request_error"), "code": status, "param": param}
    rid = getattr(getattr(request, "state", None), "request_id", None) if request is not None else None
    if rid:
        body["request_id"] = rid
    for k, v in extra.items():
        body[k] = [redact(x) if isinstance(x, str) else x for x in v] if isinstance(v, list) else v
    return {"error": body}


def reply(request: Request | None, status: int, message: str, param: str | None = None, headers: dict | None = None,
          **extra) -> JSONResponse:
    return JSONResponse(error_body(request, status, message, param, **extra), status_code=status, headers=headers)


def _validation_message(e: RequestValidationError) -> tuple[str, str | None]:
    problems, params = [], []
    for err in e.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        params.append(where)
        problems.append(f"{where}: {err.get('msg')}")
    return "bad request body: " + "; ".join(problems), (params[0] if params else None)


def install(app: FastAPI) -> None:
    """Every exception a route can raise -> the one error object."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, e: ApiError):
        return reply(request, e.status, str(e), e.param, e.headers, **e.extra)

    @app.exception_handler(AdapterNotFoundError)
    async def _not_found(request: Request, e: AdapterNotFoundError):
        return reply(request, 404, str(e), "model", available=e.available)

    @app.exception_handler(IncompatibleAdapterError)
    async def _incompatible(request: Request, e: IncompatibleAdapterError):
        return reply(request, 409, str(e), "model")

    @app.exception_handler(DataError)
    async def _bad_data(request: Request, e: DataError):  # a row or item the hub refuses (adapterhub.checks)
        return reply(request, 400, str(e), e.field)

    @app.exception_handler(ConfigError)
    async def _bad_config(request: Request, e: ConfigError):
        return reply(request, 400, str(e))

    @app.exception_handler(Refused)
    async def _refused(request: Request, e: Refused):  # the batcher dropped the request's work unrun
        request.app.state.metrics.refused.labels(e.reason).inc()
        retry = str(request.app.state.limits.retry_after_s)
        if e.reason == "deadline":
            return reply(request, 504, f"{e} (--request-timeout-s)", headers={"Retry-After": retry})
        return reply(request, 503, str(e), headers={"Retry-After": retry})

    @app.exception_handler(RegistryError)
    async def _registry(request: Request, e: RegistryError):
        if str(e).startswith("invalid adapter name"):  # the client's malformed reference
            return reply(request, 400, str(e), "model")
        log.error("%s %s: %s", request.method, request.url.path, e)  # a corrupt entry: the operator's to fix
        return reply(request, 500, str(e))

    @app.exception_handler(AdapterHubError)
    async def _server_side(request: Request, e: AdapterHubError):
        log.error("%s %s: %s", request.method, request.url.path, e)
        return reply(request, 500, str(e))

    @app.exception_handler(RequestValidationError)
    async def _bad_body(request: Request, e: RequestValidationError):
        message, param = _validation_message(e)
        return reply(request, 422, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):  # 404 unknown route, 405 wrong method
        return reply(request, e.status_code, str(e.detail), headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):  # a bug: logged with its traceback, not shown to the client
        log.exception("%s %s failed", request.method, request.url.path)
        return reply(request, 500, f"internal error ({type(e).__name__}); the server log has the details")
