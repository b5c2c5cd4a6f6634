"""The hub under several threads. Every answer equals the single-threaded one."""
from __future__ import annotations

import os
import threading

import pytest
import torch

from conftest import publish_random

NAMES = ("video", "music", "news", "ecommerce")
PROMPTS = ["The user liked A B C. Will the user like D? Answer:", "short one",
           "another prompt of middling size here, with a few more words"]


def run_threads(n: int, fn) -> list:
    """fn(i) in n threads started together; -> their results; re-raises the first error."""
    results, errors = [None] * n, []
    barrier = threading.Barrier(n)

    def body(i):
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def four(hub):
    for i, name in enumerate(NAMES):
        publish_random(hub, name, seed=i + 1)
        hub.load(name)
    return hub


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b))


def test_threads_with_mixed_adapters_get_the_single_threaded_scores(four):
    """Before (one shared routing object): threads read each other's adapter choice, and most
    answers came from the wrong adapter, with no error."""
    hub = four
    single = {name: hub.score([(name, p) for p in PROMPTS]) for name in NAMES}
    mixed_rows = [(NAMES[i % 4], PROMPTS[i % 3]) for i in range(8)]
    mixed = hub.score(mixed_rows)
    assert len({tuple(v) for v in single.values()}) == 4  # the adapters really differ

    def work(i):
        wrong = 0
        for _ in range(20):
            if i % 3 == 2:
                wrong += not close(hub.score(mixed_rows), mixed)
            else:
                name = NAMES[i % 4]
                wrong += not close(hub.score([(name, p) for p in PROMPTS]), single[name])
        return wrong
    assert run_threads(8, work) == [0] * 8


def test_mixed_batch_equals_each_row_alone(hub):
    """A mixed batch with different ranks, base rows and an adapter that targets fewer modules among
    the rows (tests/test_mixed_batch.py has the rest)."""
    publish_random(hub, "r4", r=4, seed=1)
    publish_random(hub, "r8", r=8, seed=2)
    publish_random(hub, "qv", r=4, seed=3, targets=("q_proj", "v_proj"))
    publish_random(hub, "r4b", r=4, seed=4)
    for refs in (["r4", "r4b", "r4b", "r4"], ["r4", "r8", "r4", "r8"], ["r4", "qv", "r4"], ["r8", None, "r4", "r8"],
                 ["r4", "r4@v1"]):
        rows = [(ref, PROMPTS[i % 3]) for i, ref in enumerate(refs)]
        assert close(hub.score(rows), [hub.score([row])[0] for row in rows]), refs


def test_use_is_per_thread(four):
    hub = four
    ids = torch.tensor([hub.encode(PROMPTS[0])])
    with torch.no_grad():
        want = {}
        for name in NAMES:
            with hub.use(name) as model:
                want[name] = model(ids).logits
        with hub.use(None) as model:
            want[None] = model(ids).logits

    def work(i):
        name = (None,) + NAMES
        name = name[i % 5]
        ok = True
        with torch.no_grad(), hub.use(name) as model:
            for _ in range(15):
                ok &= torch.equal(model(ids).logits, want[name])
        return ok
    assert all(run_threads(10, work))
    assert hub.routing.active is None  # nothing leaked into this thread


def test_load_unload_and_eviction_while_others_score(hub):
    """A forward routed to an adapter keeps that adapter's full weights to its end, even when another
    thread unloads or evicts it halfway: never a mix of placed and missing modules, never a crash."""
    names = NAMES + ("extra1", "extra2")
    for i, name in enumerate(names):
        publish_random(hub, name, seed=i + 1)
    want = {name: hub.score([(name, p) for p in PROMPTS]) for name in names}
    hub.max_resident = 3  # six adapters, three slots: scoring and churn evict each other all the time
    stop = threading.Event()

    def churn():
        k = 0
        while not stop.is_set():
            name = names[k % len(names)]
            hub.load(name) if k % 2 else hub.unload(name)
            k += 1
        return k

    def work(i):
        wrong = 0
        for j in range(8):
            name = names[(i + j) % len(names)]
            wrong += not close(hub.score([(name, p) for p in PROMPTS]), want[name])
        return wrong

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        assert run_threads(6, work) == [0] * 6
    finally:
        stop.set()
        churner.join()
    assert len(hub.resident()) <= 3
    resident = {hub._wkey(k) for k in hub.resident()}
    assert set(hub.routing.table) == resident  # nothing placed that the hub does not list


