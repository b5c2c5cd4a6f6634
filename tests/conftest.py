"""Shared fixtures: a tiny random Llama base (no download) and a registry in tmp_path."""
from __future__ import annotations

import os
import random

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n 2 on two cores: one thread per worker (and per child process it starts), or the
    # workers' OpenMP pools spin against each other and every test gets slower
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

from adapterhub.datasets.common import Example, Item, ScenarioData
from adapterhub.lora import peft_key


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No test touches the real adapters/ or ~/.cache: the registry and caches live in tmp_path."""
    monkeypatch.setenv("ADAPTERHUB_CACHE", str(tmp_path / "cache"))
    # Toy adapters trained for a few steps often score below the random tiny base, and the publish
    # gate would then refuse to publish them; the gate has its own tests (test_facts_serving.py).
    monkeypatch.setattr("adapterhub.train.publish.check_beats_base", lambda card, name, force: None)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_base():
    from adapterhub.base import load_base
    return load_base("random:tiny", quant="fp32", device="cpu")


@pytest.fixture
def shared_base_hub(tiny_base, tmp_path):
    """A hub over the session's tiny base (built once), its adapters unloaded after the test."""
    from adapterhub.hub import Hub
    h = Hub(base=tiny_base, registry=tmp_path / "adapters")
    yield h
    for key in h.resident():
        h.unload(key)


@pytest.fixture
def hub(tmp_path):
    from adapterhub.hub import Hub
    return Hub(base="random:tiny", registry=tmp_path / "adapters", quant="fp32", device="cpu")


def toy_data(n_users: int = 24, seed: int = 0, scenario: str = "toy", same_taste: bool = False) -> ScenarioData:
    """A toy scenario: users like items of their favourite category (all the same one if same_taste)."""
    rng = random.Random(seed)
    cats = ["red", "blue"]
    items = {f"i{j}": Item(f"i{j}", f"{cats[j % 2]} thing {j}", cats[j % 2]) for j in range(40)}
    splits = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        fav = cats[0 if same_taste else u % 2]
        liked = [i for i in items if items[i].category == fav]
        split = "train" if u < n_users * 2 // 3 else ("valid" if u % 2 else "test")
        for k in range(6):
            hist = tuple(rng.sample(liked, 3))
            cand = rng.choice(list(items))
            splits[split].append(Example(f"u{u}", hist, cand, int(items[cand].category == fav)))
    # valid/test need both labels for AUC
    return ScenarioData(scenario=scenario, source="toy", items=items, splits=splits, sha256="toy", task="pointwise")


@pytest.fixture
def toy():
    return toy_data()


@pytest.fixture(autouse=True)
def _fresh_prompt_templates(monkeypatch):
    """Templates a test registers for a custom scenario (prompts.register_templates) end with it."""
    from adapterhub import prompts
    monkeypatch.setattr(prompts, "_REGISTERED", {})


def write_jsonl_folder(folder, data: ScenarioData, meta: dict | None = None):
    """`data` as a generic JSONL scenario folder (items.jsonl, examples.jsonl, meta.json)."""
    import json
    folder.mkdir(parents=True)
    with open(folder / "items.jsonl", "w") as fh:
        for item in data.items.values():
            fh.write(json.dumps({"id": item.id, "text": item.text, "category": item.category}) + "\n")
    with open(folder / "examples.jsonl", "w") as fh:
        for split, examples in data.splits.items():
            for e in examples:
                fh.write(json.dumps({"user": e.user, "history": list(e.history), "candidate": e.candidate,
                                     "label": e.label, "split": split}) + "\n")
    (folder / "meta.json").write_text(json.dumps({"scenario": data.scenario} if meta is None else meta))
    return folder


@pytest.fixture
def toy_folder(tmp_path):
    """The toy scenario as a JSONL folder (docs/DATA.md), scenario 'toy'."""
    return write_jsonl_folder(tmp_path / "toy", toy_data())


# ---- random published adapters (for hub, merge, serving and CLI tests)

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def publish_random(hub, name, r=4, seed=0, targets=TARGETS, fingerprint=None, scale=0.5):
    """A random (non-zero B) LoRA adapter for the hub's base, published to its registry."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for path, m in hub.wrapped.items():
        if path.rsplit(".", 1)[-1] in targets:
            tensors[peft_key(path, "A")] = torch.randn(r, m.in_features, generator=g) * scale
            tensors[peft_key(path, "B")] = torch.randn(m.out_features, r, generator=g) * scale
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
              "target_modules": list(targets), "bias": "none"}
    card = {"scenario": "toy", "base": {"spec": hub.base.spec, "fingerprint": fingerprint or hub.fingerprint}}
    return hub.registry.publish(name, tensors, config, card)


PROMPTS = ["The user liked A B C. Will the user like D? Answer:", "short", "another prompt of middling size here"]


def plain_logit(hub, key, ids: list[int]) -> torch.Tensor:
    """The answer logit of one full prompt through the model's own causal forward, no packing: the
    reference that the hub's one scoring path (Hub.packed_logits) is checked against. -> (1,)"""
    with hub.use(key):
        h = hub.decoder(input_ids=torch.tensor([ids], device=hub.device)).last_hidden_state[:, -1]
    return hub.yes_logit(h)
