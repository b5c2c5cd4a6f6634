"""One adapter trained jointly on several scenarios: mixed batches, each scenario's own
prompts and facts, per-scenario metrics in the card, facts files per scenario, serving by scenario."""
import random

import pytest
import torch

from adapterhub.config import TrainConfig
from adapterhub.errors import ConfigError
from adapterhub.train import next_groups as _next_groups, prepare

from conftest import toy_data

FAST = dict(max_steps=8, eval_every=4, lr=5e-3, batch_size=8, patience=10)


def two_scenarios():
    return [toy_data(scenario="toy"), toy_data(n_users=18, seed=1, scenario="books")]


def test_joint_card_has_each_scenario_and_the_mean(hub, caplog):
    with caplog.at_level("INFO", logger="adapterhub"):
        adapter, card = hub.train("both", two_scenarios(), TrainConfig(**FAST), progress=False)
    # each check's log line names every scenario's value beside the mean, as the card's log has them
    last = card["train"]["log"][-1]
    assert f"val_mean_primary {last['val_mean_primary']:.4f} (toy {last['val_toy_auc']:.4f}, books " \
           f"{last['val_books_auc']:.4f})" in caplog.text
    assert card["scenario"] == "toy+books" and set(card["scenarios"]) == {"toy", "books"}
    for scenario, part in card["scenarios"].items():
        assert {"adapter", "adapter (fused)", "base"} <= set(part["metrics"]["test"]), scenario
        assert part["facts"]["file"] == f"facts.{scenario}.json" and part["verdict"]
    assert card["primary_metric"] == "mean_primary"
    for split in ("valid", "test"):
        for who in ("adapter", "base"):
            mean = sum(p["metrics"][split][who]["auc"] for p in card["scenarios"].values()) / 2
            assert card["metrics"][split][who]["mean_primary"] == pytest.approx(mean)
    assert {"val_toy_auc", "val_books_auc", "val_mean_primary"} <= set(card["train"]["log"][-1])
    folder = hub.registry.root / "both" / "v1"
    assert {"facts.toy.json", "facts.books.json"} <= {p.name for p in folder.iterdir()}
    # facts are data, not committed: a clone rebuilds each scenario's file, byte for byte
    from adapterhub.errors import ConfigError as CE, DataError
    from adapterhub.train import rebuild_facts
    saved = {n: (folder / n).read_bytes() for n in ("facts.toy.json", "facts.books.json")}
    for n in saved:
        (folder / n).unlink()
    with pytest.raises(CE, match="2 scenario"):
        rebuild_facts(hub.registry, "both", two_scenarios()[:1])
    from dataclasses import replace
    with pytest.raises(DataError, match="sha256"):
        rebuild_facts(hub.registry, "both", [two_scenarios()[0], replace(two_scenarios()[1], sha256="other")])
    rebuild_facts(hub.registry, "both", two_scenarios()[::-1])  # any order: matched by scenario
    assert {n: (folder / n).read_bytes() for n in saved} == saved
    # served per scenario: its own facts and fused blend; without a scenario, a clear error
    history, candidates = ["red thing 2", "red thing 4"], ["red thing 6", "blue thing 1"]
    assert len(adapter.hub.recommend("both", history, candidates, scenario="books")) == 2
    with pytest.raises(ConfigError, match="several scenarios.*scenario="):
        adapter.hub.recommend("both", history, candidates)
    # and `adapterhub prompt` shows a scenario's prompt with that scenario's facts
    from adapterhub.cli import main
    assert main(["prompt", "both", "--scenario", "books", "--registry", str(hub.registry.root), "--history",
                 "red thing 2|red thing 4", "--candidate", "red thing 6"]) == 0
    assert main(["prompt", "both", "--registry", str(hub.registry.root), "--candidate", "red thing 6"]) == 2
    # a joint adapter warm-starts a single-scenario one like any parent, named in its card
    _, child = hub.train("toy-from-both", toy_data(scenario="toy"),
                         TrainConfig(**{**FAST, "max_steps": 3, "init_from": "both"}), progress=False)
    assert child["parents"] == [{"ref": "both@v1", "scenario": "toy+books", "role": "warm start"}]


def test_batches_mix_scenarios(hub):
    cfg = TrainConfig(**FAST)
    rng = random.Random(0)
    parts = [prepare(hub, d, cfg, rng) for d in two_scenarios()]
    groups = [(i, g) for i, p in enumerate(parts) for g in p.groups]
    order, seen = {}, []
    for _ in range(6):
        batch, order = _next_groups(groups, order, 8, 1, 0, rng, cfg, parts)
        seen.append({i for i, _ in batch})
    assert any(s == {0, 1} for s in seen), seen  # some steps hold both scenarios' groups


