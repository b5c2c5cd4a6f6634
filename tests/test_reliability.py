"""Reliability: crashes, concurrent writers, corrupt files, scale (hostile input and bad data: their own files).

A registry holds hours of training and a hub runs for weeks: nothing may be lost, nothing may get
in. Every registry here lives in tmp_path. Child processes come from tests/reliability_worker.py
(torch + adapterhub.registry only, one fork per job).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import adapterhub.registry as registry_mod
from adapterhub.cli import main as cli
from adapterhub.errors import RegistryError
from adapterhub.registry import CARD, CONFIG as CONFIG_FILE, WEIGHTS, Registry
from reliability_worker import CONFIG, POINTS, tensors
from conftest import PROMPTS, publish_random

WORKER = Path(__file__).with_name("reliability_worker.py")
REPO = Path(__file__).resolve().parents[1]
B_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


# ------------------------------------------------------------------ helpers
def start_jobs(signals: Path, specs: list[str]) -> subprocess.Popen:
    """One worker process that forks a publisher per spec 'ROOT,NAME,SEED[,POINT]'."""
    signals.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.Popen([sys.executable, str(WORKER), str(signals), *specs], env=env,
                            stderr=subprocess.PIPE, text=True)


def wait_for(paths: list[Path], proc: subprocess.Popen, timeout_s: float = 120) -> None:
    """Until every path holds something; fails early when the worker exits or a job that should stop finishes."""
    deadline = time.monotonic() + timeout_s
    while not all(p.exists() and p.stat().st_size for p in paths):
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}: {proc.stderr.read()}")
        finished = [p.name for p in paths if p.name.startswith("paused-") and p.with_name("done-" + p.name[7:]).exists()]
        if finished:
            proc.kill()
            raise AssertionError(f"jobs {finished} published to the end instead of stopping")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {[p.name for p in paths if not p.exists()]}")
        time.sleep(0.01)


def assert_complete(reg: Registry) -> None:
    """Every listed version loads (sha256 checked) and holds exactly the tensors its card's seed names."""
    for name in reg.names():
        for v in reg.versions(name):
            _, loaded, card, _ = reg.load(f"{name}@{v}")
            expected = tensors(card["seed"])
            assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
        assert reg.current(name) in reg.versions(name)
    assert all("error" not in c for c in reg.list())


def dot_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status VmRSS on this system")


# ------------------------------------------------------------------ 1. crash during publish
@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """One registry per pause point: v1 published, then a child SIGKILLed half-way through v2.

    -> ({point: root}, {point: whether a publish by another process was refused while the child held the lock})"""
    base = tmp_path_factory.mktemp("crash")
    sig = base / "signals"
    roots = {point: base / point for point in POINTS}
    for root in roots.values():
        Registry(root).publish("news", tensors(100), CONFIG, {"seed": 100}, promote=True)
    proc = start_jobs(sig, [f"{root},news,{i},{point}" for i, (point, root) in enumerate(roots.items())])
    try:
        wait_for([sig / f"ready-{i}" for i in range(len(POINTS))], proc)
        (sig / "go").touch()
        wait_for([sig / f"paused-{i}" for i in range(len(POINTS))], proc)
        locked = {}
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(registry_mod, "LOCK_TIMEOUT_S", 0.2)
            for point, root in roots.items():
                try:
                    Registry(root).publish("news", tensors(999), CONFIG, {"seed": 999})
                    locked[point] = False
                except RegistryError as e:
                    locked[point] = "another process is publishing" in str(e)
    finally:  # SIGKILL every paused job, also when the setup failed
        for f in sig.glob("paused-*"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(f.read_text()), signal.SIGKILL)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    return roots, locked


@pytest.mark.parametrize("point", POINTS)
def test_crash_mid_publish_leaves_the_old_state_or_the_complete_new_version(crashed, point, monkeypatch):
    roots, locked = crashed
    root, reg = roots[point], Registry(roots[point])
    assert locked[point], "while the child was alive, its lock kept other publishers out"
    landed = POINTS.index(point) >= POINTS.index("promote")  # killed after the version's os.replace
    assert reg.versions("news") == (["v1", "v2"] if landed else ["v1"])
    assert reg.current("news") == "v1"  # killed before `current` was replaced
    assert_complete(reg)
    if point != "promote":  # the dead writer's temp folder or file is still there ...
        assert dot_entries(root / "news"), "the child should have died half-way"

    # ... and the next publisher neither waits for the dead writer's lock nor keeps its leftovers.
    monkeypatch.setattr(registry_mod, "LOCK_TIMEOUT_S", 5)
    t0 = time.perf_counter()
    v = reg.publish("news", tensors(7), CONFIG, {"seed": 7}, promote=True)
    assert time.perf_counter() - t0 < 5
    assert v == ("v3" if landed else "v2") and reg.current("news") == v
    assert dot_entries(root / "news") == []
    assert_complete(reg)


