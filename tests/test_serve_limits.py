"""A server that can face a network: each row of the table of what an operator met, as a test (the
rows' numbers are the table's; the comment after each says what the server did before)."""
from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time

import httpx
import pytest

from conftest import publish_random

from serve_helpers import BOTH_PATHS, DOCS, HISTORY, PROMPT, Spy, client, in_thread, limits, message


# ------------------------------------------------------------------ 1: every row its own
def test_1_an_empty_or_unencodable_prompt_is_a_400_naming_its_row(served):
    with client(served) as c:
        r = c.post("/score", json={"model": "news", "prompts": [PROMPT, ""]})  # before: 200, the neighbour's score
        assert r.status_code == 400 and "row 1" in message(r) and "no tokens" in message(r)
        raw = json.dumps({"model": "news", "prompts": [PROMPT, "\ud800"]})      # before: 500
        r = c.post("/score", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "row 1" in message(r) and "surrogate" in message(r)
        raw = json.dumps({"model": "news", "query": HISTORY, "documents": ["ok", "bad \udcff"]})
        r = c.post("/v1/rerank", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "candidates[1]" in message(r)


# ------------------------------------------------------------------ 3: deadlines and disconnects
@BOTH_PATHS
def test_3_a_request_not_started_by_its_queue_deadline_is_dropped_unrun(served, on_loop):
    spy = Spy(served)
    with client(served, limits=limits(queue_timeout_s=0.3, request_timeout_s=10, prepare_on_loop_chars=on_loop)) as c:
        spy.hold()
        heavy = in_thread(c.post, "/score", json={"model": "news", "prompts": [PROMPT]})
        assert spy.entered.wait(10)
        t = time.perf_counter()
        r = c.post("/score", json={"model": "music", "prompts": [PROMPT]})  # before: waited for the heavy one
        assert r.status_code == 503 and "queue" in message(r) and r.headers["retry-after"] == "1"
        assert time.perf_counter() - t < 2.0
        spy.release()
        heavy["thread"].join(10)
        assert heavy["r"].status_code == 200
    assert [keys for keys, _ in spy.calls] == [{"news@v1"}]  # music's rows never ran


@BOTH_PATHS
def test_3_a_request_past_its_deadline_gets_a_504(served, on_loop):
    spy = Spy(served)
    with client(served, limits=limits(request_timeout_s=1.0, prepare_on_loop_chars=on_loop)) as c:
        spy.hold()
        t = time.perf_counter()
        r = c.post("/score", json={"model": "news", "prompts": [PROMPT]})
        spy.release()
        assert r.status_code == 504 and "deadline" in message(r) and time.perf_counter() - t < 3.0
        end = time.monotonic() + 10
        while c.app.state.batcher.depth()[0] and time.monotonic() < end:  # the held forward finishes
            time.sleep(0.01)
        assert c.post("/score", json={"model": "news", "prompts": [PROMPT]}).status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A real uvicorn server on 127.0.0.1 in a thread (runner.build_server)."""

    def __init__(self, hub, **kwargs):
        from adapterhub.serve.runner import build_server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = build_server(hub, port=self.port, window_ms=1, **kwargs)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        end = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < end and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@BOTH_PATHS
def test_3_work_is_dropped_when_the_client_disconnects(served, on_loop):
    spy = Spy(served)
    with Running(served, limits=limits(prepare_on_loop_chars=on_loop)) as srv:
        spy.hold()
        first = in_thread(httpx.post, srv.url + "/score", json={"model": "news", "prompts": [PROMPT]}, timeout=20)
        assert spy.entered.wait(10)
        with pytest.raises(httpx.ReadTimeout):  # before: the server still did its work
            httpx.post(srv.url + "/score", json={"model": "music", "prompts": [PROMPT]}, timeout=0.3)
        deadline = time.monotonic() + 5
        while srv.server.config.app.state.batcher.depth()[0] > 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # the server notices the disconnect and drops the queued request
        spy.release()
        first["thread"].join(10)
        assert first["r"].status_code == 200
    assert [keys for keys, _ in spy.calls] == [{"news@v1"}]


# ------------------------------------------------------------------ 4: a bounded queue
def test_4_a_full_queue_refuses_fast_with_retry_after(served):
    spy = Spy(served)
    with client(served, limits=limits(max_queue=2)) as c:
        spy.hold()
        waiting = [in_thread(c.post, "/score", json={"model": m, "prompts": [PROMPT]}) for m in ("news", "music")]
        end = time.monotonic() + 10
        while c.app.state.gate.admitted < 2 and time.monotonic() < end:
            time.sleep(0.01)
        t = time.perf_counter()
        r = c.post("/score", json={"model": "news", "prompts": [PROMPT]})  # before: all 150 waited 23 s
        assert r.status_code == 503 and "overloaded" in message(r) and r.headers["retry-after"] == "1"
        assert time.perf_counter() - t < 2.0  # (the held forward would take forever)
        ready = c.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "overloaded"
        spy.release()
        for w in waiting:
            w["thread"].join(10)
            assert w["r"].status_code == 200
        assert c.get("/ready").status_code == 200


# ------------------------------------------------------------------ 5: liveness and readiness
def test_5_health_answers_while_the_workers_are_busy(served):
    spy = Spy(served)
    with client(served, limits=limits(max_queue=1)) as c:
        spy.hold()
        busy = in_thread(c.post, "/score", json={"model": "news", "prompts": [PROMPT]})
        assert spy.entered.wait(10)
        t = time.perf_counter()
        assert c.get("/health").json()["status"] == "ok"  # before: 18 s behind the scoring requests
        assert time.perf_counter() - t < 2.0  # (the held forward would take forever)
        spy.release()
        busy["thread"].join(10)


def test_5_ready_only_once_the_base_is_loaded(served):
    loaded = threading.Event()

    def build():
        assert loaded.wait(20)
        return served
    with client(build) as c:  # before: no readiness endpoint
        assert c.get("/health").json()["base"] is None
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert c.post("/score", json={"model": "news", "prompts": [PROMPT]}).status_code == 503
        loaded.set()
        end = time.monotonic() + 10
        while c.get("/ready").status_code != 200:
            assert time.monotonic() < end
            time.sleep(0.02)
        assert c.post("/score", json={"model": "news", "prompts": [PROMPT]}).status_code == 200


# ------------------------------------------------------------------ 6: auth
def test_6_api_key_and_runtime_loading(served):
    from adapterhub.serve import Auth
    with client(served, auth=Auth(api_keys=("k1",), admin_keys=("adm",), allow_runtime_loading=True)) as c:
        body = {"model": "news", "prompts": [PROMPT]}
        for headers in ({}, {"Authorization": "Bearer nope"}):  # before: anyone scored, loaded and unloaded
            r = c.post("/score", json=body, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models").status_code == 401
        key = {"Authorization": "Bearer k1"}
        assert c.post("/score", json=body, headers=key).status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200  # probes: no key
        assert c.post("/adapters/unload", json={"model": "news"}, headers=key).status_code == 401
        r = c.post("/v1/unload_lora_adapter", json={"lora_name": "news"}, headers={"Authorization": "Bearer adm"})
        assert r.status_code == 200 and r.json()["unloaded"] == ["news@v1"]
    with client(served, auth=Auth(api_keys=("k1",))) as c:  # runtime loading off (the default)
        r = c.post("/adapters/load", json={"model": "news"}, headers={"Authorization": "Bearer k1"})
        assert r.status_code == 403 and "--allow-runtime-loading" in message(r)


# ------------------------------------------------------------------ 7: metrics, request ids, access log
def test_7_metrics_request_ids_and_an_access_log(served, caplog):
    with client(served) as c, caplog.at_level(logging.INFO, logger="adapterhub.access"):
        t = time.perf_counter()
        r = c.post("/score", json={"model": "news", "prompts": [PROMPT, PROMPT]}, headers={"X-Request-ID": "abc-123"})
        elapsed_ms = 1000 * (time.perf_counter() - t)
        assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"
        # the server's own time, for a client to tell it from the network's: a part of what the client waited;
        # and, its forward awaited on the event loop, how that time went (waiting, forward, back to the loop)
        parts = {m[0]: float(m[1]) for m in re.findall(r"(\w+);dur=([0-9.]+)", r.headers["server-timing"])}
        assert set(parts) == {"app", "queue", "forward", "resume"}, r.headers["server-timing"]
        assert 0 < parts["forward"] and parts["queue"] + parts["forward"] + parts["resume"] <= parts["app"] <= elapsed_ms
        r = c.post("/score", json={"model": "newz", "prompts": [PROMPT]}, headers={"X-Request-ID": "bad id!"})
        rid = r.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", rid) and r.json()["error"]["request_id"] == rid
        text = c.get("/metrics").text  # before: no /metrics
    assert 'adapterhub_http_requests_total{method="POST",route="/score",status="200"} 1.0' in text
    assert 'adapterhub_http_requests_total{method="POST",route="/score",status="404"} 1.0' in text
    assert 'adapterhub_adapter_requests_total{adapter="news@v1"} 1.0' in text
    assert "adapterhub_queue_wait_seconds_count 1.0" in text and "adapterhub_batch_items_count 1.0" in text
    assert "adapterhub_request_tokens_total" in text and "adapterhub_ready 1.0" in text
    lines = [r.getMessage() for r in caplog.records if r.name == "adapterhub.access"]
    assert any('"POST /score" 200' in line and "id=abc-123" in line for line in lines)


# ------------------------------------------------------------------ 8: the shapes clients speak
def test_8_models_and_rerank_in_the_shapes_clients_speak(served):
    want = dict(served.recommend("music", HISTORY, DOCS, k=3))
    with client(served) as c:
        models = c.get("/v1/models").json()  # before: no /v1 routes; `model` refused as an extra field
        assert models["object"] == "list"
        ids = {m["id"]: m for m in models["data"]}
        assert set(ids) == {"base", "news", "music"} and ids["news"]["root"] == "news@v1"
        assert ids["news"]["object"] == "model" and ids["news"]["scenarios"] == ["toy"]
        assert c.get("/v1/models/music@v1").json()["id"] == "music"
        r = c.post("/v1/rerank", json={"model": "music", "query": HISTORY, "documents": [DOCS[0], {"text": DOCS[1]}, DOCS[2]],
                                       "top_n": 2})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "music@v1" and len(body["results"]) == 2 and body["usage"]["total_tokens"] > 0
        for res in body["results"]:
            assert res["document"]["text"] == DOCS[res["index"]]
            assert res["relevance_score"] == pytest.approx(want[DOCS[res["index"]]], abs=1e-6)
        same = c.post("/v1/rerank", json={"model": "music", "query": "\n".join(HISTORY), "documents": DOCS,
                                          "return_documents": False}).json()["results"]
        assert [x["index"] for x in same[:2]] == [x["index"] for x in body["results"]] and "document" not in same[0]
        r = c.post("/score", json={"rows": [{"model": "news", "prompt": PROMPT}]})
        assert r.status_code == 200 and r.json()["adapters"] == ["news@v1"]


def test_8_one_error_object_and_no_server_paths(served, tmp_path):
    from adapterhub.serve import Auth
    publish_random(served, "broken", seed=5)
    weights = served.registry.resolve("broken") / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with client(served, auth=Auth(api_keys=("k",)), max_body_bytes=2000) as c:
        key = {"Authorization": "Bearer k"}
        replies = [c.post("/score", json={"model": "nope", "prompts": ["x"]}, headers=key),       # 404: before, a path
                   c.post("/score", json={"model": "broken", "prompts": ["x"]}, headers=key),     # 500, corrupt entry
                   c.post("/score", json={"prompts": ["x"], "typo": 1}, headers=key),             # 422
                   c.post("/score", json={"model": "news", "prompts": [""]}, headers=key),        # 400
                   c.post("/score", json={"model": "news", "prompts": ["x" * 5000]}, headers=key),  # 413
                   c.post("/score", json={"model": "news", "prompts": ["x"]}),                    # 401
                   c.post("/adapters/load", json={"model": "news"}, headers=key),                 # 403
                   c.get("/no/such/route"), c.delete("/score")]                                   # 404, 405
    assert [r.status_code for r in replies] == [404, 500, 422, 400, 413, 401, 403, 404, 405]
    for r in replies:
        error = r.json()["error"]
        assert set(error) >= {"message", "type", "code", "param"} and error["code"] == r.status_code, error
        assert r.headers["server-timing"].startswith("app;dur=") and r.headers["x-request-id"] == error["request_id"]
        assert str(tmp_path) not in r.text and str(tmp_path.resolve()) not in r.text, r.text
    assert "adapter_model.safetensors" in replies[1].json()["error"]["message"]
    assert replies[0].json()["error"]["available"] == ["broken", "music", "news"]


# ------------------------------------------------------------------ 9: scenarios
def test_9_a_scenario_the_adapter_was_not_trained_for_is_a_400_listing_the_allowed(served):
    from test_hub_rows import _publish_joint
    _publish_joint(served, "joint")
    with client(served) as c:
        r = c.post("/v1/rerank", json={"model": "joint", "query": HISTORY, "documents": DOCS})  # before: 500
        assert r.status_code == 400 and r.json()["error"]["allowed"] == ["news", "music"]
        assert r.json()["error"]["param"] == "scenario"
        r = c.post("/recommend", json={"model": "news", "history": HISTORY, "candidates": DOCS, "scenario": "video"})
        assert r.status_code == 400 and r.json()["error"]["allowed"] == ["toy"]  # before: 200, a generic template
        r = c.post("/v1/rerank", json={"model": "joint", "query": HISTORY, "documents": DOCS, "scenario": "music"})
        assert r.status_code == 200


# ------------------------------------------------------------------ 10: draining
@BOTH_PATHS
def test_10_sigterm_drains_with_a_deadline_not_ready_first(served, on_loop):
    import signal
    spy = Spy(served)
    with Running(served, drain_delay_s=0.5, drain_timeout_s=1.0, limits=limits(prepare_on_loop_chars=on_loop)) as srv:
        spy.hold()
        stuck = in_thread(httpx.post, srv.url + "/score", json={"model": "news", "prompts": [PROMPT]}, timeout=20)
        assert spy.entered.wait(10)
        t = time.monotonic()
        srv.server.handle_exit(signal.SIGTERM, None)
        r = httpx.get(srv.url + "/ready", timeout=5)
        assert r.status_code == 503 and r.json()["status"] == "draining"  # not ready first...
        assert httpx.get(srv.url + "/health", timeout=5).status_code == 200
        srv.thread.join(10)  # before: the drain had no deadline (this request would hold it forever)
        assert not srv.thread.is_alive() and time.monotonic() - t < 4.0
        stuck["thread"].join(5)
        assert stuck["r"].status_code == 503 and "shutting down" in message(stuck["r"])
        spy.release()


def test_a_request_given_up_before_its_thread_starts_is_released_once():
    """Found in review: a thread cancelled before it started never released the request's admission."""
    from adapterhub.serve.limits import Gate, _End
    gate = Gate(limits())
    gate.ready = True
    call = gate._admit()
    gate.count(call, 10)
    end = _End(gate, call)
    end(unstarted_only=True)  # the request's deadline passed while its thread had not started
    assert (gate.admitted, gate.tokens) == (0, 0) and not end.start()  # that thread, if it starts, does nothing
    end()
    assert (gate.admitted, gate.tokens) == (0, 0)  # released once
