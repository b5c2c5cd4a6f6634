"""Shared fixtures: a tiny random Llama base (no download) and a registry in tmp_path."""
from __future__ import annotations

import json
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


# ---- dataset sources: synthetic files in each source's format (test_datasets.py, test_dataset_sources.py)

GENRE_FLAGS = 19


@pytest.fixture
def video_dir(tmp_path):
    ml, tr = tmp_path / "movielens-100k", tmp_path / "tallrec-movie"
    ml.mkdir(), tr.mkdir()
    lines = []
    for i in range(1, 41):
        flags = ["0"] * GENRE_FLAGS
        flags[1 + i % 5] = "1"
        lines.append(f"{i}|Film {i} Caf\xe9 (1990)|01-Jan-1990||http://x|" + "|".join(flags))
    (ml / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    rng = random.Random(1)
    ratings = [f"{u}\t{i}\t{rng.randint(1, 5)}\t{880000000 + u * 100 + i}"
               for u in range(1, 31) for i in rng.sample(range(1, 41), 15)]
    (ml / "u.data").write_text("\n".join(ratings) + "\n")

    def rows(users):
        out = ["user_id,history_movie_id,history_rating,movie_id,rating,timestamp"]
        for u in users:
            for j in range(6):
                hist = [str(1 + (u + j + k) % 40) for k in range(10)]
                rates = [rng.randint(0, 1) for _ in hist]
                out.append(f'{u},"{hist}","{rates}",{1 + (u * 7 + j) % 40},{rng.randint(0, 1)},{880000000 + j}')
        return "\n".join(out) + "\n"
    (tr / "train.csv").write_text(rows(range(1, 11)))
    (tr / "valid.csv").write_text(rows(range(11, 31)))
    return tmp_path


def user_sequences(n_users, n_items, length, seed):
    rng = random.Random(seed)
    return {f"A{u}": rng.sample(range(n_items), length) for u in range(n_users)}


@pytest.fixture
def ecommerce_dir(tmp_path):
    root = tmp_path / "amazon18-industrial"
    (root / "valid").mkdir(parents=True), (root / "test").mkdir()
    items = {str(i): {"title": f"Widget {i} " + "long " * 30, "description": "", "brand": f"B{i % 4}",
                      "categories": ""} for i in range(80)}
    (root / "Industrial_and_Scientific.item.json").write_text(json.dumps(items))
    seqs = user_sequences(16, 80, 9, seed=2)
    seqs["A0"][7] = seqs["A0"][2]   # a repeat purchase: a test target also seen earlier
    header = "user_id,history_item_title,item_title,history_item_id,item_id,history_item_sid,item_sid"
    valid, test = [header], [header]
    for user, seq in seqs.items():   # positions 3..6 are valid rows, 7..8 test rows
        for pos in range(3, 9):
            hist = seq[max(0, pos - 10):pos]
            row = f'{user},"[]",x,"{hist}",{seq[pos]},"[]",x'
            (valid if pos < 7 else test).append(row)
    name = "Industrial_and_Scientific_5_2016-10-2018-11.csv"
    (root / "valid" / name).write_text("\n".join(valid) + "\n")
    (root / "test" / name).write_text("\n".join(test) + "\n")
    return tmp_path


@pytest.fixture
def news_dir(tmp_path):
    root = tmp_path / "mind-recprompt"
    (root / "test_group" / "variant1").mkdir(parents=True)
    cols = ["news_id", "title", "category", "subvert", "abstract"]
    header = "impression_id,history,candidate,label," + ",".join(
        f"{side}_{c}" for side in ("history", "candidate") for c in cols)
    rng = random.Random(3)
    rows = [header]

    def field(values):
        return '"' + "\n".join(values).replace('"', '""') + '"'
    for imp in range(60):
        hist, cands = rng.sample(range(100), 4), rng.sample(range(100), 6)
        side = {}
        for name, ids, p in (("history", hist, "H"), ("candidate", cands, "C")):
            side[name] = [[f"N{i}" for i in ids], [f'News "{i}", story' for i in ids],
                          [f"cat{i % 3}" for i in ids], [f"sub{i % 6}" for i in ids], ["abs"] * len(ids)]
            side[name + "_lines"] = [f"{p}{k + 1}: News \"{i}\", story" for k, i in enumerate(ids)]
        label = "C2" if imp % 2 else "\"C1,C4\""
        rows.append(",".join([str(imp), field(side["history_lines"]), field(side["candidate_lines"]), label]
                             + [field(v) for v in side["history"]] + [field(v) for v in side["candidate"]]))
    text = "\n".join(rows) + "\n"
    (root / "test_group" / "variant1" / "a.csv").write_text(text)
    (root / "test_group" / "variant1" / "dup.csv").write_text(text)   # same impressions again
    (root / "test_group" / "variant1" / "empty.csv").write_text(header + "\n")
    # 900 falls in the train bucket, 902 in the test bucket (sampled impressions: train only)
    (root / "sampled_100.csv").write_text(
        'impression_id,history,candidate,label\n900,"H1: News ""5"", story","C1: News ""7"", story\nC2: Unseen headline",C2\n'
        '902,"H1: News ""5"", story","C1: News ""7"", story\nC2: Other headline",C1\n')
    return tmp_path


@pytest.fixture
def music_dir(tmp_path):
    root = tmp_path / "hetrec2011-lastfm-2k"
    root.mkdir()
    (root / "artists.dat").write_text("id\tname\turl\tpictureURL\n" + "".join(f"{i}\tArtist {i}\tu\tp\n" for i in range(1, 61)))
    (root / "tags.dat").write_bytes(("tagID\ttagValue\n" + "".join(f"{t}\ttag{t} m\xe9tal\n" for t in range(1, 9))).encode("latin-1"))
    seqs = {u: random.Random(u).sample(range(1, 61), 8 if u < 12 else 3) for u in range(2, 14)}
    listened, tagged = ["userID\tartistID\tweight"], ["userID\tartistID\ttagID\tday\tmonth\tyear"]
    for u, seq in seqs.items():
        for pos, a in enumerate(seq):
            listened.append(f"{u}\t{a}\t{100 - pos}")
            tagged.append(f"{u}\t{a}\t{1 + a % 8}\t{1 + pos}\t3\t2009")
            tagged.append(f"{u}\t{a}\t{1 + (a + 1) % 8}\t{1 + pos}\t4\t2009")   # later tag: ignored for order
    tagged.append("2\t59\t1\t1\t1\t2010")   # tagged but never listened: dropped
    (root / "user_artists.dat").write_text("\n".join(listened) + "\n")
    (root / "user_taggedartists.dat").write_text("\n".join(tagged) + "\n")
    return tmp_path, seqs


@pytest.fixture
def served(tiny_base, tmp_path):
    """A hub over the session's tiny base with two adapters, news and music (the server's tests:
    the base is built once, since they are about the server)."""
    from adapterhub.hub import Hub
    hub = Hub(base=tiny_base, registry=tmp_path / "adapters")
    for i, name in enumerate(("news", "music")):
        publish_random(hub, name, seed=i + 1)
    hub.load("news"), hub.load("music")
    yield hub
    for key in hub.resident():
        hub.unload(key)