# ------------------------------------------------------------------ 2. concurrent publishers
def test_concurrent_publishers_each_land_a_complete_version(tmp_path):
    root, sig = tmp_path / "adapters", tmp_path / "signals"
    same = [f"{root},shared,{s}" for s in range(1, 9)]          # 8 processes, one name
    different = [f"{root},n{s},{s}" for s in range(11, 19)]     # 8 processes, 8 names
    proc = start_jobs(sig, same + different)
    wait_for([sig / f"ready-{s}" for s in [*range(1, 9), *range(11, 19)]], proc)
    (sig / "go").touch()
    reg, reads = Registry(root), 0
    while proc.poll() is None:  # a reader racing the writers never sees a partial version
        for name in reg.names():
            for v in reg.versions(name):
                _, loaded, card, _ = reg.load(f"{name}@{v}")
                assert torch.equal(loaded[B_KEY], tensors(card["seed"])[B_KEY])
                reads += 1
    assert proc.returncode == 0, proc.stderr.read()

    assert reg.versions("shared") == [f"v{i}" for i in range(1, 9)]
    got = {s: (sig / f"done-{s}").read_text() for s in range(1, 9)}
    assert sorted(got.values()) == reg.versions("shared")               # numbers unique
    assert all(reg.card(f"shared@{v}")["seed"] == s for s, v in got.items())  # nothing overwritten
    assert reg.current("shared") == "v8"                                # the last to publish, promoted
    assert reg.names() == sorted(["shared"] + [f"n{s}" for s in range(11, 19)])
    assert all(reg.versions(f"n{s}") == ["v1"] and reg.card(f"n{s}")["seed"] == s for s in range(11, 19))
    assert_complete(reg)
    assert all(dot_entries(root / name) == [] for name in reg.names())
    print(f"\n16 concurrent publishers; the reader loaded {reads} versions while they ran")


# ------------------------------------------------------------------ 3. corrupt files
def _flip(f: Path, offset: int) -> None:
    data = bytearray(f.read_bytes())
    data[offset] ^= 0xFF
    f.write_bytes(bytes(data))


def _edit_card(f: Path, **changes) -> None:
    card = json.loads(f.read_text())
    card.update(changes)
    card = {k: v for k, v in card.items() if v is not None}
    f.write_text(json.dumps(card))


