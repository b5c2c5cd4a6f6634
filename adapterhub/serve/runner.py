"""Running the app under uvicorn, and stopping it well: on SIGTERM (or Ctrl-C) the server first says
it is not ready (GET /ready -> 503) while it keeps serving for `drain_delay_s`, so that a load
balancer stops sending it requests; then it stops accepting work, lets the requests in flight finish
for up to `drain_timeout_s` (uvicorn's timeout_graceful_shutdown), answers any left with a 503 and
exits. A second SIGINT forces the exit at once (uvicorn's own behaviour).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Optional, Union

import uvicorn

from ..hub import Hub
from .app import create_app
from .auth import Auth
from .config import Limits

log = logging.getLogger("adapterhub.serve")


class Server(uvicorn.Server):
    """uvicorn.Server that drains with a deadline, not-ready first (see the module's docstring)."""

    def __init__(self, config: uvicorn.Config, drain_delay_s: float = 0.0, drain_timeout_s: float = 30.0):
        super().__init__(config)
        self.drain_delay_s, self.drain_timeout_s = drain_delay_s, drain_timeout_s
        self.stopping = False

    def handle_exit(self, sig, frame) -> None:
        if self.stopping:  # a second signal: uvicorn's own handling (SIGINT forces the exit)
            return super().handle_exit(sig, frame)
        self.stopping = True
        self.config.app.state.gate.not_ready = True
        log.info("draining: not ready now; new work refused in %.1f s; in-flight requests get %.1f s more",
                 self.drain_delay_s, self.drain_timeout_s)
        _later(self.drain_delay_s, self._stop)

    def _stop(self) -> None:
        state = self.config.app.state
        state.gate.draining = True    # new scoring requests: 503
        self.should_exit = True       # uvicorn stops listening and waits for the requests in flight
        batcher = getattr(state, "batcher", None)
        if batcher is not None:       # just before uvicorn's deadline cancels them: a 503 each, not a dropped connection
            _later(max(0.0, self.drain_timeout_s - 0.5), lambda: batcher.abort("the server is shutting down"))


def _later(seconds: float, fn) -> None:
    timer = threading.Timer(seconds, fn)
    timer.daemon = True
    timer.start()


def build_server(hub: Union[Hub, Callable[[], Hub]], host: str = "127.0.0.1", port: int = 8000,
                 window_ms: Optional[float] = None, max_rows: Optional[int] = None, batch: bool = True,
                 limits: Optional[Limits] = None, auth: Optional[Auth] = None, drain_delay_s: float = 0.0,
                 drain_timeout_s: float = 30.0, limit_concurrency: Optional[int] = None, timeout_keep_alive: int = 5,
                 threads: Optional[int] = None, http: str = "auto", loop: str = "auto",
                 gc_freeze: bool = False, processes: bool = False, bulk_idle: bool = False) -> Server:
    """The server, not started: Server.run() blocks until it has drained. http, loop: uvicorn's (auto: its C
    parser and uvloop when installed; they cut the CPU a light request costs by about a quarter).
    gc_freeze: the heap frozen once the hub is loaded (create_app's; adapterhub serve sets it). processes:
    forwards in processes of their own; bulk_idle: the bulk lane's thread at idle priority (create_app's)."""
    from ..batcher import WINDOW_MS
    app = create_app(hub, window_ms=WINDOW_MS if window_ms is None else window_ms, max_rows=max_rows, batch=batch,
                     limits=limits, auth=auth, threads=threads, gc_freeze=gc_freeze,
                     processes=processes, bulk_idle=bulk_idle)
    limits = app.state.limits
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, http=http, loop=loop,
                            timeout_graceful_shutdown=drain_timeout_s, timeout_keep_alive=timeout_keep_alive,
                            limit_concurrency=limit_concurrency or 4 * limits.max_queue + 64)
    return Server(config, drain_delay_s=drain_delay_s, drain_timeout_s=drain_timeout_s)


def serve(hub: Union[Hub, Callable[[], Hub]], host: str = "127.0.0.1", port: int = 8000, **kwargs) -> None:
    """Run the API until SIGTERM / Ctrl-C, then drain (see the module's docstring). kwargs: build_server's.
    When `hub` is a function and it fails, the server stops and its error is raised here."""
    server = build_server(hub, host=host, port=port, **kwargs)
    state = server.config.app.state
    state.on_load_error = lambda e: setattr(server, "should_exit", True)
    server.run()
    if state.load_error is not None:
        raise state.load_error
