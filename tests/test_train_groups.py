"""Grouped training: groups, sampled negatives, the listwise loss, progress, budgets;
and training-side fixes (domain steps, pairs left attached)."""
import logging
import math
import random

import pytest
import torch

from adapterhub.train import loop as train_mod
from adapterhub.config import TrainConfig
from adapterhub.datasets.common import Example, Item, ScenarioData
from adapterhub.train import NegativeSampler, build_groups, group_loss, visit

FAST = dict(max_steps=30, eval_every=10, lr=1e-2, batch_size=8, patience=10, n_valid=64, n_test=64)


def ranking_toy(n_users: int = 30, seed: int = 0) -> ScenarioData:
    """Ranking groups: 1 liked item (the user's favourite colour) among 5; train groups are pairs."""
    rng = random.Random(seed)
    cats = ["red", "blue"]
    items = {f"i{j}": Item(f"i{j}", f"{cats[j % 2]} thing {j}", cats[j % 2]) for j in range(40)}
    splits = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        fav = cats[1]  # everyone likes blue: learnable by the 2-layer random model
        liked = [i for i in items if items[i].category == fav]
        other = [i for i in items if items[i].category != fav]
        split = "train" if u < n_users * 2 // 3 else ("valid" if u % 2 else "test")
        for g in range(4):
            hist = tuple(rng.sample(liked, 3))
            n_neg = 1 if split == "train" else 4
            group = f"u{u}g{g}"
            splits[split].append(Example(f"u{u}", hist, rng.choice(liked), 1, group=group))
            splits[split] += [Example(f"u{u}", hist, n, 0, group=group) for n in rng.sample(other, n_neg)]
    return ScenarioData("toyrank", "toy", items, splits, "toy", "ranking")


def test_groups_and_sampled_negatives():
    data = ranking_toy()
    train = data.splits["train"]
    groups = build_groups(train)
    assert all(len(g) == 2 and len({ex.group for ex in g}) == 1 for g in groups)
    sampler = NegativeSampler(train)
    rng = random.Random(0)
    cfg = TrainConfig(group_size=6, negatives=3)
    for g in groups[:10]:
        v = visit(g, cfg, sampler, rng)
        assert len(v) == 2 + 3 and v[:2] == g  # a pair + 3 sampled (at most negatives per positive)
        user_items = sampler.seen[g[0].user]
        assert all(ex.label == 0 and ex.candidate not in user_items for ex in v[2:])
        assert all(ex.history == g[0].history for ex in v)  # one shared prefix
    big = [Example("u", ("a",), f"c{i}", int(i == 7), group="g") for i in range(20)]
    v = visit(big, TrainConfig(group_size=6), sampler, rng)
    assert len(v) == 6 and v[0].label == 1  # sampled down, the positive kept
    assert visit(g, TrainConfig(negatives=0), sampler, rng) == g


def test_group_loss_by_hand():
    z = torch.tensor([2.0, 0.0, 1.0, -1.0])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
    lw = -(2.0 - math.log(math.exp(2.0) + math.exp(0.0)))  # group 1: [2, 0], positive first
    # group 2: [1, -1], positive second
    lw2 = -(-1.0 - math.log(math.exp(1.0) + math.exp(-1.0)))
    got = group_loss(z, y, [2, 2], 0.5)
    assert got.item() == pytest.approx(0.5 * bce.item() + 0.5 * (lw + lw2) / 2, rel=1e-6)
    assert group_loss(z, y, [2, 2], 0.0).item() == pytest.approx(bce.item())
    # a group with one class only has no listwise term
    assert group_loss(z[:2], torch.tensor([0.0, 0.0]), [2], 0.5).item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(z[:2], torch.zeros(2)).item())
    # one weight per group (a joint run): group 1 pointwise (w=0), group 2 half listwise
    bce_each = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
    expected = (bce_each[0] + bce_each[1] + 0.5 * bce_each[2] + 0.5 * bce_each[3]).item() / 4 + 0.5 * lw2
    assert group_loss(z, y, [2, 2], [0.0, 0.5]).item() == pytest.approx(expected, rel=1e-6)
    assert group_loss(z, y, [2, 2], [0.5, 0.5]).item() == pytest.approx(got.item(), rel=1e-6)