# case -> (file in the version folder, how to corrupt it, what the error must say)
CORRUPT = {
    "truncated weights": (WEIGHTS, lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]), "truncated"),
    "weights missing their last bytes": (WEIGHTS, lambda f: f.write_bytes(f.read_bytes()[:-4]), "truncated"),
    "flipped data byte": (WEIGHTS, lambda f: _flip(f, f.stat().st_size - 1), "sha256"),
    "flipped header byte": (WEIGHTS, lambda f: _flip(f, 10), "header is not valid JSON"),
    "flipped length byte": (WEIGHTS, lambda f: _flip(f, 3), "header claims"),
    "empty weights": (WEIGHTS, lambda f: f.write_bytes(b""), "empty or truncated"),
    "card not JSON": (CARD, lambda f: f.write_text('{"name": "bad", '), "not valid JSON"),
    "card not an object": (CARD, lambda f: f.write_text("[1, 2]"), "must hold a JSON object"),
    "card sha256 mismatch": (CARD, lambda f: _edit_card(f, weights_sha256="0" * 64), "does not match the card"),  # names the weights
    "card without sha256": (CARD, lambda f: _edit_card(f, weights_sha256=None), "weights_sha256"),
    "config not JSON": (CONFIG_FILE, lambda f: f.write_bytes(b"\xff\xfe"), "not valid JSON"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_files_are_named_and_the_hub_keeps_serving(hub, case):
    fname, corrupt, why = CORRUPT[case]
    publish_random(hub, "good", seed=1)
    publish_random(hub, "bad", seed=2)
    before = hub.score([("good", p) for p in PROMPTS])
    corrupt(hub.registry.root / "bad" / "v1" / fname)
    with pytest.raises(RegistryError, match=why) as err:
        hub.load("bad")
    named = WEIGHTS if "mismatch" in case else fname
    assert str(hub.registry.root / "bad" / "v1" / named) in str(err.value)
    assert hub.resident() == ["good@v1"]
    assert hub.score([("good", p) for p in PROMPTS]) == before
    publish_random(hub, "other", seed=3)   # and it keeps loading new ones
    hub.load("other")
    listed = {c["name"]: c for c in hub.list()}
    assert sorted(listed) == ["bad", "good", "other"] and "error" not in listed["good"]
    assert ("error" in listed["bad"]) == case.startswith("card not")  # only an unreadable card spoils the listing


# ------------------------------------------------------------------ 4. scale and churn
@pytest.mark.parametrize("n", [200, pytest.param(1000, marks=pytest.mark.slow)])
def test_list_a_large_registry_in_under_a_second(tmp_path, capsys, n):
    root = tmp_path / "adapters"
    reg = Registry(root)
    t0 = time.perf_counter()
    for i in range(n):
        reg.publish(f"a{i:04d}", tensors(i), CONFIG, {"seed": i, "scenario": "toy"})
    publish_s = time.perf_counter() - t0
    capsys.readouterr()
    t0 = time.perf_counter()
    assert cli(["list", "--registry", str(root)]) == 0
    list_s = time.perf_counter() - t0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == n + 1 and out[1].split()[:3] == ["a0000", "v1", "1"]

    # As a command: timed inside the child (adapterhub's imports included, interpreter start-up not), and whole.
    code = ("import sys, time; t = time.perf_counter(); from adapterhub.cli import main; "
            f"main(['list', '--registry', {str(root)!r}]); print(time.perf_counter() - t, file=sys.stderr)")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    total_s = time.perf_counter() - t0
    child_s = float(done.stderr.strip().splitlines()[-1])
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "adapterhub", "list", "--registry", str(root)], capture_output=True, check=True)
    cli_s = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n{n} adapters: published in {publish_s:.1f} s ({1000 * publish_s / n:.1f} ms each); list {list_s * 1000:.0f} ms "
              f"in-process, {child_s * 1000:.0f} ms in a child (excluding start-up; {total_s:.2f} s with it), "
              f"`python -m adapterhub list` {cli_s:.2f} s")
    assert len(done.stdout.splitlines()) == n + 1
    assert list_s < 1.0 and child_s < 1.0
    assert "torch" not in subprocess.run([sys.executable, "-c", "import sys; from adapterhub.cli import main; "
                                          f"main(['list', '--registry', {str(root)!r}]); print(*sys.modules)"],
                                         capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.parametrize("n_adapters,cycles", [(40, 100), pytest.param(100, 500, marks=pytest.mark.slow)])
def test_churn_keeps_residency_and_memory_bounded(hub, capsys, n_adapters, cycles):
    """Random load/score cycles over more adapters than fit: at most max_resident stay, RSS stays flat.

    Rank 256 makes each adapter ~0.44 MB, so keeping every adapter ever loaded would add about
    (cold loads) x 0.44 MB to RSS: ~25 MB over 100 cycles, ~130 MB over 500."""
    hub.max_resident = 16
    names = [f"a{i:03d}" for i in range(n_adapters)]
    for i, name in enumerate(names):
        publish_random(hub, name, r=256, seed=i, scale=0.01)
    adapter_mb = (hub.registry.root / names[0] / "v1" / WEIGHTS).stat().st_size / 2**20
    rng = random.Random(0)

    def cycle(name) -> bool:
        cold = f"{name}@v1" not in hub.resident()
        hub.score([(name, rng.choice(PROMPTS))])
        assert len(hub.resident()) <= 16
        assert all(len(m.adapters) <= 16 for m in hub.wrapped.values())
        return cold

    for name in names[:16]:  # warm up: a full resident set, the allocator's pools
        cycle(name)
    start_mb = rss_mb()
    t0 = time.perf_counter()
    cold_loads = sum(cycle(rng.choice(names)) for _ in range(cycles))
    elapsed = time.perf_counter() - t0
    end_mb = rss_mb()
    bound_mb = 10 + 2 * adapter_mb
    with capsys.disabled():
        print(f"\n{cycles} cycles over {n_adapters} adapters ({adapter_mb:.2f} MB each, max_resident 16, {cold_loads} cold "
              f"loads): RSS {start_mb:.1f} MB -> {end_mb:.1f} MB (+{end_mb - start_mb:.1f} MB, bound {bound_mb:.1f} MB; "
              f"keeping every load would add ~{cold_loads * adapter_mb:.0f} MB); {1000 * elapsed / cycles:.1f} ms/cycle")
    assert len(hub.resident()) == 16 and len(hub._alias) <= 32
    assert cold_loads * adapter_mb > 2 * bound_mb, "too few cold loads for the RSS check to mean anything"
    assert end_mb - start_mb < bound_mb
