"""Hostile input: adapter names that reach for other paths, links out of the registry, pickles,
absurd ranks and safetensors headers built to allocate. Each is refused, named, before anything is read
or allocated, and the hub keeps serving. Every registry here lives in tmp_path."""
from __future__ import annotations

import io
import json
import logging
import mmap
import os
import pickle
import shutil
import struct
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

import adapterhub.registry as registry_mod
from adapterhub.errors import AdapterHubError, RegistryError
from adapterhub.registry import CARD, CONFIG as CONFIG_FILE, PICKLES, WEIGHTS, Registry, parse_ref
from adapterhub.safetensors_io import read_safetensors
from reliability_worker import CONFIG, tensors
from conftest import publish_random


# ------------------------------------------------------------------ hostile input
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
