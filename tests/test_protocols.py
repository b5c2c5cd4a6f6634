"""Candidate protocols (adapterhub.protocols), per-user AUC, new items in prompts and features, and
the negative mix of training."""
import random
from collections import Counter

import pytest

from adapterhub import facts as F
from adapterhub import prompts, protocols
from adapterhub.config import TrainConfig
from adapterhub.datasets.common import Example, Item, ScenarioData
from adapterhub.errors import ConfigError
from adapterhub.evaluation import evaluate


def ranking_data(seed: int = 0) -> ScenarioData:
    """60 items read in sequences, 40 more only in the item file (the catalog); train popularity
    skewed towards low ids; groups of 1 positive + 5 negatives."""
    rng = random.Random(seed)
    catalog = {f"{k}": Item(f"{k}", f"artist {k}", "rock" if k % 2 else "pop") for k in range(100)}
    items = {k: v for k, v in catalog.items() if int(k) < 60}
    splits = {"train": [], "valid": [], "test": []}
    for u in range(30):
        split = "train" if u < 20 else "valid" if u < 25 else "test"
        hist = tuple(str(min(int(rng.expovariate(0.15)), 49)) for _ in range(4))
        pos = str(50 + u % 10) if split == "test" and u % 2 else hist[0]   # some test positives are new
        if split == "train":
            pos = str(rng.randrange(20))
        negs = [str(k) for k in rng.sample(range(60), 5) if str(k) not in hist and str(k) != pos]
        group = f"{split}:{u}"
        splits[split] += [Example(f"u{u}", hist, pos, 1, group=group)] + [
            Example(f"u{u}", hist, n, 0, group=group) for n in negs]
    return ScenarioData("music", "toy", items, splits, "x", "ranking", {}, catalog=catalog)


def test_catalog_keeps_positives_and_draws_negatives_from_the_whole_item_file():
    data = ranking_data()
    test = data.splits["test"]
    redrawn = protocols.regroup(data, test, "catalog", seed=0)
    known = protocols.known_items(data)
    by_group = {}
    for ex in redrawn:
        by_group.setdefault(ex.group, []).append(ex)
    originals = {}
    for ex in test:
        originals.setdefault(ex.group, []).append(ex)
    assert set(by_group) == {f"{g}@catalog" for g in originals}
    drawn = set()
    for g, members in originals.items():
        new = by_group[f"{g}@catalog"]
        assert [e for e in new if e.label] == [e.__class__(**{**e.__dict__, "group": f"{g}@catalog"})
                                               for e in members if e.label]
        negs = [e.candidate for e in new if not e.label]
        assert len(negs) == sum(1 for e in members if not e.label) and len(set(negs)) == len(negs)
        assert not set(negs) & known[members[0].user]           # never an item the user interacted with
        assert all(e.history == members[0].history for e in new)
        drawn |= set(negs)
    assert any(int(i) >= 60 for i in drawn)                    # items outside the loader's sequences too
    assert protocols.regroup(data, test, "catalog", seed=0) == redrawn   # seeded: the same every run


def test_popular_draws_by_train_popularity_and_new_keeps_only_new_positives():
    data = ranking_data()
    counts = F.baselines.popularity(data)
    draws = Counter()
    for seed in range(40):
        for ex in protocols.regroup(data, data.splits["valid"], "popular", seed=seed):
            if not ex.label:
                draws[ex.candidate] += 1
                assert counts.get(ex.candidate, 0) > 0          # never an item without train interactions
    top, rare = max(counts, key=counts.get), min(counts, key=counts.get)
    assert draws[top] > draws[rare]
    new = protocols.regroup(data, data.splits["test"], "new", seed=0)
    assert new and all(counts.get(ex.candidate, 0) == 0 for ex in new)   # positives and negatives alike
    positives = [ex for ex in new if ex.label]
    assert len(positives) == sum(1 for ex in data.splits["test"] if ex.label and not counts.get(ex.candidate))


def test_protocols_refuse_pointwise_data_and_unknown_names():
    data = ranking_data()
    with pytest.raises(ConfigError, match="catalgo"):
        protocols.regroup(data, data.splits["test"], "catalgo")
    pointwise = ScenarioData("video", "toy", data.items, data.splits, "x", "pointwise")
    with pytest.raises(ConfigError, match="per-user AUC"):
        protocols.regroup(pointwise, pointwise.splits["test"], "catalog")
    assert protocols.regroup(pointwise, pointwise.splits["test"], "sampled") == pointwise.splits["test"]