def test_checkpointed_backward_on_a_thread_without_the_route_still_trains(hub):
    """On CUDA, autograd runs a backward on its own device thread, which does not see the route the
    training thread set; a checkpointed layer re-runs its forward there. Simulated on CPU by calling
    backward from a fresh thread: the gradients equal the un-checkpointed ones."""
    from adapterhub.lora import TRAIN
    ids = torch.tensor([hub.encode(PROMPTS[0])] * 2)
    grads = {}
    for mode in ("plain", "checkpointed"):
        torch.manual_seed(0)
        with hub.trainable(4, 8.0, 0.0, ("q_proj", "v_proj")) as pairs, hub.use(TRAIN):
            for p in pairs.params:
                p.data.normal_(0, 0.5)  # B non-zero: A's gradient depends on the route
            if mode == "checkpointed":
                hub.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                hub.decoder.train()
            try:
                loss = hub.model(ids).logits.square().mean()
                run_threads(1, lambda i: loss.backward())
            finally:
                hub.model.gradient_checkpointing_disable()
                hub.decoder.eval()
            grads[mode] = [p.grad.clone() for p in pairs.params]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads["plain"], grads["checkpointed"]))
    assert hub.routing.training == 0


# ---------------------------------------------------------------- the batcher

def test_batcher_answers_each_caller_with_its_own_rows(four):
    from adapterhub.batcher import Batcher
    hub = four
    want = {(n, p): hub.score([(n, p)])[0] for n in NAMES + (None,) for p in PROMPTS}
    with Batcher(hub, window_ms=20) as batcher:
        def work(i):
            wrong = 0
            for j in range(6):
                rows = [((NAMES + (None,))[(i + j + r) % 5], PROMPTS[(i * j + r) % 3]) for r in range(1 + (i + j) % 3)]
                wrong += not close(batcher.score(rows), [want[row] for row in rows])
            return wrong
        assert run_threads(12, work) == [0] * 12
        assert batcher.requests == 12 * 6 and batcher.batches < batcher.requests  # calls were batched together


def test_batcher_recommend_equals_hub_recommend(four):
    from adapterhub.batcher import Batcher
    hub = four
    history = ["red thing 1", "red thing 3", "blue thing 2"]
    candidates = [f"thing {j}" for j in range(7)]
    want = {n: dict(hub.recommend(n, history, candidates, k=7)) for n in NAMES}
    with Batcher(hub, window_ms=20) as batcher:
        got = run_threads(8, lambda i: batcher.recommend(NAMES[i % 4], history, candidates, k=7))
        assert batcher.batches < 8
    for i, ranked in enumerate(got):  # (the tiny random base ties many scores: compare them, not the order)
        expect = want[NAMES[i % 4]]
        assert close([s for _, s in ranked], [expect[c] for c, _ in ranked]) and len(ranked) == 7


def test_batcher_error_reaches_only_the_caller_whose_rows_caused_it(four):
    from adapterhub.batcher import Batcher
    from adapterhub.errors import AdapterNotFoundError
    hub = four
    want = hub.score([("news", PROMPTS[0])])
    with Batcher(hub, window_ms=50) as batcher:
        def work(i):
            if i == 0:
                with pytest.raises(IndexError):
                    batcher.rows([None], [[10 ** 6]])  # a token id past the vocabulary fails in the forward
                return "raised"
            if i == 1:
                with pytest.raises(AdapterNotFoundError):
                    batcher.score([("newz", PROMPTS[0])])  # refused in the caller's thread, before any forward
                return "raised"
            return batcher.score([("news", PROMPTS[0])])
        got = run_threads(5, work)
    assert got[:2] == ["raised", "raised"] and all(close(g, want) for g in got[2:])


def test_a_lone_call_waits_at_most_the_window(four):
    import time
    from adapterhub.batcher import Batcher
    hub = four
    hub.score([("news", PROMPTS[0])])
    t = time.perf_counter()
    hub.score([("news", PROMPTS[0])])
    direct = time.perf_counter() - t
    with Batcher(hub, window_ms=30) as batcher:
        batcher.score([("news", PROMPTS[0])])
        t = time.perf_counter()
        batcher.score([("news", PROMPTS[0])])
        batched = time.perf_counter() - t
    assert batched < direct + 0.030 + 0.25  # the window, plus slack for a busy CI machine
    with pytest.raises(RuntimeError, match="closed"):
        batcher.score([("news", PROMPTS[0])])


