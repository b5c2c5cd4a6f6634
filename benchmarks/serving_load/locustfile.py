"""The load test's clients, for locust (run.py starts it headless against 127.0.0.1 and checks the answers).

    Light     (all users but two) POST /score with 1-3 rows mixing the adapters (some pinned 'name@v1'),
              or POST /v1/rerank of 5 documents; a think time between requests
    Heavy     (one user) POST /v1/rerank of many documents behind a long history, near the server's
              per-request token budget, back to back
    OverLimit (one user) requests over the server's token limits (a prompt over --max-model-len, a
              ranking over --max-request-tokens), which must be refused fast

Every answer is kept (latency, status, what was asked, what came back) and written at the end to
$LOAD_ANSWERS as JSON lines, for run.py to check each against the adapter scored alone. The plan
(prompts, histories, documents, refs, key) comes from $LOAD_PLAN, a JSON file run.py writes.
Only 127.0.0.1 is contacted: run.py passes --host, and this file refuses any other.
"""
from __future__ import annotations

import json
import os
import random
import time
from urllib.parse import urlparse

from locust import FastHttpUser, between, constant, events, task
from measures import server_ms, server_parts

PLAN = json.load(open(os.environ["LOAD_PLAN"]))
ANSWERS: list[dict] = []
HEADERS = {"Authorization": f"Bearer {PLAN['key']}", "Content-Type": "application/json"}


@events.test_start.add_listener
def _loopback_only(environment, **kwargs):
    host = urlparse(environment.host or "").hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"this load test only sends to 127.0.0.1, not {environment.host!r}")


@events.test_stop.add_listener
def _write_answers(environment, **kwargs):
    with open(os.environ["LOAD_ANSWERS"], "w") as fh:
        for a in ANSWERS:
            fh.write(json.dumps(a) + "\n")


class _Client(FastHttpUser):
    abstract = True
    network_timeout = connection_timeout = 120.0

    def call(self, user: str, path: str, body: dict, record: dict) -> None:
        t0 = time.time()
        start = time.perf_counter()
        with self.client.post(path, data=json.dumps(body), headers=HEADERS, catch_response=True,
                              name=f"{user} {path}") as r:
            ms = 1000 * (time.perf_counter() - start)
            status = r.status_code or 0
            try:
                reply = r.json()
            except Exception:  # noqa: BLE001 - a non-JSON reply is recorded as such and checked by run.py
                reply = {"raw": (r.text or "")[:300]}
            ANSWERS.append({"user": user, "path": path, "t0": t0, "t1": time.time(), "ms": ms, "status": status,
                            "server_ms": server_ms(r.headers.get("server-timing")),
                            "server_parts": server_parts(r.headers.get("server-timing")), **record, "reply": reply})
            if status == 200 or (user == "over_limit" and status == 400):
                r.success()
            else:
                r.failure(f"{status} {str(reply)[:200]}")


class Light(_Client):
    wait_time = between(PLAN["think_s"][0], PLAN["think_s"][1])
    weight = 1

    def on_start(self):
        self.rng = random.Random(id(self))

    @task(3)
    def score(self):
        rows = [(self.rng.choice(PLAN["refs"]), self.rng.randrange(len(PLAN["prompts"])))
                for _ in range(self.rng.randint(1, 3))]
        self.call("light", "/score", {"rows": [{"model": ref, "prompt": PLAN["prompts"][p]} for ref, p in rows]},
                  {"prompts": [p for _, p in rows]})

    @task(1)
    def rerank(self):
        ref, h = self.rng.choice(PLAN["refs"]), self.rng.randrange(len(PLAN["histories"]))
        self.call("light", "/v1/rerank", {"model": ref, "query": PLAN["histories"][h], "documents": PLAN["documents"]},
                  {"history": h})


class Heavy(_Client):
    fixed_count = 1
    wait_time = constant(0)

    @task
    def rerank(self):
        self.call("heavy", "/v1/rerank", {"model": "video", "query": PLAN["heavy_history"],
                                          "documents": PLAN["heavy_documents"], "top_n": 10}, {})


class OverLimit(_Client):
    fixed_count = 1
    wait_time = constant(0.5)

    @task
    def too_long_prompt(self):
        self.call("over_limit", "/score", {"model": "news", "prompts": [PLAN["too_long_prompt"]]}, {"expect": 400})

    @task
    def too_many_tokens(self):
        self.call("over_limit", "/v1/rerank", {"model": "news", "query": PLAN["histories"][0],
                                               "documents": PLAN["too_many_documents"]}, {"expect": 400})