def test_scenario_mix_candidates_gives_each_scenario_an_equal_share(hub):
    """'groups' (the default) draws scenarios in proportion to their groups; 'candidates' keeps every
    scenario's count of trained candidates within one group of the others'."""
    one_row = toy_data(n_users=18, seed=1, scenario="books")  # books: one candidate per group
    one_row.splits["train"] = one_row.splits["train"][::2]
    for mix in ("groups", "candidates"):
        cfg = TrainConfig(**FAST, scenario_mix=mix, per_scenario="books:negatives=0")
        rng = random.Random(0)
        parts = [prepare(hub, d, cfg, rng) for d in (toy_data(scenario="toy"), one_row)]
        groups = [(i, g) for i, p in enumerate(parts) for g in p.groups]
        order, counts = {}, [0, 0]
        for _ in range(30):
            batch, order = _next_groups(groups, order, 8, 1, 0, rng, cfg, parts)
            for i, g in batch:
                counts[i] += len(g)
        if mix == "groups":
            assert counts[1] * 3 < counts[0], counts  # books' one-row groups get few candidates
        else:
            assert abs(counts[0] - counts[1]) <= 8, counts
    with pytest.raises(ConfigError, match="scenario_mix"):
        TrainConfig(scenario_mix="equal")


def test_joint_needs_distinct_scenarios(hub):
    with pytest.raises(ConfigError, match="distinct scenarios"):
        hub.train("dup", [toy_data(), toy_data()], TrainConfig(**FAST), progress=False)


@pytest.mark.slow   # ~15 s on 2 cores: keeps the default run under 5 minutes
def test_per_scenario_loss_options(hub):
    """A joint run gives a scenario its own negatives and listwise weight (video's like/dislike rows
    are pointwise; sampled negatives there would teach 'unwatched' instead of 'disliked')."""
    cfg = TrainConfig(**FAST, negatives=3, per_scenario="books:negatives=0,listwise_weight=0")
    rng = random.Random(0)
    parts = [prepare(hub, d, cfg, rng) for d in two_scenarios()]
    assert (parts[0].cfg.negatives, parts[0].cfg.listwise_weight) == (3, 0.5)
    assert (parts[1].cfg.negatives, parts[1].cfg.listwise_weight) == (0, 0.0)
    groups = [(i, g) for i, p in enumerate(parts) for g in p.groups]
    originals = {id(ex) for _, g in groups for ex in g}
    order, sampled = {}, {0: 0, 1: 0}
    for _ in range(20):
        batch, order = _next_groups(groups, order, 8, 1, 0, rng, cfg, parts)
        for i, g in batch:
            sampled[i] += sum(id(ex) not in originals for ex in g)
    assert sampled[0] > 0 and sampled[1] == 0, sampled  # only toy's groups get sampled negatives
    _, card = hub.train("both", two_scenarios(), cfg, progress=False)
    assert card["train"]["loss"]["per_scenario"] == {"books": {"negatives": 0, "listwise_weight": 0.0}}
    # a second version is promoted only if its mean valid metric beats the current's, rescored on
    # the same examples of each scenario
    _, again = hub.train("both", two_scenarios(), cfg.replace(seed=1), progress=False)
    promo = again["promotion"]
    assert promo["current"] == "both@v1" and promo["n"] == sum(
        p["data"]["used"]["valid"] for p in again["scenarios"].values())
    assert promo["current_value"] == pytest.approx(card["metrics"]["valid"]["adapter"]["mean_primary"], abs=1e-3)
    assert (hub.registry.current("both") == "v2") == promo["promoted"]
    with pytest.raises(ConfigError, match="not scenarios of this run"):
        hub.train("both", two_scenarios(), cfg.replace(per_scenario="music:negatives=0"), progress=False)
    with pytest.raises(ConfigError, match="Did you mean 'negatives'"):
        TrainConfig(per_scenario="books:negativs=0")
    with pytest.raises(ConfigError, match="per_scenario books: .*listwise_weight=2.0"):
        TrainConfig(per_scenario="books:listwise_weight=2")


def test_joint_data_options_are_scoped_by_scenario(capsys):
    import argparse
    from adapterhub.cli import _options_for, main
    args = argparse.Namespace(data_option=["news:full_train=true", "n=3", "video:valid_from_train=0.15"])
    assert _options_for(args, "news") == ["full_train=true", "n=3"]
    assert _options_for(args, "video") == ["n=3", "valid_from_train=0.15"]
    assert _options_for(args, "music") == ["n=3"]
    assert main(["train", "j", "--scenario", "video,news", "--data-option", "music:full_train=true"]) == 2
    assert "not scenarios of this run" in capsys.readouterr().err