def test_concurrency_benchmark_suite(tmp_path, monkeypatch):
    """adapterhub.bench.concurrency --quick on the tiny base writes its rows (adapterhub bench runs it)."""
    import json
    from adapterhub import bench
    from adapterhub.bench import concurrency
    monkeypatch.delenv("ADAPTERHUB_BENCH_RUN", raising=False)
    monkeypatch.setattr(concurrency, "SECONDS_QUICK", 0.4)
    monkeypatch.setattr(concurrency, "PAIRS_QUICK", 2)
    assert bench.SUITES["concurrency"][0] == "concurrency"
    concurrency.main(["--base", "random:tiny", "--device", "cpu", "--quick", "--quants", "fp32", "--out", str(tmp_path)])
    rows = [json.loads(line) for line in (tmp_path / "concurrency.jsonl").read_text().splitlines()]
    requests = [r for r in rows if r["metric"] == "concurrent_requests"]
    assert sorted((r["params"]["mode"], r["params"]["callers"]) for r in requests) == sorted(
        (m, c) for m in ("serial", "batched") for c in (1, 8, 32))
    assert all(r["value"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in requests)
    mixed = [r for r in rows if r["metric"] == "mixed_vs_single"]
    assert [r["params"]["way"] for r in mixed] == ["segments"]
    assert all(r["value"] > 0 and r["max_abs_diff"] < 1e-4 for r in mixed)
    assert {r["params"]["way"] for r in rows if r["metric"] == "routing_us"} == {"contextvar", "lock"}
    assert len({r["run"] for r in rows}) == 1


@pytest.mark.parametrize("bulk_tokens", [None, 64])
def test_a_light_request_overtakes_a_heavy_forward_only_with_a_bulk_lane(four, bulk_tokens):
    """A heavy row (one item: it cannot be split over forwards) is slowed down to 20 ms per decoder
    layer; a light request sent while it runs is answered before the heavy forward has passed its
    last layer only when heavy requests have their own lane, whose forwards give way between
    layers. Both answers stay each row's own."""
    import time
    from adapterhub.batcher import Batcher
    hub = four
    heavy = ("news", " ".join(["red thing blue thing"] * 40))
    light = ("music", PROMPTS[0])
    want = {row: hub.score([row])[0] for row in (heavy, light)}
    in_heavy, heavy_done, mine = threading.Event(), threading.Event(), threading.local()

    def slow(module, args):
        if not threading.current_thread().name.startswith("adapterhub-batcher"):
            return
        if module is hub.decoder.layers[0]:
            mine.heavy = len(args[0][0]) > 100   # this thread's forward is the heavy row's
        if mine.heavy:
            in_heavy.set()
            time.sleep(0.02)

    def passed_last(module, args, output):
        if threading.current_thread().name.startswith("adapterhub-batcher") and mine.heavy:
            heavy_done.set()
    hooks = [layer.register_forward_pre_hook(slow) for layer in hub.decoder.layers]
    hooks.append(hub.decoder.layers[-1].register_forward_hook(passed_last))
    out = {}
    try:
        with Batcher(hub, window_ms=0, bulk_tokens=bulk_tokens) as batcher:
            t = threading.Thread(target=lambda: out.update(heavy=batcher.score([heavy])[0]))
            t.start()
            assert in_heavy.wait(10)
            out["light"] = batcher.score([light])[0]
            out["heavy_done_first"] = heavy_done.is_set()
            t.join(30)
    finally:
        for h in hooks:
            h.remove()
    assert close([out["heavy"], out["light"]], [want[heavy], want[light]])
    assert out["heavy_done_first"] == (bulk_tokens is None)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="the OS has no idle scheduling class")
@pytest.mark.parametrize("bulk_idle", [False, True])
def test_the_bulk_lanes_worker_runs_at_idle_priority_only_when_asked(four, bulk_idle):
    """With bulk_idle the OS gives the bulk lane's worker a core only when no other thread wants it,
    so a light request's work takes the core from a heavy forward at once; without it (the default:
    beside busy processes an idle thread holding the GIL stalls the others) it keeps its priority, and
    the main lane's worker always does. Each answer is still its row's own."""
    from adapterhub.batcher import Batcher
    heavy = ("news", " ".join(["red thing blue thing"] * 40))   # over bulk_tokens: the bulk lane's
    light = ("music", PROMPTS[0])
    want = four.score([heavy, light])
    with Batcher(four, window_ms=0, bulk_tokens=64, bulk_idle=bulk_idle) as batcher:
        got = [batcher.score([heavy])[0], batcher.score([light])[0]]   # each worker has started and run
        policy = {lane: os.sched_getscheduler(b._worker.native_id) for lane, b in
                  (("main", batcher), ("bulk", batcher.bulk))}
    normal = os.sched_getscheduler(0)
    assert policy == {"main": normal, "bulk": os.SCHED_IDLE if bulk_idle else normal}
    assert close(got, want)
