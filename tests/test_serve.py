"""`adapterhub serve` (HTTP API) on the tiny random base: the first routes, as clients used them."""
from __future__ import annotations

import pytest

from conftest import publish_random

from fastapi.testclient import TestClient  # the 'test' extra installs the 'serve' stack: these never skip

PROMPT = "The user liked A B C. Will the user like D? Answer:"


@pytest.fixture
def hub(shared_base_hub):
    return shared_base_hub


@pytest.fixture
def client(hub):
    from adapterhub.serve import Auth, create_app
    for i, name in enumerate(("news", "music")):
        publish_random(hub, name, seed=i + 1)
    with TestClient(create_app(hub, window_ms=1, max_body_bytes=20_000, auth=Auth(allow_runtime_loading=True))) as c:
        yield c


def test_score_names_the_version_each_row_used(client, hub):
    r = client.post("/score", json={"rows": [{"adapter": "news", "prompt": PROMPT}, {"adapter": "music@v1", "prompt": PROMPT},
                                             {"adapter": None, "prompt": PROMPT}, {"adapter": "base", "prompt": PROMPT}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["adapters"] == ["news@v1", "music@v1", None, None]
    want = hub.score([("news", PROMPT), ("music", PROMPT), (None, PROMPT)])
    assert body["scores"] == pytest.approx(want + want[2:], abs=1e-6)
    short = client.post("/score", json={"adapter": "news", "prompts": [PROMPT, "short"]}).json()
    assert short["adapters"] == ["news@v1"] * 2 and short["scores"][0] == pytest.approx(want[0], abs=1e-6)


def test_without_the_batcher_each_request_runs_its_own_forward(hub):
    from adapterhub.serve import create_app
    publish_random(hub, "news", seed=1)
    with TestClient(create_app(hub, batch=False)) as c:
        body = c.post("/score", json={"adapter": "news", "prompts": [PROMPT]}).json()
        assert body["scores"][0] == pytest.approx(hub.score([("news", PROMPT)])[0], abs=1e-6)
        assert c.get("/health").json()["requests"] == 1


def test_recommend_adapters_health(client, hub):
    history, candidates = ["red thing 1", "blue thing 2"], ["thing 3", "thing 4", "thing 5"]
    r = client.post("/recommend", json={"adapter": "music", "history": history, "candidates": candidates, "k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    want = dict(hub.recommend("music", history, candidates, k=3))
    assert body["adapter"] == "music@v1" and len(body["items"]) == 2
    assert all(it["score"] == pytest.approx(want[it["item"]], abs=1e-6) for it in body["items"])
    listed = client.get("/adapters").json()
    assert {a["name"]: a["current"] for a in listed["adapters"]} == {"music": "v1", "news": "v1"}
    assert set(listed["resident"]) >= {"music@v1"}
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["base"] == "random:tiny" and health["requests"] >= 1


def test_promote_then_reload_swaps_the_version(client, hub):
    assert client.post("/score", json={"adapter": "news", "prompts": [PROMPT]}).json()["adapters"] == ["news@v1"]
    publish_random(hub, "news", seed=9)  # v2, promoted (a fresh registry entry has no metric to beat)
    hub.registry.promote("news@v2")
    assert client.post("/score", json={"adapter": "news", "prompts": [PROMPT]}).json()["adapters"] == ["news@v1"]
    r = client.post("/adapters/load", json={"adapter": "news", "reload": True})
    assert r.status_code == 200 and r.json()["loaded"] == "news@v2" and "news@v1" not in r.json()["resident"]
    body = client.post("/score", json={"adapter": "news", "prompts": [PROMPT]}).json()
    assert body["adapters"] == ["news@v2"] and body["scores"][0] == pytest.approx(hub.score([("news@v2", PROMPT)])[0], abs=1e-6)
    assert client.post("/adapters/unload", json={"adapter": "news"}).json()["unloaded"] == ["news@v2"]


@pytest.mark.parametrize("path, body, status, words", [
    ("/score", {"rows": [{"adapter": "newz", "prompt": "x"}]}, 404, ["'newz' not found", "Did you mean 'news'"]),
    ("/score", {"adapter": "news@v7", "prompts": ["x"]}, 404, ["news@v7", "Versions of 'news': v1"]),
    ("/score", {"adapter": "../etc/passwd", "prompts": ["x"]}, 400, ["invalid adapter name"]),
    ("/score", {"adapter": "/abs/path", "prompts": ["x"]}, 400, ["invalid adapter name"]),
    ("/recommend", {"adapter": "nope", "history": [], "candidates": ["a"]}, 404, ["'nope' not found"]),
    ("/recommend", {"adapter": "base", "history": [], "candidates": ["a"]}, 400, ["needs an adapter"]),
    ("/score", {"model": "news", "adapter": "music", "prompts": ["x"]}, 422, ["adapter"]),
    ("/adapters/load", {"adapter": "missing"}, 404, ["'missing' not found"]),
    ("/adapters/unload", {"adapter": "a/b"}, 400, ["invalid adapter name"]),
    ("/score", {"rows": [{"adapter": "news"}]}, 422, ["rows.0.prompt", "Field required"]),
    ("/score", {"rows": [], "prompts": ["x"]}, 422, ["either 'rows'"]),
    ("/score", {"adapter": "news", "prompts": ["x"], "promts": 1}, 422, ["promts", "Extra inputs"]),
    ("/score", {"adapter": "news", "prompts": ["x"] * 300}, 422, ["prompts", "at most 256"]),
    ("/recommend", {"adapter": "news", "history": [], "candidates": ["a"], "k": 0}, 422, ["k", "greater than or equal"]),
])
def test_bad_requests_get_a_clear_4xx(client, path, body, status, words):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert all(w in error["message"] for w in words) and error["code"] == status, error


def test_malformed_json_and_oversized_bodies(client):
    r = client.post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]
    r = client.post("/score", json={"adapter": "news", "prompts": ["x" * 30_000]})
    assert r.status_code == 413 and "20000-byte limit" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: counted while it streams in
        yield b'{"adapter": "news", "prompts": ["'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"]}'
    r = client.post("/score", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.get("/health").status_code == 200  # still serving


def test_a_corrupt_registry_entry_is_a_500_that_says_which_file(client, hub):
    publish_random(hub, "broken", seed=5)
    weights = hub.registry.resolve("broken") / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    r = client.post("/score", json={"adapter": "broken", "prompts": [PROMPT]})
    assert r.status_code == 500 and "adapter_model.safetensors" in r.json()["error"]["message"]
    assert client.post("/score", json={"adapter": "news", "prompts": [PROMPT]}).status_code == 200


def test_serve_command_refuses_a_missing_registry_and_bad_preload(tmp_path, capsys):
    from adapterhub.cli import main
    assert main(["serve", "--registry", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "reg").mkdir()
    assert main(["serve", "--registry", str(tmp_path / "reg"), "--preload", "news"]) == 2
    assert "'news' not found" in capsys.readouterr().err
    # the base loads after the port opens (/ready waits for it): a base that fails stops the server
    assert main(["serve", "--registry", str(tmp_path / "reg"), "--base", "random:nope", "--port", "0"]) == 2
    assert "unknown preset 'random:nope'" in capsys.readouterr().err
    assert main(["serve", "--registry", str(tmp_path / "reg"), "--max-queue", "0"]) == 2
    assert "max_queue=0" in capsys.readouterr().err
    assert main(["serve", "--registry", str(tmp_path / "reg"), "--gil-switch-ms", "0"]) == 2
    assert "--gil-switch-ms must be in (0, 100]" in capsys.readouterr().err


def test_serve_command_sets_the_gil_switch_interval_while_it_serves(tmp_path, monkeypatch):
    """While the server runs, the process's GIL switch interval is --gil-switch-ms when given (else
    Python's stays); the caller's comes back after."""
    import sys
    from adapterhub import serve as serve_mod
    from adapterhub.cli import main
    (tmp_path / "reg").mkdir()
    seen = []
    monkeypatch.setattr(serve_mod, "serve", lambda *a, **k: seen.append(sys.getswitchinterval()))
    before = sys.getswitchinterval()
    assert main(["serve", "--registry", str(tmp_path / "reg")]) == 0
    assert main(["serve", "--registry", str(tmp_path / "reg"), "--gil-switch-ms", "2"]) == 0
    assert seen == [pytest.approx(before), pytest.approx(0.002)]
    assert sys.getswitchinterval() == before


def test_serve_bulk_priority_idle_reaches_the_bulk_lanes_worker_and_normal_is_the_default(tmp_path, monkeypatch, hub):
    """--bulk-priority idle puts the bulk lane's worker thread at the OS's idle priority (for a server
    with cores of its own); the default leaves it as it is."""
    import os
    from adapterhub import serve as serve_mod
    from adapterhub.cli import main
    from adapterhub.serve import Limits, create_app
    (tmp_path / "reg").mkdir()
    seen = []
    monkeypatch.setattr(serve_mod, "serve", lambda *a, **k: seen.append(k["bulk_idle"]))
    for extra in (["--bulk-priority", "idle"], ["--bulk-priority", "normal"], []):
        assert main(["serve", "--registry", str(tmp_path / "reg"), *extra]) == 0
    assert seen == [True, False, False]
    for idle in (True, False):
        with TestClient(create_app(hub, window_ms=1, limits=Limits(bulk_tokens=64), bulk_idle=idle)) as c:
            lanes = c.app.state.batcher
            assert lanes.bulk is not None and lanes.bulk_idle is idle
            if hasattr(os, "SCHED_IDLE"):   # the worker sets it as it starts: a bulk request has been through
                assert c.post("/score", json={"model": "base", "prompts": ["red " * 100]}).status_code == 200
                want = os.SCHED_IDLE if idle else os.sched_getscheduler(0)
                assert os.sched_getscheduler(lanes.bulk._worker.native_id) == want


def test_serve_command_picks_uvicorns_parser_and_loop(tmp_path, monkeypatch, hub):
    """--http / --loop reach uvicorn; auto takes the C parser and uvloop when installed (the 'serve'
    extra installs them: about a quarter less CPU per light request, benchmarks/serving_load)."""
    from adapterhub import serve as serve_mod
    from adapterhub.cli import main
    from adapterhub.serve.runner import build_server
    (tmp_path / "reg").mkdir()
    seen = []
    monkeypatch.setattr(serve_mod, "serve", lambda *a, **k: seen.append((k["http"], k["loop"])))
    assert main(["serve", "--registry", str(tmp_path / "reg")]) == 0
    assert main(["serve", "--registry", str(tmp_path / "reg"), "--http", "h11", "--loop", "asyncio"]) == 0
    assert seen == [("auto", "auto"), ("h11", "asyncio")]
    seen.clear()
    monkeypatch.setattr(serve_mod, "serve", lambda *a, **k: seen.append(k["gc_freeze"]))
    assert main(["serve", "--registry", str(tmp_path / "reg")]) == 0 and seen == [True]   # the heap frozen
    config = build_server(hub, port=0).config
    config.load()
    pytest.importorskip("httptools")
    assert config.http_protocol_class.__name__ == "HttpToolsProtocol"
    slow = build_server(hub, port=0, http="h11", loop="asyncio").config
    slow.load()
    assert slow.http_protocol_class.__name__ == "H11Protocol" and slow.loop == "asyncio"


def test_a_ranking_of_no_candidates_answers_at_once(client):
    """Found by the fuzz: an empty candidate list waited for its queue deadline (a request of no item)."""
    import time
    t = time.perf_counter()
    r = client.post("/recommend", json={"model": "news", "history": [], "candidates": []})
    assert r.status_code == 200 and r.json()["items"] == [] and time.perf_counter() - t < 2
    assert client.post("/v1/rerank", json={"model": "news", "query": [], "documents": []}).status_code == 422


def test_the_load_tests_queueing_estimate_matches_the_one_server_queue(monkeypatch):
    """measures.fifo_estimate, the p99 that queueing alone gives: with arrivals rare, the service times' own
    p99 over their median; with exponential service at load 0.5 (M/M/1), the known p99 of the time in
    the system, ln(100) / (service rate - arrival rate)."""
    import math
    import random
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks" / "serving_load"))
    import measures
    flat = {"score": [10.0] * 10, "rerank": [10.0] * 10}
    assert measures.fifo_estimate(flat, 0.001) == pytest.approx(1.0, abs=1e-3)
    rng = random.Random(3)
    service = [rng.expovariate(1 / 10) for _ in range(4000)]   # ms: 100 a second at most
    samples = {"score": service, "rerank": service}
    want = 1000 * math.log(100) / (100 - 50) / (10 * math.log(2))   # over the median service time
    assert measures.fifo_estimate(samples, 50.0, n=100_000) == pytest.approx(want, rel=0.05)
    assert measures.fifo_estimate(samples, 20.0) < measures.fifo_estimate(samples, 50.0)
    spread = {"score": [float(x) for x in range(1, 101)], "rerank": []}   # no server time: no queue at any rate
    assert measures.fifo_estimate(spread, 500.0, busy_share=0.0) == pytest.approx(99 / 50.5, rel=0.02)


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="this OS sets no CPU affinity")
def test_the_load_tests_cpu_split_leaves_the_client_and_the_server_cpus_of_their_own(monkeypatch):
    """run.py --server-cpus: 'auto' gives the client side the first CPU and the server the rest (none
    on one CPU), 'all' shares them, a list names the server's; a split that leaves a side none is refused.
    pinned() puts this process back on its CPUs after; last_option reads the server's own options as
    argparse does (the last wins)."""
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks" / "serving_load"))
    import measures
    import torch
    before, threads = measures.os.sched_getaffinity(0), torch.get_num_threads()
    with measures.pinned({min(before)}):   # run.main pins its own process while it runs, and gives it back
        assert measures.os.sched_getaffinity(0) == {min(before)} and torch.get_num_threads() == 1
    assert measures.os.sched_getaffinity(0) == before and torch.get_num_threads() == threads
    monkeypatch.setattr(measures.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert measures.cpu_split("all") == (None, None)
    assert measures.cpu_split("auto") == ({1, 2}, {0})
    assert measures.cpu_split("2") == ({2}, {0, 1})
    for bad in ("0,1,2", "5"):
        with pytest.raises(ValueError, match="CPUs of their own"):
            measures.cpu_split(bad)
    with pytest.raises(ValueError, match="CPU numbers with commas"):
        measures.cpu_split("1-2")
    args = ["--http", "h11", "--bulk-priority", "normal", "--bulk-priority=idle"]
    assert measures.last_option(args, "--bulk-priority") == "idle" and measures.last_option(args, "--loop") is None
    monkeypatch.setattr(measures.os, "sched_getaffinity", lambda pid: {0})
    assert measures.cpu_split("auto") == (None, None)


def test_the_load_test_tells_what_else_ran_on_the_servers_cpus(monkeypatch):
    """cpu_others: the server's CPUs' busy time less the server's own CPU time is what else ran there,
    with the steal beside it, as shares of those CPUs per interval, over the load and over the
    intervals a request was open in."""
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks" / "serving_load"))
    import cpu_others
    if cpu_others.cpu_jiffies({0}) is None:
        pytest.skip("no /proc/stat")
    watch = cpu_others.CpuOthers(pid=1, cpus={1, 2})
    watch.hz = 100
    # (time, busy jiffies, steal jiffies, the server's CPU s): 2 CPUs for 1 s, then for 1 more s
    watch.samples = [(0.0, 0, 0, 0.0), (1.0, 150, 10, 1.2), (2.0, 300, 10, 2.9)]
    (a0, a1, others, steal), (_, _, others2, steal2) = watch.intervals()
    assert (a0, a1) == (0.0, 1.0) and others == pytest.approx(0.15) and steal == pytest.approx(0.05)
    assert others2 == 0.0 and steal2 == 0.0   # the server's own time: never a negative share
    s = watch.summary(slowest=[{"t0": 0.2, "t1": 0.3}], judged=[{"t0": 0.2, "t1": 0.3}, {"t0": 1.5, "t1": 1.6}])
    assert s["others_share"] == 0.075 and s["slowest_1pct"]["others"] == 0.15 and s["all"]["others"] == 0.075
    assert s["max_others_in_0.5s"] == 0.15 and s["steal_share"] == 0.025


@pytest.mark.slow
def test_the_load_test_on_the_tiny_base(tmp_path, monkeypatch):
    """benchmarks/serving_load/run.py (locust) for 20 s: 32 users mixing four adapters, one heavy, one
    over the limits, a promotion and an unload mid-run. Checks the answers, not the timings."""
    import importlib.util
    import json
    from pathlib import Path
    if importlib.util.find_spec("locust") is None:  # (not imported here: it monkey-patches the process with gevent)
        pytest.skip("locust is not installed (pip install locust)")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks" / "serving_load"))
    import run
    s = run.main(["--base", "random:tiny", "--users", "32", "--duration-s", "20", "--singles", "5", "--out", str(tmp_path)])
    assert s["wrong"] == 0 and s["errors"] == 0 and s["checked"] > 100, s["error_examples"]
    assert s["heavy_requests"] >= 1 and s["over_limit"] >= 5 and s["over_limit_refused"] == s["over_limit"]
    assert s["promotion"]["loaded"] == "news@v2" and s["unload"]["unloaded"] == ["music@v1"]
    assert s["single_after_score_ms"] > 0 and s["p99_vs_single_after"] > 0   # the baseline timed again after the load
    assert s["single_paced_score_ms"] > 0 and s["fifo_estimate_p99_vs_single"] >= 1 and 0 < s["server_busy_share"] <= 1
    assert {"news@v1", "news@v2", "music@v1", "video@v1", "ecommerce@v1"} <= set(s["versions"])
    # locust runs --tail-s past the 20 s, whose requests are checked but not timed (its stop stalls them)
    assert s["tail_s"] == 2 and s["stop_light_max_ms"] > 0 and s["light_per_s"] * 20 < s["light"]
    if s["cpus"] != "all":   # what else ran on the server's CPUs, as a share of them
        assert 0 <= s["server_cpus_others"]["others_share"] <= 1
    row = json.loads((tmp_path / "loadtest.jsonl").read_text().splitlines()[-1])
    assert row["metric"] == "light_p99_vs_single" and row["wrong"] == 0


def test_small_requests_over_resident_adapters_are_planned_on_the_event_loop(hub, monkeypatch):
    """A request of few characters (and few history x candidate pairs) over resident adapters is
    tokenized and counted on the event loop (its refusal needs no thread), and its forward awaited
    there (no thread at all); a larger one, one naming an adapter not resident, or a version's first
    ranking (both may read the disk) goes to a worker thread. The answers are the hub's own either way."""
    import threading
    from adapterhub import checks, ranking
    from adapterhub.serve import Limits, create_app
    from adapterhub.serve import app as app_module
    publish_random(hub, "news", seed=1)
    publish_random(hub, "music", seed=2)
    hub.load("news")
    for key in [k for k in hub.resident() if k.startswith("music@")]:
        hub.unload(key)  # not resident: its first request reads the disk
    where = []
    for module, name in ((checks, "encode_rows"), (ranking, "plan")):
        inner = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _inner=inner, **k: (where.append(threading.current_thread().name),
                                                                         _inner(*a, **k))[1])
    import anyio.to_thread
    trips, run_sync = [], anyio.to_thread.run_sync
    monkeypatch.setattr(anyio.to_thread, "run_sync", lambda *a, **k: (trips.append(1), run_sync(*a, **k))[1])
    worker = "AnyIO worker thread"
    app = create_app(hub, window_ms=1, limits=Limits(prepare_on_loop_chars=60, max_request_tokens=300))
    with TestClient(app) as c:
        small = c.post("/score", json={"model": "news", "prompts": [PROMPT]})  # 51 characters
        assert small.status_code == 200 and where.pop() != worker and not trips  # its forward awaited, no thread
        assert small.json()["scores"] == pytest.approx(hub.score([("news", PROMPT)]), abs=1e-6)
        large = c.post("/score", json={"model": "news", "prompts": [PROMPT, PROMPT]})
        assert large.status_code == 200 and where.pop() == worker and len(trips) == 1
        assert large.json()["scores"] == pytest.approx(small.json()["scores"] * 2, abs=1e-6)
        rerank = {"model": "news", "query": ["a thing"], "documents": ["b", "c"]}
        first = c.post("/v1/rerank", json=rerank)  # a version's first ranking may read its facts from the disk
        assert first.status_code == 200 and where.pop() == worker and len(trips) == 2
        loads = []   # the loop never calls Hub.load, which reads the disk for an adapter not resident
        monkeypatch.setattr(hub, "load", lambda *a, _load=hub.load, **k: (loads.append(threading.current_thread().name),
                                                                          _load(*a, **k))[1])
        again = c.post("/v1/rerank", json=rerank)
        assert again.status_code == 200 and where.pop() != worker and loads == []
        assert again.json()["results"] == first.json()["results"]
        evicted, where[:] = [None], []  # evicted by another thread between its check and its plan: planned in a thread
        monkeypatch.setattr(hub, "resident_adapter", lambda key, _get=hub.resident_adapter: evicted.pop() if evicted
                            else _get(key))
        moved = c.post("/v1/rerank", json=rerank)
        assert moved.status_code == 200 and moved.json()["results"] == first.json()["results"]
        assert where == [worker] and loads == [worker, worker] and len(trips) == 3   # (_resolve's and the plan's)
        where.clear()
        monkeypatch.setattr(hub, "load", type(hub).load.__get__(hub))
        over = c.post("/v1/rerank", json={"model": "news", "query": ["a"], "documents": ["b"] * 50})  # 51 characters
        assert over.status_code == 400 and "budget" in over.json()["error"]["message"] and where.pop() != worker
        monkeypatch.setattr(app_module, "LOOP_PAIRS", 1)  # history x candidates bounds a plan on the loop too
        assert c.post("/v1/rerank", json=rerank).status_code == 200 and where.pop() == worker and len(trips) == 4
        cold = c.post("/score", json={"model": "music", "prompts": [PROMPT]})  # read from the disk: not on the loop
        assert cold.status_code == 200 and where.pop() == worker
        assert len(trips) == 5 and c.get("/ready").status_code == 200
        assert app.state.gate.admitted == 0 and app.state.gate.tokens == 0


def test_the_server_freezes_its_heap_once_loaded_so_a_full_collection_walks_only_newer_objects(hub):
    """A full garbage collection of a server's heap (the base, torch, transformers: ~400k objects) took
    220-300 ms, with the GIL held, so every request waited for it. adapterhub serve freezes what is
    alive once the hub is loaded (the command passes gc_freeze: the uvicorn test above); the test's own
    hub is loaded already."""
    import gc
    import time
    from adapterhub.serve import create_app
    from adapterhub.serve.runner import build_server
    assert build_server(hub, port=0).config.app.state.gc_freeze is False   # embedded: left alone
    assert create_app(hub).state.gc_freeze is False and gc.get_freeze_count() == 0
    try:
        app = create_app(hub, gc_freeze=True)   # a hub given loaded: frozen at once, before ready
        with TestClient(app) as c:
            assert c.get("/health").status_code == 200
            assert app.state.gc_frozen > 100_000 and gc.get_freeze_count() > 100_000
            junk = [[i] for i in range(50_000)]   # new objects are still collected, and walked alone
            t = time.perf_counter()
            gc.collect()
            frozen_walk = time.perf_counter() - t
            gc.unfreeze()
            t = time.perf_counter()
            gc.collect()
            assert frozen_walk < time.perf_counter() - t
            del junk
    finally:
        gc.unfreeze()
