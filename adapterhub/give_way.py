"""The bulk lane's pauses: hooks inside each decoder layer of a hub's base, where a forward run by a
bulk lane's worker (adapterhub.batcher) waits while its main lane has work, so that a light request
waits for about half a layer of a heavy forward instead of all of it."""
from __future__ import annotations

import contextvars

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
