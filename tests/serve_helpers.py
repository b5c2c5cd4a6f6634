"""What the server's tests share (beside conftest's `served`, a hub with two adapters): a TestClient
over it, a spy on its forwards, and a request's two paths (planned on the event loop, or in a thread)."""
from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

PROMPT = "The user liked A B C. Will the user like D? Answer:"
HISTORY, DOCS = ["red thing 1", "blue thing 2"], ["thing 3", "thing 4", "thing 5"]


class Spy:
    """Wraps hub.packed_logits: records each forward's keys and tokens; `hold()` makes forwards wait
    until `release()` (a worker busy with a heavy request)."""

    def __init__(self, hub):
        self.hub, self.inner, self.calls = hub, hub.packed_logits, []
        self.entered, self.gate = threading.Event(), threading.Event()
        self.gate.set()
        hub.packed_logits = self

    def __call__(self, key, groups):
        from adapterhub.hub import BATCHER
        if BATCHER.get() is None:  # the forward itself (the batcher's worker, or a direct call)
            keys = key if isinstance(key, list) else [key] * len(groups)
            self.calls.append((set(keys), sum(len(p) + sum(map(len, s)) for p, s in groups)))
            self.entered.set()
            assert self.gate.wait(20)
        return self.inner(key, groups)

    def hold(self):
        self.gate.clear()

    def release(self):
        self.gate.set()


def client(hub, **kwargs) -> TestClient:
    from adapterhub.serve import create_app
    return TestClient(create_app(hub, window_ms=1, **kwargs))


def limits(**kwargs):
    from adapterhub.serve import Limits
    return Limits(**kwargs)


def in_thread(fn, *args, **kwargs) -> dict:
    box = {}
    th = threading.Thread(target=lambda: box.update(r=fn(*args, **kwargs)), daemon=True)
    th.start()
    box["thread"] = th
    return box


BOTH_PATHS = pytest.mark.parametrize("on_loop", [32_768, None], ids=["on_loop", "in_thread"])  # a request's two paths


def message(r) -> str:
    return r.json()["error"]["message"]
