import json
import os

import pytest
import torch

from adapterhub.config import TrainConfig
from adapterhub.errors import ConfigError, DataError, IncompatibleAdapterError
from adapterhub.datasets.common import Example

from conftest import toy_data

FAST = dict(max_steps=40, eval_every=10, lr=5e-3, batch_size=8, patience=10)


def test_train_publish_load_score_end_to_end(hub, toy):
    adapter, card = hub.train("toy", toy, TrainConfig(**FAST), progress=False)
    folder = hub.registry.root / "toy" / "v1"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "card.json",
                                                        "facts.json"]
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and sorted(cfg["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    log = card["train"]["log"]
    assert log[-1]["loss"] < log[0]["loss"]          # the loss falls
    assert card["base"]["fingerprint"] == hub.fingerprint
    for split in ("valid", "test"):
        assert {"adapter", "base", "random", "most-popular"} <= set(card["metrics"][split])
    assert adapter.key == "toy@v1" and hub.registry.current("toy") == "v1"
    # the published adapter, loaded by name, gives the scores the trained weights gave
    fresh = type(hub)(base=hub.base, registry=hub.registry)
    s1 = fresh.score([("toy", "The user liked red thing 2. Answer:")])
    s0 = fresh.score([(None, "The user liked red thing 2. Answer:")])
    assert s1 == hub.score([("toy", "The user liked red thing 2. Answer:")]) and s1 != s0
    # trainable pairs are gone after training: the base is untouched
    assert all(m.lora_A is None for m in hub.wrapped.values())


def test_training_learns_the_toy_task(hub):
    data = toy_data(n_users=36, same_taste=True)  # learnable by a 2-layer random model: red is liked
    # no sampled negatives: in this toy every unseen red item is liked, so they would be wrong labels
    _, card = hub.train("toy", data, TrainConfig(**{**FAST, "max_steps": 60, "lr": 1e-2, "negatives": 0}), progress=False)
    test = card["metrics"]["test"]
    assert test["adapter"]["auc"] > test["base"]["auc"] + 0.1, test


def test_same_seed_same_adapter(hub, toy):
    _, c1 = hub.train("a", toy, TrainConfig(**{**FAST, "max_steps": 5}), progress=False)
    _, c2 = hub.train("b", toy, TrainConfig(**{**FAST, "max_steps": 5}), progress=False)
    _, c3 = hub.train("c", toy, TrainConfig(**{**FAST, "max_steps": 5, "seed": 1}), progress=False)
    assert c1["weights_sha256"] == c2["weights_sha256"] != c3["weights_sha256"]
    # the optimizer stepped: B starts at zero (a fresh adapter is the base), so every B moved
    _, tensors, _, _ = hub.registry.load("a")
    bs = {k: t for k, t in tensors.items() if "lora_B" in k}
    assert bs and all(t.abs().max() > 0 for t in bs.values())
    assert hub.score([("a", "The user liked red thing 2. Answer:")]) != hub.score([(None, "The user liked red thing 2. Answer:")])


def test_one_label_training_set_is_refused_and_nothing_published(hub, toy):
    toy.splits["train"] = [Example(e.user, e.history, e.candidate, 1) for e in toy.splits["train"]]
    with pytest.raises(DataError, match="only label"):
        hub.train("toy", toy, TrainConfig(**FAST), progress=False)
    assert hub.registry.names() == []


def test_bad_config_keys_and_values():
    with pytest.raises(ConfigError, match="Did you mean 'lr'"):
        TrainConfig.from_dict({"lrr": 1})
    with pytest.raises(ConfigError, match="r=0"):
        TrainConfig(r=0)
    assert TrainConfig.from_dict({"targets": "q_proj,v_proj"}).targets == ("q_proj", "v_proj")


def test_warm_start_checks_rank_and_records_parent(hub, toy):
    hub.train("parent", toy, TrainConfig(**{**FAST, "max_steps": 5}), progress=False)
    with pytest.raises(IncompatibleAdapterError, match="--r 8"):
        hub.train("child", toy, TrainConfig(**{**FAST, "max_steps": 5, "r": 4, "init_from": "parent"}), progress=False)
    _, card = hub.train("child", toy, TrainConfig(**{**FAST, "max_steps": 5, "init_from": "parent"}), progress=False)
    assert card["parents"] == [{"ref": "parent@v1", "scenario": "toy", "role": "warm start"}]


def test_warm_start_from_a_merge_shows_the_lineage(hub, toy):
    """A merged (or jointly trained) adapter is a parent like any other; the card names its parents too."""
    from conftest import publish_random
    publish_random(hub, "a", r=4, seed=1)
    publish_random(hub, "b", r=4, seed=2)
    merged = hub.merge({"a": 1.0, "b": 1.0}, method="cat", name="ab", measure=False)   # rank 4 + 4
    _, card = hub.train("child", toy, TrainConfig(**{**FAST, "max_steps": 3, "r": 8, "init_from": "ab"}), progress=False)
    parent = card["parents"][0]
    assert parent["ref"] == merged.key and parent["role"] == "warm start"
    assert [(p["ref"], p["weight"], p["role"]) for p in parent["parents"]] == [("a@v1", 1.0, "merge"), ("b@v1", 1.0, "merge")]
    _, grandchild = hub.train("grand", toy, TrainConfig(**{**FAST, "max_steps": 3, "r": 8, "init_from": "child"}),
                              progress=False)
    assert grandchild["parents"][0]["parents"][0]["ref"] == merged.key  # two levels up
    # the cat merge is stored with alpha = r (scale 1); a run at another alpha starts from its exact delta
    from adapterhub.lora import group_pairs
    from adapterhub.train import init_pairs as _init_pairs
    cfg = TrainConfig(**{**FAST, "r": 8, "alpha": 16.0})
    init = _init_pairs(hub, merged.key, cfg)
    config, tensors, _, _ = hub.registry.load(merged.key)
    assert config["lora_alpha"] == 8.0
    for path, ab in group_pairs(tensors).items():
        A, B = init[path]
        assert torch.allclose(cfg.alpha / cfg.r * (B @ A), ab["B"] @ ab["A"], atol=1e-6)


def test_promotion_compares_with_the_current_version_on_the_same_valid_examples(hub, toy):
    hub.train("toy", toy, TrainConfig(**{**FAST, "max_steps": 5}), progress=False)
    _, card = hub.train("toy", toy, TrainConfig(**{**FAST, "max_steps": 5, "seed": 1}), progress=False)
    promo = card["promotion"]
    assert promo["current"] == "toy@v1" and promo["n"] == card["data"]["used"]["valid"]
    # v1 rescored on v2's valid examples gives what v1's own card says (same split, same seed)
    assert promo["current_value"] == pytest.approx(hub.registry.card("toy@v1")["metrics"]["valid"]["adapter"]["auc"], abs=1e-4)
    assert promo["promoted"] == (promo["new_value"] >= promo["current_value"])
    assert (hub.registry.current("toy") == "v2") == promo["promoted"] and promo["current_facts"] == "its own"


def test_promotion_rebuilds_the_current_versions_missing_facts_before_rescoring_it(hub, toy):
    """Facts are data, not committed: a clone's current version has none until rebuilt. Rescored
    without them it would lose for the wrong reason, so promotion rebuilds them from the run's data
    (checked against the card's sha256), or, from other data, falls back to comparing the cards."""
    import hashlib
    from dataclasses import replace
    hub.train("toy", toy, TrainConfig(**{**FAST, "max_steps": 5}), progress=False)
    facts = hub.registry.root / "toy" / "v1" / "facts.json"
    facts.unlink()
    _, card = hub.train("toy", toy, TrainConfig(**{**FAST, "max_steps": 5, "seed": 1}), progress=False)
    v1 = hub.registry.card("toy@v1")
    assert card["promotion"]["current_value"] == pytest.approx(v1["metrics"]["valid"]["adapter"]["auc"], abs=1e-4)
    assert hashlib.sha256(facts.read_bytes()).hexdigest() == v1["files"]["facts.json"]
    current = hub.registry.root / "toy" / hub.registry.current("toy") / "facts.json"
    current.unlink()  # and from data it was not trained on: no rescoring, the cards decide
    _, card = hub.train("toy", replace(toy, sha256="other"), TrainConfig(**{**FAST, "max_steps": 5, "seed": 2}),
                        progress=False)
    assert "promotion" not in card and not current.exists()


def test_promotion_rescores_a_current_version_whose_facts_come_from_other_data_with_this_runs_facts(
        hub, toy, monkeypatch):
    """A current version's facts built from other data may count this run's valid users' own
    labels (video@v7's like-rates held the ratings of more_users' valid users): it is rescored with
    this run's facts, made from this run's train split only, and the card says so."""
    from dataclasses import replace
    from adapterhub import facts as facts_mod
    from adapterhub.train import examples as train_mod
    hub.train("toy", toy, TrainConfig(**{**FAST, "max_steps": 5}), progress=False)
    seen = []   # the facts each encode_examples call renders; the last call is the promotion's rescoring
    real = train_mod.encode_examples
    monkeypatch.setattr(train_mod, "encode_examples", lambda h, d, ex, facts: seen.append(facts) or real(h, d, ex, facts))
    other = replace(toy, splits={**toy.splits, "train": toy.splits["train"][::2]}, sha256="half")  # -> other popularity
    _, card = hub.train("toy", other, TrainConfig(**{**FAST, "max_steps": 5, "seed": 1}), progress=False)
    own = (hub.registry.root / "toy" / "v1" / "facts.json").read_bytes()
    theirs = (hub.registry.root / "toy" / "v2" / "facts.json").read_bytes()
    assert own != theirs and facts_mod.dumps(seen[-1]) == theirs
    assert card["promotion"]["current_facts"] == "this run's" and card["promotion"]["n"] == len(other.splits["valid"])


def test_the_best_checks_valid_scores_are_the_cards_valid_scores(hub, toy):
    # the card reuses the best check's valid scores instead of scoring valid again
    _, card = hub.train("toy", toy, TrainConfig(**{**FAST, "max_steps": 10, "eval_every": 5}), progress=False)
    best = [e for e in card["train"]["log"] if e["step"] == card["train"]["best_step"]][0]
    assert card["metrics"]["valid"]["adapter"]["auc"] == pytest.approx(best["val_auc"], abs=1e-4)
    fresh = type(hub)(base=hub.base, registry=hub.registry)
    from adapterhub.scoring import evaluate_split
    from adapterhub.recommend import facts_of
    valid = [e for e in toy.splits["valid"]]
    again = evaluate_split(fresh, toy, valid, fresh.load("toy").key, with_base=False, with_baselines=False, ci=False,
                           facts=facts_of(fresh.registry, "toy@v1"))
    assert again["adapter"]["auc"] == pytest.approx(best["val_auc"], abs=1e-4)


def test_distillation_follows_the_teacher_not_the_labels(hub):
    # a teacher trained on flipped labels (it learned "red is disliked"); a student distilled from it
    # with soft labels only (distill_weight 1) learns the teacher's direction, against its own labels
    from dataclasses import replace
    data = toy_data(n_users=36, same_taste=True)
    flipped = replace(data, splits={k: [replace(e, label=1 - e.label) for e in v] for k, v in data.splits.items()})
    # one validation check, at the end: picking the best check by the hard labels would keep step 10
    cfg = {**FAST, "max_steps": 30, "eval_every": 30, "lr": 1e-2, "negatives": 0, "listwise_weight": 0.0}
    hub.train("teacher", flipped, TrainConfig(**cfg), progress=False)
    _, card = hub.train("student", data, TrainConfig(**{**cfg, "teacher": "teacher", "distill_weight": 1.0}),
                        progress=False)
    assert card["parents"] == [{"ref": "teacher@v1", "scenario": "toy", "role": "teacher", "distill_weight": 1.0}]
    test = card["metrics"]["test"]
    # the teacher's (wrong) direction, against its own labels (the base alone scores ~0.85 here)
    assert test["adapter"]["auc"] < min(0.5, test["base"]["auc"] - 0.2), test


def test_checkpointing_keeps_layers_in_proportion_to_the_token_budget(hub):
    """checkpoint_tokens: a step of t tokens keeps layers * budget / t layers' activations, evenly
    spread; a longer step recomputes more of them; off, every layer keeps its activations."""
    from adapterhub.train import Checkpointing as _checkpointing
    n = len(hub.decoder.layers)
    with _checkpointing(hub, TrainConfig(checkpoint_tokens=100)) as ckpt:
        assert all(layer.gradient_checkpointing for layer in hub.decoder.layers)  # before a step: all
        assert ckpt.fit(50) == n                                   # a short step keeps every layer
        assert ckpt.fit(100 * n) == 1 and sum(not l.gradient_checkpointing for l in hub.decoder.layers) == 1
    assert not any(layer.gradient_checkpointing for layer in hub.decoder.layers)  # off after the with
    with _checkpointing(hub, TrainConfig(grad_checkpointing=False)) as ckpt:
        assert ckpt.fit(10 ** 6) == n and not any(layer.gradient_checkpointing for layer in hub.decoder.layers)
    with pytest.raises(ConfigError, match="checkpoint_tokens"):
        TrainConfig(checkpoint_tokens=-1)


def test_rss_cap_trims_the_heap_only_past_the_headroom(hub, monkeypatch):
    """rss_headroom_gb: at each decoder layer's forward, the heap is trimmed when RSS is more than
    the headroom above its size on entry, and not otherwise; the hooks are gone after the with."""
    from adapterhub import memory
    rss = [1000]
    trims = []
    monkeypatch.setattr(memory, "rss_bytes", lambda: rss[0])
    monkeypatch.setattr(memory, "trim", lambda: trims.append(rss[0]))
    monkeypatch.setattr(memory, "_TRIM", object())  # as if glibc, on any machine
    ids = torch.tensor([hub.encode("a short prompt")])
    layers = hub.decoder.layers
    with memory.rss_cap(layers, headroom_bytes=500):
        rss[0] = 1400                     # within the headroom: no trim
        hub.decoder(input_ids=ids)
        assert trims == []
        rss[0] = 1600                     # past it: one trim per layer that starts a forward
        hub.decoder(input_ids=ids)
        assert trims == [1600] * len(layers)
    hub.decoder(input_ids=ids)            # outside the with: no hooks left
    assert len(trims) == len(layers)
    with memory.rss_cap(layers, headroom_bytes=None):  # None: nothing installed
        hub.decoder(input_ids=ids)
    assert len(trims) == len(layers)
    with pytest.raises(ConfigError, match="rss_headroom_gb"):
        TrainConfig(rss_headroom_gb=-0.1)


def test_rss_bytes_and_trim_work_on_this_machine():
    from adapterhub import memory
    before = memory.rss_bytes()
    assert before > 10 * 2 ** 20 or not os.path.exists("/proc/self/statm")  # a Python with torch is > 10 MiB
    memory.release_freed_memory()  # must not raise, glibc or not
