"""Residency per hub over a shared base, unload by name, 'base' in
Python, and a quiet library."""
import logging
import warnings

import torch

from adapterhub.hub import Hub

from conftest import publish_random


def test_two_hubs_over_one_base_with_different_registries_do_not_clobber(tiny_base, tmp_path):
    """Before: both held 'news@v1' under one wrapper key; the second load overwrote the first hub's
    weights, and after one unloaded, the other served base outputs while listing news as resident."""
    a = Hub(base=tiny_base, registry=tmp_path / "a")
    b = Hub(base=tiny_base, registry=tmp_path / "b")
    publish_random(a, "news", seed=1)
    publish_random(b, "news", seed=2)
    prompt = [("news", "The user liked A B C. Will the user like D? Answer:")]
    base = a.score([(None, prompt[0][1])])
    sa = a.score(prompt)
    sb = b.score(prompt)
    assert sa != sb and sa != base and sb != base
    assert a.score(prompt) == sa  # b's load did not overwrite a's weights
    b.unload("news")
    assert a.resident() == ["news@v1"] and a.score(prompt) == sa
    assert b.score(prompt) == sb  # reloads on demand


def test_unload_by_name_unloads_what_was_loaded_by_version(hub, caplog):
    """Before: hub.unload('news') did nothing when 'news@v1' had been loaded."""
    publish_random(hub, "news")
    hub.load("news@v1")
    assert hub.unload("news") == ["news@v1"]
    assert hub.resident() == [] and all(not m.adapters for m in hub.wrapped.values())
    with caplog.at_level(logging.WARNING, logger="adapterhub.hub"):
        assert hub.unload("news") == []
    assert "not resident" in caplog.text


def test_base_is_accepted_in_python_as_in_the_cli(hub):
    p = "The user liked A. Will the user like B? Answer:"
    assert hub.score([("base", p)]) == hub.score([(None, p)])
    with hub.use("base") as model:
        assert hub.routing.active is None and model is hub.model


def test_quantized_base_load_is_quiet_and_sets_no_process_wide_filter(tmp_path, caplog):
    """Before: base.py set a process-wide warnings filter, and the Python API printed bitsandbytes'
    'Failed to load CPU gemm_4bit_forward from kernels-community' note."""
    from adapterhub.base import load_base
    filters = list(warnings.filters)
    with caplog.at_level(logging.WARNING):
        b = load_base("random:small", quant="nf4", device="cpu", compute="native")
        with torch.no_grad():
            b.model(torch.tensor([[5, 6, 7]]))
    assert warnings.filters == filters
    # in a fresh process, where bitsandbytes is imported for the first time
    import subprocess
    import sys
    code = ("import logging; logging.basicConfig(); from adapterhub.base import load_base; "
            "load_base('random:small', quant='nf4', device='cpu', compute='native')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "gemm_4bit_forward" not in out.stderr + out.stdout


def test_concurrent_cold_loads_of_one_adapter_read_it_once(hub, monkeypatch):
    """Before: each thread that found 'news' not resident read and checked its file itself (a server's
    requests for an unloaded adapter all come at once)."""
    import threading
    import time
    publish_random(hub, "news")
    reads = []
    real = hub.registry.load

    def slow_load(key):
        reads.append(key)
        time.sleep(0.3)  # long enough for every thread below to ask while it runs
        return real(key)
    monkeypatch.setattr(hub.registry, "load", slow_load)
    got = []
    threads = [threading.Thread(target=lambda: got.append(hub.load("news@v1"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reads == ["news@v1"]
    assert len(got) == 8 and all(a is got[0] for a in got) and hub.resident() == ["news@v1"]
    hub.unload("news")
    hub.load("news@v1")  # a load after the shared one ended reads again
    assert reads == ["news@v1", "news@v1"]


def test_a_failed_shared_load_fails_every_caller_and_the_next_one_retries():
    import threading
    import time
    from adapterhub.single_flight import SingleFlight
    flight, calls, errors = SingleFlight(), [], []
    everyone = threading.Barrier(5)

    def broken():
        calls.append(1)
        time.sleep(0.3)  # every caller passed the barrier before it; this lets them reach flight.run
        raise OSError("disk gone")

    def caller():
        everyone.wait()
        try:
            flight.run("news@v1", broken)
        except OSError as e:
            errors.append(str(e))
    threads = [threading.Thread(target=caller) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and errors == ["disk gone"] * 5
    assert flight.run("news@v1", lambda: 7) == 7 and flight.run("music@v1", lambda: 8) == 8
