"""A batcher lane's forwards in a process of its own (`Batcher(..., processes=True)`, `serve --forward-in process`).

In one process, a forward shares the GIL with everything else the server does in Python: a forward
is hundreds of small ops, each giving the GIL back and taking it again, so the event loop's work
(parsing, validating, tokenizing other requests) stretches it (benchmarks/serving_load/gil_convoy.py).
Here each lane's worker thread hands its picks' token ids to a process that holds its own Hub over
the same base and registry, and waits for the answer with the GIL released. The child loads an
adapter by the exact key the server resolved ('news@v2'), and checks that its weights have the
sha256 of the version the server has resident. The bulk lane's process runs at the OS's idle
priority: it gets a core only when the light lane and the event loop leave one free, so under
steady light load a heavy request waits (its deadline still holds).

The processes are spawned (a forked torch's threads are not safe), ignore Ctrl-C (the server stops
them), and check that their base has the server's fingerprint. A process that dies fails the
requests of the forward it was running, and the next forward starts it again (at most once every
RESTART_S). Messages go over a pipe between this process and its own children only: token ids in,
scores out. Only a hub rebuilt from its base spec and registry can be served this way: a staged
adapter (Hub.staged) is not in the registry, so the child cannot load it.
"""
from __future__ import annotations

import gc
import importlib
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from pathlib import Path

import torch

from .errors import AdapterHubError, RegistryError

log = logging.getLogger(__name__)
START_TIMEOUT_S = 600.0   # a base is read and, the first time, converted: minutes on a slow disk
RESTART_S = 5.0           # after a failed start, forwards fail at once for this long before the next try


class ForwardProcessError(AdapterHubError, RuntimeError):
    """A lane's process died, could not start, or failed in a way that is not the request's fault."""


def hub_args(hub) -> dict:
    """What another process needs to build the same Hub."""
    b = hub.base
    return {"spec": b.spec, "quant": b.quant, "device": str(b.device), "seed": b.seed, "compute": b.compute,
            "registry": str(Path(hub.registry.root).resolve()), "max_resident": hub.max_resident,
            "batch_size": hub.batch_size}


def build_hub(args: dict, fingerprint: str):
    """The Hub of hub_args(...) in this process, refused unless its base has `fingerprint`."""
    from .base import load_base
    from .errors import ConfigError
    from .hub import Hub
    args = dict(args)
    base = load_base(args.pop("spec"), quant=args.pop("quant"), device=args.pop("device"), seed=args.pop("seed"),
                     compute=args.pop("compute"))
    if base.fingerprint != fingerprint:
        raise ConfigError(f"the worker's base {base.spec!r} has fingerprint {base.fingerprint}, the driver's "
                          f"{fingerprint}: every worker needs the same base files")
    return Hub(base=base, **args)


def exit_with(parent: int) -> None:
    """A child outlives a parent killed with -9: it would hold a base in memory forever. It leaves
    when its parent is gone."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


class ForwardProcess:
    """One process running side_by_side forwards for one batcher lane. Thread-safe: one exchange at a time."""

    def __init__(self, hub, name: str = "adapterhub-forward", low_priority: bool = False):
        self.hub, self.name = hub, name
        self._args = (hub_args(hub), hub.fingerprint, torch.get_num_threads(), low_priority)
        self._lock = threading.Lock()
        self._proc = self._conn = None
        self._closed, self._failed_at = False, None
        with self._lock:
            self._start()

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    def _start(self) -> None:
        """(Under the lock.) A new process, holding the adapters the hub has resident now."""
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_main, args=(child, *self._args, self.hub.resident(), os.getpid()),
                                 name=self.name, daemon=True)
        self._proc.start()
        child.close()
        ready = self._conn.poll(START_TIMEOUT_S)
        try:
            status, value = self._conn.recv() if ready else ("error", None)
        except (EOFError, OSError):
            status, value = "error", None
        if status != "ready":   # a server-side fault, whatever the child raised (a 500, never a client's 4xx)
            self._stop()
            self._failed_at = time.monotonic()
            if value is not None:
                log.error("the forward process %s did not start:\n%s", self.name, value[4])
            why = f": {value[1]}: {value[2]}" if value is not None else " (the server's log has why)"
            raise ForwardProcessError(f"the forward process {self.name} did not start{why}")
        self._failed_at = None

    def _exchange(self, message: tuple):
        with self._lock:
            if self._closed:
                raise ForwardProcessError(f"the forward process {self.name} is closed")
            if self._proc is None or not self._proc.is_alive():
                if self._failed_at is not None and time.monotonic() - self._failed_at < RESTART_S:
                    raise ForwardProcessError(f"the forward process {self.name} failed to start; retry shortly")
                log.warning("%s is not running: starting it again", self.name)
                self._start()
            try:
                self._conn.send(message)
                status, value = self._conn.recv()
            except (EOFError, OSError):
                code = self._stop()
                raise ForwardProcessError(f"the forward process {self.name} stopped (exit code {code}) during this "
                                          "request's forward; retry (the next forward starts it again)") from None
        if status == "error":
            raise _rebuilt(value)
        return value

    def run(self, kind: str, keys: list, items: list):
        """side_by_side.run_flat(hub, kind, keys, items) in the process: rows -> [P(yes)], packed -> logits.
        Each key's weights there are checked against the sha256 of the version resident here."""
        shas = {key: self.hub.load(key).card.get("weights_sha256") for key in set(keys) - {None}}  # (resident: a lookup)
        value = self._exchange(("run", kind, keys, items, shas))
        if kind == "rows":
            return value
        return torch.frombuffer(bytearray(value), dtype=torch.float32) if value else torch.empty(0)

    def load(self, keys: list[str]) -> None:
        """Make these keys resident there now (else the first forward naming one reads it from the disk)."""
        if keys:
            self._exchange(("load", list(keys), None, None, None))

    def unload(self, keys: list[str]) -> None:
        """Unload these keys there too (a later forward naming one loads it again)."""
        if keys:
            self._exchange(("unload", list(keys), None, None, None))

    def resident(self) -> list[str]:
        return self._exchange(("resident", None, None, None, None))

    def close(self) -> None:
        """Stop the process now; a forward waiting on it fails. Later calls raise ForwardProcessError."""
        self._closed = True
        proc = self._proc
        if proc is not None and proc.is_alive():
            proc.kill()   # without the lock: a forward blocked on the pipe gets EOF and lets go of it
        with self._lock:
            self._stop()

    def _stop(self) -> int | None:
        """(Under the lock.) The process gone, its exit code."""
        code, proc = None, self._proc
        if proc is not None:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            code = proc.exitcode
        self._proc = None
        if self._conn is not None:
            self._conn.close()
        return code