def test_grouped_training_learns_and_records_speed(hub):
    data = ranking_toy()
    _, card = hub.train("toyrank", data, TrainConfig(**FAST, group_size=6, negatives=4), progress=False)
    test = card["metrics"]["test"]
    assert test["adapter"]["ndcg@10"] > max(test["base"]["ndcg@10"], test["random"]["ndcg@10"]) + 0.1, test
    t = card["train"]
    assert t["loss"] == {"bce": 0.5, "listwise_softmax": 0.5, "group_size": 6, "sampled_negatives": 4, "rule_prior": 0.0}
    assert t["candidates_per_s"] > 0 and t["candidates"] >= 30 * 8 and t["steps"] == 30
    assert card["base"]["compute"] == hub.base.compute


def test_eval_every_is_clamped_and_progress_is_logged(hub, toy, caplog, monkeypatch):
    monkeypatch.setattr(train_mod, "LOG_EVERY_S", 0.0)  # a log line every step
    with caplog.at_level(logging.INFO, logger="adapterhub.train"):
        _, card = hub.train("toy", toy, TrainConfig(max_steps=3, eval_every=50), progress=False)
    assert [e["step"] for e in card["train"]["log"]] == [3]
    text = caplog.text
    assert "eval_every=50 > max_steps=3" in text
    assert "step 2/3" in text and "ms/step" in text and "ETA" in text


def test_max_minutes_stops_training(hub, toy):
    _, card = hub.train("toy", toy, TrainConfig(max_steps=10_000, eval_every=10_000, max_minutes=1e-6), progress=False)
    assert card["train"]["steps"] == 1 and card["train"]["log"][-1]["step"] == 1


def test_domain_steps_run_and_lower_the_lm_loss(hub, toy):
    """--domain-steps crashed with UnboundLocalError; now it runs and the LM loss falls."""
    _, card = hub.train("toy", toy, TrainConfig(max_steps=2, eval_every=2, domain_steps=30, lr=1e-2), progress=False)
    rows = card["train"]["domain_log"]
    assert rows[-1]["domain_step"] == 30
    assert rows[-1]["lm_loss"] < rows[0]["lm_loss"]


def test_a_crash_inside_training_leaves_no_pairs_attached(hub, toy, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom")
    monkeypatch.setattr(train_mod, "group_loss", boom)
    with pytest.raises(RuntimeError, match="boom"):
        hub.train("toy", toy, TrainConfig(max_steps=2), progress=False)
    assert all(m.lora_A is None for m in hub.wrapped.values())
    assert hub.routing.active is None and hub.registry.names() == []


def test_the_learning_rate_decays_to_zero_by_steps_or_by_minutes_whichever_is_nearer():
    from adapterhub.train import lr_factor
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)            # warm-up
    assert lr_factor(50, 100, 10) == pytest.approx(0.5)           # by steps: half the run left
    assert lr_factor(100, 100, 10) == 0.0
    # a time budget 80% used at step 50 of 100 leaves 20% of the rate; used up, nothing
    assert lr_factor(50, 100, 10, spent=0.8) == pytest.approx(0.2)
    assert lr_factor(50, 100, 10, spent=1.0) == 0.0
    assert lr_factor(50, 100, 10, spent=0.2) == pytest.approx(0.5)  # the steps are nearer their end


def test_a_time_budget_anneals_the_rate_to_zero_by_its_end(hub, toy, monkeypatch):
    # train.py's clock advances 2 s at every read (a few reads per step): a 1-minute budget is a few
    # steps, far fewer than the 40 that one epoch of the toy takes
    import types
    clock = [0.0]

    def tick():
        clock[0] += 2.0
        return clock[0]

    rates = []
    step = train_mod.Loop.step

    def spy(self, opt, sched):
        rates.append(opt.param_groups[0]["lr"])
        return step(self, opt, sched)

    monkeypatch.setattr(train_mod, "time", types.SimpleNamespace(perf_counter=tick))
    monkeypatch.setattr(train_mod.Loop, "step", spy)
    _, card = hub.train("toy", toy, TrainConfig(max_minutes=1.0, eval_every=100, warmup_steps=1, lr=1e-2),
                        progress=False)
    assert 4 <= card["train"]["steps"] <= 15 and card["train"]["steps"] == len(rates)
    assert rates[0] == pytest.approx(1e-2) and rates == sorted(rates, reverse=True)
    assert rates[-1] < 0.3e-2          # by the last step the rate has decayed most of the way
