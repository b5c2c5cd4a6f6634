"""A batcher lane's forwards in a process of its own: the same answers as the hub's, bit for bit."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from adapterhub.batcher import Batcher
from adapterhub.errors import AdapterHubError, AdapterNotFoundError, ConfigError
from adapterhub.forward_process import ForwardProcess, ForwardProcessError, build_hub, hub_args, sync
from conftest import publish_random

PROMPTS = ["The user liked A B C. Will the user like D? Answer:", "short one", "a third, somewhat longer prompt"]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_forwards_in_processes_answer_as_the_hub_does_and_survive_killed_processes(hub):
    for i, name in enumerate(("news", "music")):
        publish_random(hub, name, seed=i + 1)
    rows = [("news", PROMPTS[0]), ("music", PROMPTS[1]), (None, PROMPTS[2]), ("news", PROMPTS[1])]
    history, candidates = ["red thing 1", "blue thing 2"], [f"thing {j}" for j in range(30)]
    want_rows = hub.score(rows)
    want_ranking = hub.recommend("music", history, candidates, k=30)
    rows_tokens = sum(len(hub.encode(p)) for _, p in rows)
    # the rows on the main lane, the ranking (more tokens) on the bulk lane
    with Batcher(hub, processes=True, bulk_tokens=rows_tokens) as batcher:
        main, bulk = batcher.process, batcher.bulk.process
        assert main.pid != bulk.pid and os.sched_getscheduler(bulk.pid) == os.SCHED_IDLE
        assert batcher.score(rows) == want_rows                       # bitwise: the same code runs there
        assert batcher.recommend("music", history, candidates, k=30) == want_ranking
        assert batcher._requests == 1 and batcher.bulk.requests >= 1
        assert set(main.resident()) == {"news@v1", "music@v1"}
        sync(batcher, unloaded=["news@v1"])
        assert main.resident() == ["music@v1"] and bulk.resident() == ["music@v1"]
        sync(batcher, loaded=["news@v1"])
        assert set(bulk.resident()) == {"news@v1", "music@v1"}
        first = main.pid
        os.kill(first, signal.SIGKILL)
        main._proc.join()
        assert batcher.score(rows) == want_rows                       # started again on the next forward
        assert main.pid != first
        with pytest.raises(AdapterNotFoundError, match="nope") as e:  # an adapterhub error there is raised here
            main._exchange(("run", "rows", ["nope@v1"], [[1, 2, 3]], {}))
        assert e.value.name == "nope@v1" and isinstance(e.value.available, list)   # as itself: a 404, not a 500
        assert batcher.score(rows[:1]) == want_rows[:1]               # and the process goes on
        os.kill(main.pid, signal.SIGSTOP)   # a forward waits on it...
        failed = []
        caller = threading.Thread(target=lambda: failed.append(pytest.raises(ForwardProcessError, batcher.score,
                                                                             rows[:1])))
        caller.start()
        caller.join(0.5)
        os.kill(main.pid, signal.SIGKILL)   # ...and it dies meanwhile: that forward fails, the next one is answered
        caller.join(60)
        assert not caller.is_alive() and "stopped" in str(failed[0].value)
        assert batcher.score(rows[:1]) == want_rows[:1]
        pids = [main.pid, bulk.pid]
    assert main._proc is None and bulk._proc is None and all(gone(p) for p in pids)  # closed with the batcher


def test_a_process_whose_base_differs_is_refused(hub):
    with pytest.raises(ConfigError, match="fingerprint"):
        build_hub(hub_args(hub), "not-the-fingerprint")


@pytest.mark.slow
def test_a_process_that_cannot_start_raises_its_error_then_waits_before_trying_again(hub):
    process = ForwardProcess.__new__(ForwardProcess)   # the real start, with a base spec that does not exist
    args = hub_args(hub)
    args["spec"] = "random:nope"
    process.hub, process.name, process._lock = hub, "test", threading.Lock()
    process._args, process._proc, process._conn = (args, hub.fingerprint, 1, False), None, None
    process._closed, process._failed_at = False, None
    with pytest.raises(AdapterHubError, match="nope"):
        with process._lock:
            process._start()
    assert process._proc is None
    with pytest.raises(ForwardProcessError, match="failed to start"):   # at once, not a second start
        process.run("rows", [None], [[1, 2]])
    process.close()
    with pytest.raises(ForwardProcessError, match="closed"):
        process.run("rows", [None], [[1, 2]])


@pytest.mark.slow
def test_the_server_with_forward_processes_follows_a_promotion_and_an_unload(hub):
    """`adapterhub serve --forward-in process`: a reloaded version is loaded there too, and every answer
    is the hub's own."""
    from fastapi.testclient import TestClient
    from adapterhub.serve import Auth, create_app
    publish_random(hub, "news", seed=1)
    hub.load("news")
    with TestClient(create_app(hub, window_ms=1, auth=Auth(allow_runtime_loading=True), processes=True)) as c:
        batcher = c.app.state.batcher
        body = c.post("/score", json={"model": "news", "prompts": PROMPTS}).json()
        assert body["adapters"] == ["news@v1"] * 3 and body["scores"] == hub.score([("news@v1", p) for p in PROMPTS])
        publish_random(hub, "news", seed=9)
        hub.registry.promote("news@v2")
        assert c.post("/adapters/load", json={"model": "news", "reload": True}).json()["loaded"] == "news@v2"
        assert batcher.process.resident() == ["news@v2"] == batcher.bulk.process.resident()   # loaded there now
        body = c.post("/score", json={"model": "news", "prompts": PROMPTS}).json()
        assert body["adapters"] == ["news@v2"] * 3 and body["scores"] == hub.score([("news@v2", p) for p in PROMPTS])
        assert c.post("/adapters/unload", json={"model": "news"}).json()["unloaded"] == ["news@v2"]
        assert batcher.process.resident() == []
        ranked = c.post("/v1/rerank", json={"model": "news@v1", "query": ["a"], "documents": ["b", "c"]}).json()
        want = dict(hub.recommend("news@v1", ["a"], ["b", "c"], k=2))
        assert {r["index"]: r["relevance_score"] for r in ranked["results"]} == {0: want["b"], 1: want["c"]}
        assert c.post("/score", json={"model": "nope", "prompts": ["x"]}).status_code == 404
        pids = [batcher.process.pid, batcher.bulk.process.pid]
    assert all(gone(p) for p in pids)   # stopped with the server


def test_serve_forward_in_chooses_processes_or_the_servers_own_threads(tmp_path, monkeypatch):
    from adapterhub import serve as serve_mod
    from adapterhub.cli import main
    (tmp_path / "reg").mkdir()
    seen = []
    monkeypatch.setattr(serve_mod, "serve", lambda *a, **k: seen.append(k["processes"]))
    for extra in (["--forward-in", "process"], ["--forward-in", "thread"], []):
        assert main(["serve", "--registry", str(tmp_path / "reg"), *extra]) == 0
    assert seen == [True, False, False]   # threads by default