def sync(batcher, loaded=(), unloaded=()) -> None:
    """Adapters a server's hub loaded or unloaded: the same in its batcher's lane processes (none:
    nothing). A lane that fails is logged and goes on: its next forward loads what it needs."""
    for lane in (batcher, getattr(batcher, "bulk", None)):
        process = getattr(lane, "process", None)
        if process is None:
            continue
        try:
            process.load(list(loaded))
            process.unload(list(unloaded))
        except AdapterHubError as e:
            log.warning("%s: could not load %s / unload %s: %s", process.name, list(loaded), list(unloaded), e)


def _rebuilt(error: tuple) -> BaseException:
    """(module, class name, message, attributes, traceback) from the child -> that error when it is one
    of adapterhub's (a client's error keeps its status); else an AdapterHubError (a 500 that names
    no detail), the child's traceback logged here."""
    module, name, message, attrs, trace = error
    cls = getattr(importlib.import_module(module), name, None) if module.startswith("adapterhub.") else None
    if isinstance(cls, type) and issubclass(cls, AdapterHubError):
        e = cls.__new__(cls)
        Exception.__init__(e, message)
        e.__dict__.update(attrs)
        return e
    log.error("a forward process failed:\n%s", trace)
    # not ForwardProcessError: the process lives on, and the batcher retries each request's slice alone
    return AdapterHubError(f"the forward failed in its process ({name}); the server's log has the traceback")


def _error(e: BaseException) -> tuple:
    attrs = {k: v for k, v in vars(e).items() if isinstance(v, (str, int, float, list, tuple, type(None)))}
    return type(e).__module__, type(e).__name__, str(e), attrs, traceback.format_exc()


def _main(conn, args: dict, fingerprint: str, threads: int, low_priority: bool, resident: list, parent: int) -> None:
    """The child: build the hub with the parent's resident adapters, then answer ('run' | 'load' |
    'unload' | 'resident' | 'stop', ...) messages until 'stop' or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the whole group: the server stops this one
    threading.Thread(target=exit_with, args=(parent,), daemon=True).start()
    if low_priority:
        try:   # runs only when no other process wants the core (Linux); else the lowest nice value
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):
            if hasattr(os, "nice"):
                os.nice(19)
    torch.set_num_threads(threads)
    from . import side_by_side
    try:
        hub = build_hub(args, fingerprint)
    except BaseException as e:  # noqa: BLE001 - the parent raises it
        conn.send(("error", _error(e)))
        return
    for key in resident:   # best effort: one removed since is loaded (and fails) when a forward names it
        try:
            hub.load(key)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: %s not loaded: %s", multiprocessing.current_process().name, key, e)
    gc.collect()   # as the server's own heap (adapterhub.serve.app): no full collection walks the base
    gc.freeze()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            what, kind, keys, items, shas = conn.recv()
        except EOFError:
            return
        if what == "stop":
            return
        try:
            conn.send(("ok", _answer(hub, side_by_side, what, kind, keys, items, shas)))
        except Exception as e:  # noqa: BLE001 - the request's error, raised in the parent
            conn.send(("error", _error(e)))


def _answer(hub, side_by_side, what: str, kind, keys, items, shas):
    if what == "resident":
        return hub.resident()
    if what in ("load", "unload"):
        for key in kind:
            if what == "load":
                hub.load(key)
            elif key in hub.resident():
                hub.unload(key)
        return None
    for key, sha in shas.items():   # a version number reused after its version was removed: load it again
        if sha is not None and hub.load(key).card.get("weights_sha256") != sha:
            hub.unload(key)
            if hub.load(key).card.get("weights_sha256") != sha:
                raise RegistryError(f"{key} on disk is not the version the server has resident; reload it")
    out = side_by_side.run_flat(hub, kind, keys, items)
    return out if kind == "rows" else out.float().contiguous().numpy().tobytes()