def test_user_auc_is_the_mean_of_each_users_auc():
    ex = [Example("a", (), "x", y) for y in (1, 0, 0)] + [Example("b", (), "y", y) for y in (1, 1, 0)] + \
         [Example("c", (), "z", 1)]   # one class only: skipped
    scores = [0.9, 0.1, 0.95, 0.6, 0.7, 0.4, 0.5]
    out = evaluate("pointwise", ex, scores)
    assert out["user_auc"] == pytest.approx((0.5 + 1.0) / 2)   # a: 1 of 2 pairs right; b: both right


def test_the_bootstraps_one_metric_matches_evaluate_and_counts_each_draw_of_a_user():
    """metrics_with_ci computes only the bootstrapped metric of each resample on a pointwise split: its
    AUC intervals are exactly those of the full evaluate(), a resample evaluate() cannot score is
    skipped the same way (a split of one class only), and the per-user AUC's interval averages over
    each draw of a user (evaluate's over `user` would merge them), on the same point estimate."""
    from dataclasses import replace
    from adapterhub.errors import DataError
    from adapterhub.fused import bootstrap_ci
    from adapterhub.metrics import group_auc
    from adapterhub.scoring import _one_metric, metrics_with_ci
    rng = random.Random(3)
    ex = [Example(f"u{rng.randrange(9)}", (), f"i{j}", int(rng.random() < 0.3)) for j in range(60)]
    scores = [rng.random() for _ in ex]

    def full(metric):
        def f(e, s):
            out = evaluate("pointwise", e, s)
            if metric not in out:
                raise DataError("undefined")
            return out[metric]
        return f
    got = metrics_with_ci("pointwise", ex, {"m": scores}, seed=5)["m"]
    assert got["auc_ci95"] == [round(v, 4) for v in bootstrap_ci(full("auc"), ex, scores, n=300, seed=5)]
    by_user = [replace(e, group=e.user) for e in ex]
    assert _one_metric("pointwise", "user_auc", by_user, scores) == got["user_auc"]   # unresampled: the same

    def per_draw(e, s):
        return group_auc([x.label for x in e], s, [x.group for x in e])
    want = [round(v, 4) for v in bootstrap_ci(per_draw, by_user, scores, n=300, seed=5)]
    merged = [round(v, 4) for v in bootstrap_ci(full("user_auc"), by_user, scores, n=300, seed=5)]
    assert got["user_auc_ci95"] == want != merged
    one_class = [replace(e, label=1) for e in ex[:5]] + [replace(ex[5], label=0)]   # most resamples: one class
    assert metrics_with_ci("pointwise", one_class, {"m": scores[:6]}, seed=1)["m"]["auc_ci95"] == \
        [round(v, 4) for v in bootstrap_ci(full("auc"), one_class, scores[:6], n=300, seed=1)]


def test_a_user_drawn_twice_counts_twice_in_the_per_user_auc_interval():
    """The per-user AUC of a bootstrap resample averages over its draws: a user drawn twice (renamed
    'u#1' by bootstrap_ci) counts twice, as the bootstrap over users means; evaluate() over `user`
    would merge the two draws into one. A resample with no user of both labels is undefined."""
    from dataclasses import replace
    from adapterhub.errors import DataError
    from adapterhub.scoring import _one_metric
    u = [Example("u", (), "a", 1), Example("u", (), "b", 0)]      # AUC 1
    v = [Example("v", (), "c", 1), Example("v", (), "d", 0)]      # AUC 0
    drawn = [replace(e, group="u") for e in u] + [replace(e, group="u#1") for e in u] + [replace(e, group="v") for e in v]
    scores = [0.9, 0.1, 0.9, 0.1, 0.2, 0.8]
    assert _one_metric("pointwise", "user_auc", drawn, scores) == pytest.approx(2 / 3)
    assert evaluate("pointwise", drawn, scores)["user_auc"] == pytest.approx(1 / 2)   # the draws merged
    with pytest.raises(DataError):
        _one_metric("pointwise", "user_auc", [replace(e, label=1) for e in drawn], scores)


def test_an_item_without_train_interactions_renders_and_counts_as_new():
    data = ranking_data()
    facts = F.compute(data)                  # format 2: the whole catalog, new items shown as new
    assert facts["format"] == 2 and "99" in facts["items"] and "p" not in facts["items"]["99"]
    suffix = prompts.render_candidate("music", "99", facts, history=["0"])
    assert f"({prompts.NEW_ITEM})" in suffix and "unpopular" not in suffix
    old = F.compute(data, fmt=1)             # format 1: what older versions were trained with
    assert "99" not in old["items"]
    assert "unpopular" in prompts.render_candidate("music", "59", old, history=["0"])
    known = next(i for i, e in facts["items"].items() if e.get("p"))
    names = F.feature_names("music")
    assert F.features(facts, "music", ["0"], [], "99")[names.index("is_new")] == 1.0
    assert F.features(facts, "music", ["0"], [], known)[names.index("is_new")] == 0.0


