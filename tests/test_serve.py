"""Issue 16: `adapterhub serve` (HTTP API) and a short run of the load test on the tiny random base."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import publish_random

from fastapi.testclient import TestClient  # the 'test' extra installs the 'serve' stack: these never skip

PROMPT = "The user liked A B C. Will the user like D? Answer:"
BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def client(hub):
    from adapterhub.serve import create_app
    for i, name in enumerate(("news", "music")):
        publish_random(hub, name, seed=i + 1)
    with TestClient(create_app(hub, window_ms=1, max_body_bytes=20_000)) as c:
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
    assert all(w in r.json()["error"] for w in words), r.json()


def test_malformed_json_and_oversized_bodies(client):
    r = client.post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]
    r = client.post("/score", json={"adapter": "news", "prompts": ["x" * 30_000]})
    assert r.status_code == 413 and "20000-byte limit" in r.json()["error"]

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
    assert r.status_code == 500 and "adapter_model.safetensors" in r.json()["error"]
    assert client.post("/score", json={"adapter": "news", "prompts": [PROMPT]}).status_code == 200


def test_serve_command_refuses_a_missing_registry_and_bad_preload(tmp_path, capsys):
    from adapterhub.cli import main
    assert main(["serve", "--registry", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "reg").mkdir()
    assert main(["serve", "--registry", str(tmp_path / "reg"), "--preload", "news"]) == 2
    assert "'news' not found" in capsys.readouterr().err


def test_short_load_test_on_the_tiny_base(tmp_path, monkeypatch):
    """benchmarks/loadtest.py for a few seconds: clients mix four adapters while another promotes and
    loads a new version; every answer equals the single call for the version it names."""
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import loadtest
    summary = loadtest.main(["--base", "random:tiny", "--quant", "fp32", "--clients", "8", "--duration-s", "4",
                             "--in-process", "--out", str(tmp_path)])
    assert summary["errors"] == 0 and summary["lost"] == 0 and summary["wrong"] == 0
    assert summary["requests"] > 20 and summary["swapped"] and summary["versions_seen"] >= 5
    row = json.loads((tmp_path / "loadtest.jsonl").read_text().splitlines()[-1])
    assert row["metric"] == "loadtest" and row["wrong"] == 0
