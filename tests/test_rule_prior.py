"""rule_prior: training an adapter as a residual over the no-learning rules."""
import math

import pytest
import torch

from adapterhub import facts as facts_mod
from adapterhub import train as train_mod
from adapterhub.train import loop as train_loop
from adapterhub.config import TrainConfig
from adapterhub.errors import ConfigError
from adapterhub.evaluation import evaluate
from adapterhub.fused import apply, sigmoid
from adapterhub.scoring import yes_no_logit

FAST = dict(max_steps=10, eval_every=5, lr=5e-3, batch_size=8, patience=10)


def test_rule_prior_config_is_checked():
    with pytest.raises(ConfigError, match=r"rule_prior=1.5 must be in \[0, 1\]"):
        TrainConfig(rule_prior=1.5)
    with pytest.raises(ConfigError, match="rule_prior needs facts"):
        TrainConfig(rule_prior=0.5, facts=False)
    assert TrainConfig(per_scenario="video:rule_prior=1").scenario_options() == {"video": {"rule_prior": 1.0}}
    with pytest.raises(ConfigError, match="per_scenario video"):
        TrainConfig(per_scenario="video:rule_prior=2")


def _tiny():
    """u1 and u2 clicked x; u3 clicked y and has x in its history; z is nobody's."""
    from adapterhub.datasets.common import Example, Item, ScenarioData
    items = {i: Item(i, f"item {i}", "c" if i != "z" else "d") for i in ("x", "y", "z", "w")}
    train = [Example("u1", ("w",), "x", 1), Example("u2", ("w",), "x", 1), Example("u3", ("x",), "y", 1),
             Example("u1", ("w",), "z", 0), Example("u4", ("y",), "y", 1)]
    data = ScenarioData(scenario="toy", source="toy", items=items, splits={"train": train, "valid": [], "test": []},
                        sha256="toy", task="pointwise")
    return data, train


def test_own_label_out_takes_a_train_positives_own_click_out_of_its_popularity():
    data, train = _tiny()
    facts = facts_mod.compute(data)
    own = facts_mod.OwnLabelOut(facts, train)
    assert facts["items"]["x"]["p"] == 3 and facts["items"]["y"]["p"] == 2
    # u1's click on x is the only sign u1 knows x: shown as x would be to a test user, 2 other users
    assert own.candidate(train[0])["p"] == 2 and own.candidate(train[0])["t"] == "item x"
    # u3's click on y is y's only other user besides u4, whose y is also in its own history: u4 keeps it
    assert own.candidate(train[2])["p"] == 1
    assert own.candidate(train[4]) is facts["items"]["y"]
    # a negative keeps its entry; an item clicked by its example alone becomes unpopular
    assert own.candidate(train[3]) is facts["items"]["z"]
    solo = type(train[0])("u9", (), "w", 1)
    own_solo = facts_mod.OwnLabelOut(facts_mod.compute(type(data)(**{**data.__dict__, "splits": {"train": [solo]}})), [solo])
    assert "p" not in own_solo.candidate(solo) and "b" not in own_solo.candidate(solo)
    # the prompt shows it so, and the rule prior's features agree with the prompt
    from adapterhub import prompts
    stored = prompts.render("toy", train[2], data.items, facts)[1]
    shown = prompts.render("toy", train[2], data.items, facts, candidate_facts=own.candidate(train[2]))[1]
    assert "less popular" in shown and stored != shown
    i = facts_mod.feature_names("toy").index("log1p_popularity")
    assert train_mod.prior_features(facts, "toy", train[0], own)[i] == pytest.approx(math.log1p(2))
    assert train_mod.prior_features(facts, "toy", train[0], None)[i] == pytest.approx(math.log1p(3))


