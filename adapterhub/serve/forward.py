"""A planned request's forward, awaited on the event loop: queued on the batcher, answered through a
future (no thread waits for it). Used for the requests planned on the loop (Gate.run's on_loop).
How long it waited goes to call.timing (the reply's Server-Timing): `queue`, from queued to its first
forward; `forward`, from then to its answer (all its forwards, and any between them); `resume`, from
its answer to the event loop taking it up again."""
from __future__ import annotations

import asyncio
import time

import torch

from .. import ranking
from ..batcher import Batcher

POLL_S = 0.05  # how often a waiting request checks its own deadlines (the worker looks only between forwards)


async def forwarded(batcher: Batcher, kind: str, keys: list, items: list, call):
    """The batcher's answer to one request (rows: P(yes) per row; packed: logits), awaited. A
    cancelled wait (a deadline, a shutdown) sets call.cancelled, and the batcher drops the request's
    unstarted work."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    answered_at = []

    def answered() -> None:  # in the batcher's thread (or the one that refused the request): no blocking
        answered_at.append(time.monotonic())
        try:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))
        except RuntimeError:  # the loop has closed (the server stopped): nobody waits any more
            pass
    req, lane = batcher.submit(kind, keys, items, call.deadline, call.cancelled, call.start_by, on_done=answered)
    try:
        while not done.done():
            await asyncio.wait([done], timeout=POLL_S)
            lane.drop_if_dead(req)
    except asyncio.CancelledError:
        call.cancelled.set()
        lane.drop_if_dead(req)
        raise
    if req.error is not None:
        raise req.error
    if req.started is not None and answered_at:
        call.timing.update(queue=req.started - req.arrived, forward=answered_at[0] - req.started,
                           resume=time.monotonic() - answered_at[0])
    return req.result


async def scored(batcher: Batcher, keys: list, ids: list, call) -> list[float]:
    """P(yes) of tokenized rows (as Hub._score_rows through the batcher)."""
    return await forwarded(batcher, "rows", keys, ids, call) if ids else []


async def ranked(batcher: Batcher, plan: ranking.Ranking, raw: bool, call) -> list[float]:
    """A planned ranking's scores in candidate order (as ranking.scores through the batcher)."""
    if not plan.groups:
        return []
    logits = await forwarded(batcher, "packed", [plan.plan.key] * len(plan.groups), plan.groups, call)
    return ranking.finish(plan, torch.sigmoid(logits).tolist(), raw)
