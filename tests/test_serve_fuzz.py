"""A schema-driven fuzz of `adapterhub serve` (schemathesis, from the server's own OpenAPI description)
against a server on 127.0.0.1 with the tiny random base: no 5xx and no hang over at least 2,000
requests, counted by the server itself (/metrics), and the server still answers correctly after.

    python -m pytest -q -m slow tests/test_serve_fuzz.py      (~1-2 min on 2 cores)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import publish_random

pytestmark = pytest.mark.slow

KEY = "fuzz-key"
NAMES = ["news", "music", "news@v1", "base"]
MIN_REQUESTS = 2000
# Steers a share of the generated bodies to adapters that exist, so that the fuzz reaches the
# tokenizer, the token budgets and the forwards, not only the 404 of a random name.
HOOKS = f'''
import schemathesis
from hypothesis import strategies as st

NAMES = {NAMES!r}


def _steer(body, name):
    if isinstance(body, dict):
        body = dict(body)
        for field in ("model", "adapter", "lora_name"):
            if field in body:
                body[field] = name
        if isinstance(body.get("rows"), list):
            body["rows"] = [dict(r, model=name) if isinstance(r, dict) else r for r in body["rows"]]
    return body


@schemathesis.hook
def flatmap_body(ctx, body):
    return st.one_of(st.just(body), st.builds(_steer, st.just(body), st.sampled_from(NAMES)))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0, headers: dict | None = None):
    import httpx
    return httpx.get(url, timeout=timeout, headers=headers)


def answered(metrics_text: str) -> dict[str, float]:
    """The server's own count of the requests it answered: {'<labels>': n} (adapterhub_http_requests_total)."""
    return {labels: float(n) for labels, n in
            re.findall(r'^adapterhub_http_requests_total\{(.*)\} ([0-9.e+]+)$', metrics_text, re.M)}


def by_status(before: dict, after: dict) -> tuple[dict[str, float], list[str]]:
    """Requests answered between two snapshots -> ({status: n}, the labels of those answered 5xx)."""
    counts: dict[str, float] = {}
    errors = []
    for labels, n in after.items():
        n -= before.get(labels, 0.0)
        status = re.search(r'status="(\d+)"', labels).group(1)
        if n > 0:
            counts[status] = counts.get(status, 0.0) + n
            if status.startswith("5"):
                errors.append(f"{labels}: {n:g}")
    return counts, errors


def test_fuzzing_the_openapi_description_gives_no_5xx_and_no_hang(tmp_path):
    import httpx
    from adapterhub.hub import Hub
    st_cli = shutil.which("st") or shutil.which("schemathesis")
    if st_cli is None:
        pytest.skip("schemathesis is not installed (pip install schemathesis)")
    registry = tmp_path / "adapters"
    hub = Hub(base="random:tiny", registry=registry, quant="fp32", device="cpu")  # the reference for the check after
    for i, name in enumerate(("news", "music")):
        publish_random(hub, name, seed=i + 1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    server = subprocess.Popen(
        [sys.executable, "-m", "adapterhub", "serve", "--base", "random:tiny", "--quant", "fp32", "--device", "cpu",
         "--registry", str(registry), "--host", "127.0.0.1", "--port", str(port), "--preload", "news,music",
         "--api-key", KEY, "--allow-runtime-loading", "--no-access-log", "--request-timeout-s", "20"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))
    try:
        end = time.monotonic() + 120
        while True:
            try:
                if get(url + "/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < end, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.2)
        before = answered(get(url + "/metrics").text)  # (the probes above are not the fuzz's)
        (tmp_path / "fuzz_hooks.py").write_text(HOOKS)
        fuzz = subprocess.run(
            [st_cli, "run", url + "/openapi.json", "--checks", "not_a_server_error", "--max-examples", "200",
             "--request-timeout", "30", "--header", f"Authorization: Bearer {KEY}", "--seed", "7", "--workers", "2",
             "--no-shrink", "--report", "ndjson", "--report-ndjson-path", str(tmp_path / "fuzz.ndjson")],
            env=dict(env, SCHEMATHESIS_HOOKS="fuzz_hooks"), capture_output=True, text=True, timeout=900, cwd=tmp_path)
        summary = fuzz.stdout[-3000:]
        assert fuzz.returncode == 0, summary + fuzz.stderr[-2000:]
        counts, errors = by_status(before, answered(get(url + "/metrics").text))
        total = sum(counts.values())
        cases = re.search(r"(\d+) generated", fuzz.stdout)
        print(f"fuzz: schemathesis generated {cases.group(1) if cases else '?'} test cases; the server answered "
              f"{int(total)} requests, by status {json.dumps(counts, sort_keys=True)}")
        assert total >= MIN_REQUESTS and not errors, (counts, errors)
        assert counts.get("200", 0) >= 300, counts  # the steered bodies reached the scoring paths
        # ... and after all that, it still answers correctly
        key = {"Authorization": f"Bearer {KEY}"}
        prompt = "The user liked A B C. Will the user like D? Answer:"
        r = httpx.post(url + "/score", json={"rows": [{"model": "news@v1", "prompt": prompt},
                                                      {"model": "music@v1", "prompt": prompt}]}, headers=key, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["scores"] == pytest.approx(hub.score([("news@v1", prompt), ("music@v1", prompt)]), abs=1e-5)
        history, docs = ["red thing 1", "blue thing 2"], ["thing 3", "thing 4", "thing 5"]
        r = httpx.post(url + "/v1/rerank", json={"model": "music@v1", "query": history, "documents": docs},
                       headers=key, timeout=30)
        want = dict(hub.recommend("music@v1", history, docs, k=3))
        assert r.status_code == 200 and {docs[x["index"]]: x["relevance_score"] for x in r.json()["results"]} == \
            pytest.approx(want, abs=1e-5)
        assert get(url + "/ready").status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode in (0, -signal.SIGTERM), server.returncode