def test_own_label_out_takes_a_train_rows_own_rating_out_of_the_like_rate(hub):
    """Video's like-rates count every train user's rating, the row's own among them: a train row
    shows its movie's like-rate without it (a test user's rating is never in it)."""
    import random
    from adapterhub import prompts
    from adapterhub.datasets.common import Example, Item, ScenarioData
    items = {i: Item(i, f"Film {i} (1995)", "Drama") for i in ("m1", "m2", "m3")}
    train = [Example("u1", ("m3",), "m1", 1), Example("u2", ("m3",), "m1", 0), Example("u3", ("m1",), "m2", 1),
             Example("u1", ("m1",), "m3", 0)]
    counts = {"m1": [3, 4], "m2": [1, 1], "m3": [0, 2]}   # [liked, rated] over the train users' ratings
    data = ScenarioData("video", "toy", items, {"train": train, "valid": train[:2], "test": train[:2]}, "t", "pointwise",
                        {"like_rate": {i: lk / n for i, (lk, n) in counts.items()}, "global_like_rate": 0.55,
                         "like_count": counts})
    facts = facts_mod.compute(data)
    own = facts_mod.OwnLabelOut(facts, train, counts)
    assert own.candidate(train[0])["r"] == pytest.approx(2 / 3)      # liked: 3 of 4 -> 2 of the other 3
    assert own.candidate(train[1])["r"] == pytest.approx(1.0)        # disliked: 3 of 4 -> 3 of 3
    assert "r" not in own.candidate(train[2]) and "liked by" not in prompts.render(
        "video", train[2], items, facts, candidate_facts=own.candidate(train[2]))[1]   # its own rating was the only one
    assert facts["items"]["m1"]["r"] == 0.75 and facts_mod.OwnLabelOut(facts, train).candidate(train[0])["r"] == 0.75
    i = facts_mod.feature_names("video").index("like_share_plus_rate")
    assert train_mod.prior_features(facts, "video", train[1], own)[i] == pytest.approx(1 + 1.0)   # like-share 1 (m3 liked)
    assert train_mod.prior_features(facts, "video", train[2], own)[i] == pytest.approx(1 + 0.55)   # the global rate
    # training wires the loader's counts in (own_label_out is on by default), and the prompt shows it
    part = train_mod.prepare(hub, data, TrainConfig(**FAST), random.Random(0))
    assert part.own_out.candidate(train[0])["r"] == pytest.approx(2 / 3)
    assert "liked by 67% of viewers" in prompts.render("video", train[0], items, facts,
                                                       candidate_facts=part.own_out.candidate(train[0]))[1]


def test_the_loss_sees_the_adapter_logit_plus_the_prior(hub, toy, monkeypatch):
    seen = {}
    packed, loss = hub.packed_logits, train_mod.group_loss

    def spy_packed(key, encoded):
        out = packed(key, encoded)
        if key == train_loop.TRAIN:   # not the base's valid scores of the start-up summary
            seen.setdefault("raw", out.detach().clone())
        return out

    def spy_loss(logits, labels, *args, **kwargs):
        seen.setdefault("loss_logits", logits.detach().clone())
        return loss(logits, labels, *args, **kwargs)

    monkeypatch.setattr(hub, "packed_logits", spy_packed)
    monkeypatch.setattr(train_loop, "group_loss", spy_loss)
    seen_groups = []
    next_groups = train_loop.next_groups

    def spy_next(*args, **kwargs):
        batch, order = next_groups(*args, **kwargs)
        seen_groups.append(batch)
        return batch, order

    monkeypatch.setattr(train_loop, "next_groups", spy_next)
    parts = []
    prepare = train_mod.prepare
    monkeypatch.setattr(train_mod, "prepare", lambda *a, **k: parts.append(prepare(*a, **k)) or parts[-1])
    _, card = hub.train("toy", toy, TrainConfig(**{**FAST, "max_steps": 1, "rule_prior": 0.5}), progress=False)
    part = parts[0]
    expected = torch.tensor([z for _, g in seen_groups[0] for z in part.prior_logits(g, train=True)])
    assert expected.abs().max() > 0.1  # the toy's category rule gives a real prior
    torch.testing.assert_close(seen["loss_logits"] - seen["raw"], expected.to(seen["raw"].dtype), atol=1e-5, rtol=0)
    # the prior the loss used is the card's: fit on train, with half its weight (rule_prior 0.5)
    prior = card["rule_prior"]
    assert prior["fit_on"] == "train" and prior["weight"] == 0.5 and prior["features"] == list(
        facts_mod.feature_names(toy.scenario))
    assert card["train"]["loss"]["rule_prior"] == 0.5


def test_a_residual_adapter_is_picked_on_adapter_plus_prior_and_fused_on_its_own_logit(hub, toy):
    from adapterhub.recommend import facts_of
    from adapterhub.scoring import score_examples, encode_examples
    _, card = hub.train("toy", toy, TrainConfig(**{**FAST, "rule_prior": 1.0}), progress=False)
    best = [e for e in card["train"]["log"] if e["step"] == card["train"]["best_step"]][0]
    fresh = type(hub)(base=hub.base, registry=hub.registry)
    facts = facts_of(fresh.registry, "toy@v1")
    valid = toy.splits["valid"]
    raw = score_examples(fresh, fresh.load("toy").key, encode_examples(fresh, toy, valid, facts))
    prior = apply(card["rule_prior"], [train_mod.prior_features(facts, toy.scenario, ex, None) for ex in valid])
    judged = [sigmoid(yes_no_logit(s) + z) for s, z in zip(raw, prior)]
    # the best step was chosen on what the loss trained (adapter + prior) ...
    assert evaluate("pointwise", valid, judged)["auc"] == pytest.approx(best["val_auc"], abs=1e-4)
    # ... while the card's raw row is the adapter alone, and the fused blend takes its logit as a feature
    assert card["metrics"]["valid"]["adapter"]["auc"] == pytest.approx(evaluate("pointwise", valid, raw)["auc"], abs=1e-4)
    assert card["fused"]["features"][0] == "llm_logit"

