"""End to end on the toy scenario: facts stored with the version, the fused score in the
card, recommend by fused score (raw on request), items by title or id, the verdict and the gate."""
import json

import pytest

from adapterhub import recommend
from adapterhub.config import TrainConfig
from adapterhub.errors import AdapterHubError, RegistryError
from adapterhub.train.publish import check_beats_base as _check_beats_base

FAST = dict(max_steps=20, eval_every=10, lr=1e-2, batch_size=8, patience=10)


@pytest.fixture
def trained(hub, toy):
    adapter, card = hub.train("toy", toy, TrainConfig(**FAST), progress=False, force=True)
    return hub, toy, adapter, card


def test_facts_and_fused_are_stored_with_the_version(trained):
    hub, toy, adapter, card = trained
    folder = hub.registry.resolve("toy")
    facts = json.loads((folder / "facts.json").read_text())
    assert set(facts["items"]) <= set(toy.items) and card["facts"]["items"] == len(facts["items"])
    assert card["files"]["facts.json"] and card["fused"]["features"][0] == "llm_logit"
    assert card["fused"]["fit_on"] == "valid"
    test = card["metrics"]["test"]
    assert {"adapter", "adapter (fused)", "base", "most-popular"} <= set(test)
    lo, hi = test["adapter (fused)"]["auc_ci95"]
    assert lo <= test["adapter (fused)"]["auc"] <= hi
    assert {v["vs"] for v in card["verdict"]} >= {"base", "most-popular", "random"}
    assert all(v["wins"] == (v["diff"] > 0) for v in card["verdict"])
    # tampering with the facts file is caught
    (folder / "facts.json").write_text("{}")
    with pytest.raises(RegistryError, match="sha256"):
        hub.registry.read_file("toy", "facts.json")


def test_recommend_ranks_by_fused_score_and_accepts_titles_or_ids(trained):
    hub, toy, adapter, card = trained
    history_ids = ["i0", "i2", "i4"]
    history_titles = [toy.items[i].text for i in history_ids]
    candidates = ["i1", "i6", "i9", "i10"]
    by_id = adapter.recommend(history_ids, candidates, k=4)
    by_title = adapter.recommend(history_titles, [toy.items[c].text for c in candidates], k=4)
    assert [s for _, s in by_id] == pytest.approx([s for _, s in by_title])
    raw = hub.recommend(adapter.key, history_ids, candidates, k=4, raw=True)
    assert sorted(s for _, s in raw) != pytest.approx(sorted(s for _, s in by_id))  # fused != raw P(yes)
    new = adapter.recommend(history_ids, ["a brand new item nobody has seen"], k=1)
    assert 0 < new[0][1] < 1  # an unknown item is rendered as new, not an error
    prefix, suffixes = recommend.render("toy", recommend.facts_of(hub.registry, adapter.key), history_ids, ["i1"])
    assert "(new item)" not in prefix and toy.items["i1"].text in suffixes[0]


def test_training_that_loses_to_the_base_is_not_published_without_force(hub, toy, monkeypatch):
    from adapterhub.train import evaluate as train_mod, publish
    monkeypatch.setattr(publish, "check_beats_base", _check_beats_base)  # the real gate (conftest stubs it)
    monkeypatch.setattr(train_mod, "evaluate_split", lambda *a, **k: {"adapter": {"auc": 0.4}, "base": {"auc": 0.6}})
    with pytest.raises(AdapterHubError, match="loses to the bare base"):
        hub.train("toy", toy, TrainConfig(max_steps=2, eval_every=2), progress=False)
    assert hub.registry.names() == []
    adapter, _ = hub.train("toy", toy, TrainConfig(max_steps=2, eval_every=2), progress=False, force=True)
    assert adapter.key == "toy@v1"


def test_a_version_that_loses_to_the_base_needs_force():
    card = {"primary_metric": "auc", "metrics": {"valid": {"adapter": {"auc": 0.55}, "base": {"auc": 0.60}}}}
    with pytest.raises(AdapterHubError, match="loses to the bare base.*--force"):
        _check_beats_base(card, "toy", force=False)
    _check_beats_base(card, "toy", force=True)
    card["metrics"]["valid"]["adapter"]["auc"] = 0.61
    _check_beats_base(card, "toy", force=False)


def test_registry_extra_files_are_checked(hub):
    import torch
    from adapterhub.lora import peft_key
    tensors = {}
    for path, m in hub.wrapped.items():
        if path.endswith("q_proj"):
            tensors[peft_key(path, "A")] = torch.zeros(2, m.in_features)
            tensors[peft_key(path, "B")] = torch.zeros(m.out_features, 2)
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
    with pytest.raises(RegistryError, match="not allowed"):
        hub.registry.publish("x", tensors, cfg, {}, files={"../evil.json": b"{}"})
    with pytest.raises(RegistryError, match="not allowed"):
        hub.registry.publish("x", tensors, cfg, {}, files={"card.json": b"{}"})
    hub.registry.publish("x", tensors, cfg, {}, files={"facts.json": b'{"items": {}}'})
    assert hub.registry.read_file("x", "facts.json") == b'{"items": {}}'
    assert hub.registry.read_file("x", "other.json") is None


def test_prompt_command_prints_what_the_model_sees(trained, capsys):
    from adapterhub import cli
    hub, toy, adapter, card = trained
    rc = cli.main(["prompt", "toy", "--registry", str(hub.registry.root), "--history", "i0|i2",
                   "--candidate", toy.items["i1"].text, "--candidate", "no such item"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("Answer:") == 2 and "(new item)" in out
    prefix, suffixes = recommend.render("toy", recommend.facts_of(hub.registry, adapter.key), ["i0", "i2"],
                                        [toy.items["i1"].text])
    assert prefix + suffixes[0] in out


def test_facts_file_absent_then_rebuilt_from_the_data(hub, toy, caplog):
    # the shipped adapters' facts are data, so a clone has none: serving warns and scores without
    # them; `adapterhub facts` rebuilds the same bytes from the data (checked against the card)
    from dataclasses import replace
    from adapterhub.config import TrainConfig
    from adapterhub.errors import DataError
    from adapterhub.train import rebuild_facts
    hub.train("toy", toy, TrainConfig(max_steps=2, eval_every=2, batch_size=4), progress=False)
    path = hub.registry.resolve("toy@v1") / "facts.json"
    original = path.read_bytes()
    path.unlink()
    fresh = type(hub)(base=hub.base, registry=hub.registry.root)
    with caplog.at_level("WARNING"):
        ranked = fresh.recommend("toy", ["red thing 2"], ["red thing 4", "blue thing 1"])
    assert len(ranked) == 2 and "adapterhub facts toy@v1" in caplog.text
    with pytest.raises(DataError, match="trained on data with sha256"):
        rebuild_facts(hub.registry, "toy@v1", replace(toy, sha256="other"))
    assert not path.exists()
    assert rebuild_facts(hub.registry, "toy@v1", toy) == str(path) and path.read_bytes() == original