def test_negative_mix_swaps_negatives_for_draws_under_each_protocol():
    from adapterhub.train.examples import NegativeSampler, visit
    data = protocols.with_catalog(ranking_data())
    train = data.splits["train"]
    counts = F.baselines.popularity(data)
    group = [ex for ex in train if ex.group == train[0].group]
    cfg = TrainConfig(group_size=6, negatives=5)
    plain = NegativeSampler(train, data, TrainConfig().negative_shares())
    assert visit(group, cfg, plain, random.Random(1)) == visit(group, cfg, NegativeSampler(train), random.Random(1))
    mixed = NegativeSampler(train, data, TrainConfig(negative_mix="popular").negative_shares())
    seen = visit(group, cfg, mixed, random.Random(1))
    assert seen[0] == group[0] and all(counts.get(ex.candidate, 0) > 0 for ex in seen[1:])
    catalog = NegativeSampler(train, data, TrainConfig(negative_mix="catalog").negative_shares())
    drawn = {ex.candidate for r in range(30) for ex in visit(group, cfg, catalog, random.Random(r))[1:]}
    assert any(int(i) >= 60 for i in drawn)   # the catalog's items, never seen in a sequence
    assert TrainConfig(negative_mix="sampled=2,catalog=1,popular=1").negative_shares() == \
        {"sampled": 0.5, "catalog": 0.25, "popular": 0.25}
    with pytest.raises(ConfigError, match="popularr"):
        TrainConfig(negative_mix="popularr=1")


def test_a_card_reports_every_protocol_and_show_prints_them(hub, tmp_path, capsys):
    from adapterhub.cards import refresh
    from adapterhub.cli.registry import protocol_table
    from adapterhub.scoring import evaluate_version
    data = ranking_data()
    cfg = TrainConfig(max_steps=4, eval_every=4, batch_size=12, group_size=6, n_valid=None, n_test=None,
                      negative_mix="sampled=0.5,catalog=0.25,popular=0.25", valid_protocols="sampled,catalog,popular")
    adapter, card = hub.train("music", data, cfg, progress=False, force=True)
    assert card["facts"]["format"] == 2 and "is_new" in card["fused"]["features"]
    assert card["data"]["used"]["valid"] == 3 * len(data.splits["valid"])   # valid pools the three protocols' groups
    tables = card["protocols"]["test"]
    assert set(tables) == {"catalog", "popular", "new"}
    for name in ("catalog", "popular"):
        assert {"adapter", "adapter (fused)", "base", "most-popular", "random"} <= set(tables[name])
    assert "adapter (no facts)" in tables["catalog"] and "adapter (no facts)" not in tables["popular"]
    assert "adapter (no facts)" in card["metrics"]["test"]
    # re-measured the way a client calls it, the sampled figures are the card's own
    result = evaluate_version(hub, adapter.key, data, "test", ("sampled", "catalog"))
    assert result["protocols"]["sampled"]["adapter (fused)"]["ndcg@10"] == pytest.approx(
        card["metrics"]["test"]["adapter (fused)"]["ndcg@10"])
    assert result["protocols"]["catalog"]["base"]["ndcg@10"] == pytest.approx(tables["catalog"]["base"]["ndcg@10"])
    refreshed = refresh(hub.registry, adapter.key, result, "test")
    assert hub.registry.card(adapter.key)["refreshed"][-1]["protocols"] == ["sampled", "catalog"]
    assert refreshed["protocols"]["test"]["catalog"] == result["protocols"]["catalog"]
    hub.registry.load(adapter.key)   # weights untouched: their sha256 still matches
    table = protocol_table(refreshed)
    assert "sampled ndcg@10" in table and "catalog ndcg@10" in table and "adapter (fused)" in table
    # a refresh on a sample of the card's examples (eval --n) keeps the card's own figures
    sample = evaluate_version(hub, adapter.key, data, "test", ("sampled",), n=len(data.splits["test"]) // 2)
    assert sample["n_examples"] < result["n_examples"]
    kept = refresh(hub.registry, adapter.key, sample, "test", subset=True)
    assert kept["metrics"]["test"] == refreshed["metrics"]["test"]
    assert kept["protocols"]["test"]["sampled"] == sample["protocols"]["sampled"]
    assert kept["refreshed"][-1]["subset"] is True
