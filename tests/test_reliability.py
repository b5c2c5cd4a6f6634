"""Reliability: crashes, concurrent writers, corrupt and hostile files, bad data, scale.

A registry holds hours of training and a hub runs for weeks: nothing may be lost, nothing may get
in. Every registry here lives in tmp_path. Child processes come from tests/reliability_worker.py
(torch + adapterhub.registry only, one fork per job).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import mmap
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

import adapterhub.registry as registry_mod
from adapterhub import datasets
from adapterhub.cli import main as cli
from adapterhub.config import TrainConfig
from adapterhub.errors import AdapterHubError, DataError, RegistryError
from adapterhub.registry import CARD, CONFIG as CONFIG_FILE, PICKLES, WEIGHTS, Registry, parse_ref
from adapterhub.safetensors_io import read_safetensors
from conftest import toy_data
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


# ------------------------------------------------------------------ 4. hostile input
BAD_REFS = ["", " ", ".", "..", "../x", "x/../y", "a/b", "news/", "/etc", "/tmp/x", "a\\b", "~", "news\n", " news",
            "news\x00", "\x00", "News", "n\u0435ws", "\uff4eews", "news\u200b", "ne\u0301ws", "-x", "_x", ".news",
            "a" * 65, "news@", "news@v0", "news@v01", "news@V1", "news@../v1", "news@v1/../x", "news@v1@v2",
            None, 1, b"news", Path("news")]


@pytest.mark.parametrize("ref", BAD_REFS, ids=repr)
def test_bad_names_are_refused_before_the_filesystem(tmp_path, ref):
    root = tmp_path / "r"
    reg = Registry(root)
    calls = [lambda: parse_ref(ref), lambda: reg.resolve(ref), lambda: reg.card(ref), lambda: reg.load(ref),
             lambda: reg.promote(ref), lambda: reg.remove(ref),
             lambda: reg.publish(ref, tensors(1), CONFIG, {"seed": 1})]
    if not (isinstance(ref, str) and "@" in ref):
        calls.append(lambda: reg.versions(ref))
    for call in calls:
        with pytest.raises(RegistryError, match="invalid (adapter|version)"):
            call()
    assert not root.exists()


def test_hub_refuses_bad_names(hub):
    publish_random(hub, "news")
    for ref in BAD_REFS:
        with pytest.raises(RegistryError, match="invalid (adapter|version)"):
            hub.load(ref)
    assert hub.resident() == [] and hub.registry.names() == ["news"]


@pytest.fixture
def opened(monkeypatch):
    """The real paths of every file opened (open, io.open, os.open) from here on."""
    seen: list[str] = []
    real_open, real_os_open = io.open, os.open

    def spy_open(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)):
            seen.append(os.path.realpath(file))
        return real_open(file, *args, **kwargs)

    def spy_os_open(path, *args, **kwargs):
        seen.append(os.path.realpath(path))
        return real_os_open(path, *args, **kwargs)
    monkeypatch.setattr(io, "open", spy_open)
    monkeypatch.setattr("builtins.open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    return seen


def test_links_out_of_the_registry_are_never_followed(tmp_path, opened, caplog):
    root = tmp_path / "adapters"
    reg = Registry(root)
    reg.publish("news", tensors(1), CONFIG, {"seed": 1}, promote=True)
    for seed in (2, 3, 4):
        reg.publish("news", tensors(seed), CONFIG, {"seed": seed}, promote=False)
    outside = tmp_path / "outside"  # a complete, valid version and a `current`-like file, outside the registry
    shutil.copytree(root / "news" / "v1", outside / "v9")
    (outside / "current").write_text("v9\n")
    (outside / "news").mkdir()
    shutil.copytree(root / "news" / "v1", outside / "news" / "v1")
    snapshot = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    news = root / "news"
    opened.clear()

    (news / "v5").symlink_to(outside / "v9", target_is_directory=True)             # a linked version folder
    for v, fname in (("v2", CARD), ("v3", WEIGHTS), ("v4", CONFIG_FILE)):           # linked files in real versions
        (news / v / fname).unlink()
        (news / v / fname).symlink_to(outside / "v9" / fname)
    (news / "current").unlink()
    (news / "current").symlink_to(outside / "current")                              # a linked `current`
    (root / "evil").symlink_to(outside / "news", target_is_directory=True)          # a linked name folder

    assert reg.versions("news") == ["v1", "v2", "v3", "v4"] and reg.names() == ["news"]
    for ref in ("news@v5", "news@v2", "news@v3", "news@v4", "evil@v1", "evil"):
        with pytest.raises(RegistryError, match="symbolic link"):
            reg.load(ref)
    with caplog.at_level(logging.WARNING):
        assert reg.current("news") == "v4"  # the link is reported, not read: the newest version is used
    assert "symbolic link" in caplog.text
    listed = {c["name"]: c for c in reg.list()}
    assert list(listed) == ["news"] and listed["news"]["current"] == "v4"
    with pytest.raises(RegistryError, match="symbolic link"):
        reg.publish("evil", tensors(5), CONFIG, {"seed": 5})
    with pytest.raises(RegistryError, match="symbolic link"):
        reg.remove("news@v5")

    # Writes replace links, never what they point to.
    assert reg.publish("news", tensors(6), CONFIG, {"seed": 6}, promote=True) == "v6"
    assert not (news / "current").is_symlink() and reg.current("news") == "v6"
    reg.remove("news")
    assert not news.exists()
    real_outside = str(outside.resolve())
    assert [p for p in opened if p.startswith(real_outside)] == []
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == snapshot


class Payload:
    """Unpickling this creates `marker`: proof that a pickle was loaded."""
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_pickles_are_never_loaded(hub, tmp_path, monkeypatch):
    marker = tmp_path / "pickle-was-loaded"
    payload = pickle.dumps(Payload(marker))
    pickle.loads(payload)
    assert marker.exists(), "the payload must be live for this test to mean anything"
    marker.unlink()

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")
    for module, attr in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"),
                         (torch.serialization, "load")):
        monkeypatch.setattr(module, attr, refuse)

    publish_random(hub, "news")
    folder = hub.registry.root / "news" / "v1"
    for fname in PICKLES:
        (folder / fname).write_bytes(payload)
    hub.load("news")                       # the safetensors file is used, the pickles ignored
    hub.unload("news")
    (folder / WEIGHTS).unlink()
    with pytest.raises(RegistryError, match="never loaded") as err:
        hub.load("news")
    assert "adapter_model.bin" in str(err.value) and "safetensors" in str(err.value)
    (folder / WEIGHTS).write_bytes(payload)  # a pickle under the safetensors name
    with pytest.raises(RegistryError, match="adapter_model.safetensors"):
        hub.load("news")
    assert not marker.exists() and hub.resident() == []


@pytest.mark.parametrize("r", [10**12, 0, -1, "4", 4.0, True, None])
def test_absurd_rank_is_refused_before_the_weights_are_read(hub, monkeypatch, r):
    publish_random(hub, "news", r=4)
    f = hub.registry.root / "news" / "v1" / CONFIG_FILE
    f.write_text(json.dumps({**json.loads(f.read_text()), "r": r}))

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were read before the config was checked")
    monkeypatch.setattr(registry_mod, "read_safetensors", refuse)
    with pytest.raises(AdapterHubError, match="adapter_config.json") as err:
        hub.load("news")
    assert f"r={r!r}" in str(err.value) and hub.resident() == []


def test_weights_not_matching_the_config_rank_are_refused(hub):
    publish_random(hub, "news", r=4)
    f = hub.registry.root / "news" / "v1" / CONFIG_FILE
    f.write_text(json.dumps({**json.loads(f.read_text()), "r": 8}))
    with pytest.raises(RegistryError, match="r=8.*do not belong together"):
        hub.load("news")


def _header_file(path: Path, header, data: bytes = b"\0" * 64, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
HOSTILE_HEADERS = {
    "huge tensor": ({A: {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 4 << 40]}}, "claims shape"),
    "huge tensor, small offsets": ({A: {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 64]}}, "claims shape"),
    "zero-size overflow": ({A: {"dtype": "F32", "shape": [0, 2**70], "data_offsets": [0, 0]}}, "claims shape"),
    "too many dims": ({A: {"dtype": "U8", "shape": [1] * 64, "data_offsets": [0, 1]}}, "claims shape"),
    "negative offset": ({A: {"dtype": "U8", "shape": [8], "data_offsets": [-8, 0]}}, "claims shape"),
    "shape not a list": ({A: {"dtype": "U8", "shape": "64", "data_offsets": [0, 64]}}, "claims shape"),
    "unknown dtype": ({A: {"dtype": "F8_E4M3", "shape": [64], "data_offsets": [0, 64]}}, "malformed header"),
    "entry not an object": ({A: [1, 2, 3]}, "malformed header"),
    "header not an object": ([1, 2, 3], "not a JSON object"),
    "header length 2**63": ({}, "header claims"),
    "header length past the file": ({}, "header claims"),
}


@pytest.mark.parametrize("case", list(HOSTILE_HEADERS))
def test_hostile_headers_are_refused_before_allocating(tmp_path, monkeypatch, case):
    header, why = HOSTILE_HEADERS[case]
    length = {"header length 2**63": 2**63, "header length past the file": 1 << 20}.get(case)
    f = _header_file(tmp_path / WEIGHTS, header, length=length)

    def refuse(*args, **kwargs):
        raise AssertionError("a buffer was allocated for a file whose header was not checked")
    monkeypatch.setattr(mmap, "mmap", refuse)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(RegistryError, match=why) as err:
            read_safetensors(f)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0 and peak < 1 << 20
    assert str(f) in str(err.value)


def test_oversized_file_is_refused_unread(tmp_path, monkeypatch):
    f = tmp_path / WEIGHTS
    with open(f, "wb") as fh:
        fh.truncate(5 << 30)  # sparse: 5 GiB claimed, nothing on disk
    monkeypatch.setattr(mmap, "mmap", lambda *a, **k: pytest.fail("allocated a buffer for a 5 GiB file"))
    with pytest.raises(RegistryError, match="larger than any adapter"):
        read_safetensors(f)


def test_hostile_header_through_the_hub(hub):
    publish_random(hub, "news", seed=1)
    publish_random(hub, "music", seed=2)
    hub.load("music")
    _header_file(hub.registry.root / "news" / "v1" / WEIGHTS, HOSTILE_HEADERS["huge tensor"][0])
    with pytest.raises(RegistryError, match="claims shape"):
        hub.load("news")
    assert hub.resident() == ["music@v1"]


# ------------------------------------------------------------------ 5. bad data
ITEMS = [{"id": f"i{k}", "text": f"Thing {k}", "category": "c" + str(k % 2)} for k in range(6)]
ROWS = [{"user": "u1", "history": ["i0", "i1"], "candidate": "i2", "label": 1, "split": "train"},
        {"user": "u1", "history": ["i0"], "candidate": "i3", "label": 0, "split": "train"},
        {"user": "u2", "history": ["i4"], "candidate": "i5", "label": 1, "split": "valid"},
        {"user": "u2", "history": ["i4"], "candidate": "i1", "label": 0, "split": "valid"}]


def write_data(folder: Path, fmt: str, rows=ROWS, items=ITEMS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
        (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        (folder / "items.csv").write_text("id,text,category\n" + "".join(f"{r['id']},{r['text']},{r['category']}\n" for r in items))
        (folder / "examples.csv").write_text("user,history,candidate,label,split\n" + "".join(
            f"{r['user']},{'|'.join(r['history'])},{r['candidate']},{r['label']},{r['split']}\n" for r in rows))
    return folder


def _rows(line: int, **change):
    """ROWS with data row `line` (1-based) changed; a value None drops the field."""
    rows = [dict(r) for r in ROWS]
    rows[line - 1] = {k: v for k, v in {**rows[line - 1], **change}.items() if v is not None}
    return rows


def _set_bytes(name: str, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


# case -> (format, how to spoil the folder, file, line, field, what the error says)
BAD_DATA = {
    "jsonl empty examples": ("jsonl", _set_bytes("examples.jsonl", b"\n\n"), "examples.jsonl", None, None, "empty"),
    "jsonl empty items": ("jsonl", _set_bytes("items.jsonl", b""), "items.jsonl", None, None, "empty"),
    "jsonl missing field": ("jsonl", _rows(2, candidate=None), "examples.jsonl", 2, "candidate", "missing"),
    "jsonl history not a list": ("jsonl", _rows(2, history="i0"), "examples.jsonl", 2, "history", "list"),
    "jsonl label a string": ("jsonl", _rows(1, label="1"), "examples.jsonl", 1, "label", "0 or 1"),
    "jsonl label a bool": ("jsonl", _rows(1, label=True), "examples.jsonl", 1, "label", "0 or 1"),
    "jsonl user an object": ("jsonl", _rows(3, user={"id": 1}), "examples.jsonl", 3, "user", "string"),
    "jsonl unknown history id": ("jsonl", _rows(2, history=["i0", "nope"]), "examples.jsonl", 2, "history", "unknown item id 'nope'"),
    "jsonl one label": ("jsonl", _rows(2, label=1), "examples.jsonl", 1, "label", "both labels"),
    "jsonl not utf-8": ("jsonl", lambda f: (f / "examples.jsonl").write_bytes(
        (f / "examples.jsonl").read_bytes().replace(b'"u2"', b'"u\xff"', 1)), "examples.jsonl", 3, None, "utf-8"),
    "jsonl not JSON": ("jsonl", lambda f: (f / "examples.jsonl").write_text(
        (f / "examples.jsonl").read_text().replace("}\n", "\n", 1)), "examples.jsonl", 1, None, "invalid JSON"),
    "csv empty examples": ("csv", _set_bytes("examples.csv", b""), "examples.csv", None, None, "empty"),
    "csv missing column": ("csv", _set_bytes("examples.csv", b"user,history,candidate,split\nu1,i0,i2,train\n"),
                           "examples.csv", 2, "label", "missing"),
    "csv label not a number": ("csv", _rows(2, label="yes"), "examples.csv", 3, "label", "0 or 1"),
    "csv unknown history id": ("csv", _rows(1, history=["i0", "zz"]), "examples.csv", 2, "history", "unknown item id 'zz'"),
    "csv items missing text": ("csv", _set_bytes("items.csv", b"id,name\ni0,x\n"), "items.csv", 2, "text", "missing"),
    "csv one label": ("csv", _rows(2, label=1), "examples.csv", 2, "label", "both labels"),
    "csv not utf-8": ("csv", _set_bytes("examples.csv", b"user,history,candidate,label,split\nu1,i0,i2,1,train\nu\xe9,i0,i3,0,train\n"),
                      "examples.csv", 3, None, "utf-8"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_names_file_line_and_field(tmp_path, case):
    fmt, spoil, fname, line, field, why = BAD_DATA[case]
    folder = tmp_path / "shop"
    if callable(spoil):
        write_data(folder, fmt)
        spoil(folder)
    else:
        write_data(folder, fmt, rows=spoil)
    with pytest.raises(DataError, match=why) as err:
        datasets.load(fmt, folder)
    e = err.value
    assert Path(e.file).name == fname and e.line == line and e.field == field, (e.file, e.line, e.field)
    assert fname in str(e)
    if line is not None:
        assert f"line {line}" in str(e)
    if field is not None:
        assert f"field '{field}'" in str(e)


def test_bad_data_publishes_nothing_from_the_cli(tmp_path, capsys):
    folder = write_data(tmp_path / "shop", "jsonl", rows=_rows(2, label=1))
    root = tmp_path / "adapters"
    code = cli(["train", "shop", "--scenario", "jsonl", "--data", str(folder), "--registry", str(root),
                "--base", "random:tiny", "--quant", "fp32", "--device", "cpu", "--max-steps", "2"])
    assert code == 2 and "examples.jsonl, line 1, field 'label'" in capsys.readouterr().err
    assert Registry(root).names() == []


def _one_label(split: str):
    data = toy_data()
    data.splits[split] = [ex.__class__(**{**ex.__dict__, "label": 1}) for ex in data.splits[split]]
    return data


def test_training_on_one_label_publishes_nothing(hub):
    with pytest.raises(DataError, match="only label"):
        hub.train("toy", _one_label("train"), TrainConfig(max_steps=2, eval_every=1))
    assert hub.registry.names() == [] and not hub.registry.root.exists()


def test_one_label_valid_split_is_a_data_error(hub):
    with pytest.raises(DataError, match="valid"):
        hub.train("toy", _one_label("valid"), TrainConfig(max_steps=2, eval_every=1))
    assert hub.registry.names() == []


# ------------------------------------------------------------------ 6. scale and churn
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
