"""The bulk lane's pauses: hooks inside each decoder layer of a hub's base, where a forward run by a
bulk lane's worker (adapterhub.batcher) waits while its main lane has work, so that a light request
waits for about half a layer of a heavy forward instead of all of it."""
from __future__ import annotations

import contextvars
import logging
import os

GIVE_WAY_S = 0.025  # the longest a bulk forward waits at one pause (two a layer): it always moves on
# set in a bulk lane's worker thread: the main lane (a Batcher) its forwards give way to
GIVE_WAY_TO: contextvars.ContextVar = contextvars.ContextVar("adapterhub_give_way_to", default=None)


def pause_points(hub) -> None:
    """The hooks, once per base: before each layer's attention and its MLP (half a layer: on a small
    base a layer of a 1,024-token forward is several ms), or before the layer where it has neither.
    Other threads' forwards pass them by (one context-variable read each)."""
    decoder = hub.decoder
    if getattr(decoder, "_adapterhub_pause_points", False):
        return
    for layer in decoder.layers:
        parts = [m for m in (getattr(layer, "self_attn", None), getattr(layer, "mlp", None)) if m is not None]
        for module in parts or [layer]:
            module.register_forward_pre_hook(_give_way)
    decoder._adapterhub_pause_points = True


def _give_way(module, args) -> None:
    main = GIVE_WAY_TO.get()
    if main is not None:
        main._wait_idle(GIVE_WAY_S)


def enter_bulk_lane(main, idle: bool = False) -> None:
    """Called by a bulk lane's worker thread: its forwards give way to `main` (a Batcher); with idle,
    the thread also runs at the OS's idle priority (idle_priority)."""
    GIVE_WAY_TO.set(main)
    if idle and not idle_priority():
        logging.getLogger(__name__).warning("the bulk lane's thread keeps its priority: this OS has no idle "
                                            "scheduling class (SCHED_IDLE) or refused it")


def idle_priority() -> bool:
    """Put the calling thread at the OS's idle priority (SCHED_IDLE: it gets a core only when no other
    task wants one; Linux schedules each thread apart), so a light request's work takes the core from
    a heavy forward at once, not at its next pause. Only for a process with cores of its own: beside
    busy processes the thread gets almost no core, so heavy requests stall, and while it holds the GIL
    every other thread of the process waits (benchmarks/serving_load/bulk_priority.py).
    False where the OS has no such class (the thread keeps its priority; the pauses still work)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        return False
    return True
