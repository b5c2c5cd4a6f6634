"""Token budgets in the server: over-limit requests refused before any forward, a big request run in
forwards within the batch budget, and which lane a request runs on."""
from __future__ import annotations

from serve_helpers import DOCS, HISTORY, Spy, client, limits, message

import pytest


# ------------------------------------------------------------------ 2: token budgets
def test_2_token_budgets_refuse_before_any_forward(served):
    spy = Spy(served)
    with client(served, limits=limits(max_request_tokens=300, max_model_len=200)) as c:
        r = c.post("/score", json={"model": "news", "prompts": ["1" * 3000]})  # before: run, 16,000 digits too
        assert r.status_code == 400 and "over the base's 2048 positions" in message(r)
        r = c.post("/score", json={"model": "news", "prompts": ["x" * 250]})
        assert r.status_code == 400 and "over --max-model-len 200" in message(r)
        r = c.post("/score", json={"model": "news", "prompts": ["x" * 150, "y" * 160]})
        assert r.status_code == 400 and "more than 300 tokens (310 counted so far)" in message(r)
        long_items = ["w" * 3900] * 10  # before: 39 KB of one-word items took 24 s and 3.8 GB
        r = c.post("/v1/rerank", json={"model": "news", "query": long_items, "documents": DOCS})
        assert r.status_code == 400 and "history" in message(r) and "positions" in message(r)
        assert spy.calls == []  # no forward ran for any of them
        assert c.post("/score", json={"model": "news", "prompts": ["x" * 100]}).status_code == 200
        assert len(spy.calls) == 1


def test_2_a_big_request_runs_in_forwards_within_the_batch_budget(served):
    served.batch_size = 4  # candidates per packed row: a group (history + 4 candidates) is then ~255 tokens
    docs = [f"thing {i}" for i in range(40)]
    want = dict(served.recommend("news", HISTORY, docs, k=40))
    spy = Spy(served)
    with client(served, limits=limits(max_batch_tokens=600, bulk_tokens=None)) as c:  # one lane: the light one
        r = c.post("/v1/rerank", json={"model": "news", "query": HISTORY, "documents": docs})
    assert r.status_code == 200
    assert len(spy.calls) == 5 and max(t for _, t in spy.calls) <= 600  # 10 groups, two per forward
    got = {docs[x["index"]]: x["relevance_score"] for x in r.json()["results"]}
    assert got == pytest.approx(want, abs=1e-6)


def test_2_by_default_a_request_over_one_forward_runs_on_the_bulk_lane(served):
    """The default --bulk-tokens is the default --max-batch-tokens: a request that fits in one forward
    is light; a bigger one runs on the bulk lane, whose forwards give way to the light ones (on
    SmolLM2 a 1,024-token forward is over a second, which a light request would otherwise wait out)."""
    from adapterhub.serve import Limits
    assert Limits().bulk_tokens == Limits().max_batch_tokens
    docs = [f"a somewhat longer candidate title number {i}" for i in range(40)]  # the tiny base: a token a character
    with client(served) as c:
        lanes = c.app.state.batcher
        assert c.post("/v1/rerank", json={"model": "news", "query": HISTORY, "documents": DOCS}).status_code == 200
        assert (lanes._requests, lanes.bulk.requests) == (1, 0)
        r = c.post("/v1/rerank", json={"model": "news", "query": HISTORY, "documents": docs})
        assert r.status_code == 200 and r.json()["usage"]["total_tokens"] > Limits().max_batch_tokens
        assert (lanes._requests, lanes.bulk.requests) == (1, 1)