@pytest.mark.slow   # ~15 s on 2 cores: keeps the default run under 5 minutes (test_train.py covers distillation)
def test_each_scenario_is_distilled_from_its_own_teacher(hub, monkeypatch):
    """per_scenario teacher=...: a joint run distils each scenario's groups from that scenario's own
    adapter, and a scenario without a teacher keeps its hard labels; the card names each teacher."""
    from dataclasses import replace
    from adapterhub import train as train_mod
    toy, books = two_scenarios()
    flipped = replace(books, splits={k: [replace(e, label=1 - e.label) for e in v] for k, v in books.splits.items()})
    hub.train("t-toy", toy, TrainConfig(**FAST), progress=False)
    hub.train("t-books", flipped, TrainConfig(**FAST), progress=False)
    seen = []
    real = train_mod.Loop._soft_labels

    def spy(self, batch, encoded, labels):
        soft = real(self, batch, encoded, labels)
        seen.append((batch, encoded, labels, soft))
        return soft

    monkeypatch.setattr(train_mod.Loop, "_soft_labels", spy)
    cfg = TrainConfig(**FAST, distill_weight=1.0, per_scenario="books:teacher=t-books")
    _, card = hub.train("both", two_scenarios(), cfg, progress=False)
    assert [p for p in card["parents"] if p["role"] == "teacher"] == [
        {"ref": "t-books@v1", "scenario": "books", "role": "teacher", "distill_weight": 1.0, "teaches": ["books"]}]
    key = hub.load("t-books").key
    checked = 0
    for batch, encoded, labels, soft in seen:
        if soft is None:  # a step of toy groups only: nothing to distil
            assert {i for i, _ in batch} == {0}
            continue
        at = 0
        for (i, g), enc in zip(batch, encoded):
            got = soft[at:at + len(g)]
            if i == 0:  # toy: no teacher, its own labels
                assert torch.equal(got, labels[at:at + len(g)])
            else:  # books: the flipped teacher's P(yes) on this very prompt
                with torch.no_grad():
                    want = torch.sigmoid(hub.packed_logits(key, [enc]))
                assert torch.allclose(got, want.to(got.dtype), atol=1e-5)
                checked += 1
            at += len(g)
    assert checked > 0
    with pytest.raises(Exception, match="t-missing"):
        hub.train("both", two_scenarios(), cfg.replace(per_scenario="books:teacher=t-missing"), progress=False)


@pytest.mark.slow   # ~15 s on 2 cores: keeps the default run under 5 minutes
def test_select_worst_kept_picks_and_promotes_by_the_worst_scenario(hub):
    """select='worst_kept': the check and the version are chosen by the smallest share of its own
    adapter's gain over the base that any scenario keeps on valid, not by the mean."""
    from adapterhub.train import worst_kept
    toy, books = two_scenarios()
    hub.train("t-toy", toy, TrainConfig(**FAST), progress=False)
    hub.train("t-books", books, TrainConfig(**FAST), progress=False)
    cfg = TrainConfig(**FAST, select="worst_kept", per_scenario="toy:teacher=t-toy;books:teacher=t-books")
    # each scenario is measured against its own adapter, and only a joint run has a worst scenario
    with pytest.raises(ConfigError, match="give books a teacher"):
        hub.train("j", two_scenarios(), cfg.replace(per_scenario="toy:teacher=t-toy"), progress=False)
    with pytest.raises(ConfigError, match="joint run"):
        hub.train("j", toy, TrainConfig(**FAST, select="worst_kept", teacher="t-toy"), progress=False)
    with pytest.raises(ConfigError, match="select='best'"):
        cfg.replace(select="best")

    _, card = hub.train("j", two_scenarios(), cfg, progress=False)
    ref = card["train"]["kept_reference"]
    assert set(ref) == {"toy", "books"} and all(r["teacher"] > r["base"] for r in ref.values())
    refs = [(ref[s]["base"], ref[s]["teacher"]) for s in ("toy", "books")]
    log = card["train"]["log"]
    for e in log:
        want = min((e[f"val_{s}_auc"] - b) / (t - b) for s, (b, t) in zip(("toy", "books"), refs))
        assert e["val_worst_kept"] == pytest.approx(want, abs=0.01) and "val_mean_primary" in e
    best = next(e for e in log if e["step"] == card["train"]["best_step"])
    assert best["val_worst_kept"] == max(e["val_worst_kept"] for e in log)

    # the next version is promoted by the same rule, both versions scored on the same valid examples
    _, card2 = hub.train("j", two_scenarios(), cfg.replace(seed=1), progress=False)
    promo = card2["promotion"]
    assert promo["metric"] == "worst_kept" and promo["current"] == "j@v1"
    new = [card2["scenarios"][s]["metrics"]["valid"]["adapter"]["auc"] for s in ("toy", "books")]
    assert promo["new_value"] == pytest.approx(worst_kept(new, refs), abs=1e-4)
    assert promo["promoted"] == (promo["new_value"] >= promo["current_value"])
    assert hub.registry.current("j") == ("v2" if promo["promoted"] else "v1")
