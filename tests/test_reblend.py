"""Refitting a version's fused blend on valid groups under several protocols (adapterhub reblend)."""
import pytest

from adapterhub.config import TrainConfig
from adapterhub.errors import ConfigError, DataError
from adapterhub.fused import apply, fit, sigmoid
from adapterhub.train.reblend import cross_fitted, folds_of, reblend
from test_protocols import ranking_data


def test_folds_keep_groups_whole_and_a_row_is_scored_by_a_blend_that_never_saw_its_group():
    groups = ["a", "a", "b", "c", "b", "d", "e", "f", "f"]
    fold = folds_of(groups, k=3)
    for g in set(groups):
        assert len({f for f, h in zip(fold, groups) if h == g}) == 1
    assert fold[:4] == [0, 0, 1, 2] and fold[5] == 0   # dealt round-robin in order of first appearance
    X = [[float(i % 3), float(i % 2)] for i in range(len(groups))]
    examples = [type("E", (), {"label": i % 2})() for i in range(len(groups))]
    out = cross_fitted(X, examples, groups, ["a", "b"], within_groups=False, k=3)
    rows = [i for i, f in enumerate(fold) if f != 1]
    held = fit([X[i] for i in rows], [examples[i].label for i in rows], names=["a", "b"])
    assert out[2] == pytest.approx(sigmoid(apply(held, [X[2]])[0]))


def test_reblend_publishes_the_same_weights_with_a_blend_judged_cross_fitted(hub):
    data = ranking_data()
    cfg = TrainConfig(max_steps=2, eval_every=2, batch_size=12, group_size=6, n_valid=None, n_test=None)
    adapter, card = hub.train("music", data, cfg, progress=False, force=True)
    new, new_card = reblend(hub, adapter.key, data, ("sampled", "catalog", "popular"))
    assert new.key == "music@v2" and [p["ref"] for p in new_card["parents"]] == [adapter.key]
    assert new_card["weights_sha256"] == card["weights_sha256"]
    assert new_card["files"] == card["files"]   # the same facts
    record = new_card["reblend"]
    assert record["valid_protocols"] == ["sampled", "catalog", "popular"]
    assert record["n_valid_examples"] > len(data.splits["valid"])   # the three protocols' groups, pooled
    table = record["cross_fitted"]
    assert {"its own blend", "its own recipe", "refit, pointwise", "refit, within groups", "refit, logit and rule",
            "raw", "most-popular"} <= set(table)
    for row in table.values():
        assert set(row) == {"sampled", "catalog", "popular", "mean"}
        assert row["mean"] == pytest.approx(sum(row[p] for p in ("sampled", "catalog", "popular")) / 3, abs=1e-4)
    refits = ("refit, pointwise", "refit, within groups", "refit, logit and rule")
    best_refit = max(refits, key=lambda m: table[m]["mean"])
    promoted = hub.registry.current("music") == "v2"
    assert promoted == (table[best_refit]["mean"] > table["its own recipe"]["mean"])
    assert record["chosen"] == (best_refit if promoted else "refit, pointwise")
    if record["chosen"] == "refit, logit and rule":   # the stored blend has no popularity and no is-new
        assert new_card["fused"]["features"] == ["llm_logit", "tag_overlap"]
    else:
        assert "log1p_popularity" in new_card["fused"]["features"]
    held = record["protocol_held_out"]   # each protocol scored by a blend fit on the other two only
    assert set(held) == set(refits) and all(set(row) == {"sampled", "catalog", "popular", "mean"}
                                            for row in held.values())
    assert record["compared_with"] == "its own recipe"
    _, again = reblend(hub, new.key, data, ("sampled", "catalog", "popular"), promote=False)
    assert again["reblend"]["compared_with"] == record["chosen"]   # a reblended version: its reblend's recipe
    _, fewer = reblend(hub, new.key, data, ("sampled", "catalog", "popular"), promote=False,
                       n_valid=len(data.splits["valid"]) // 2)   # another version's valid size, to compare on
    assert 0 < fewer["reblend"]["n_valid_examples"] < record["n_valid_examples"]
    assert fewer["reblend"]["n_valid"] == len(data.splits["valid"]) // 2 and record["n_valid"] is None  # (cfg's)
    with pytest.raises(ConfigError, match="n_valid"):
        reblend(hub, new.key, data, ("sampled",), n_valid=0)
    assert new_card["fused"]["valid_protocols"] == ["sampled", "catalog", "popular"]
    assert new_card["metrics"]["valid"]["adapter"]["ndcg@10"] == table["raw"]["mean"]
    assert "protocols" not in new_card and "test" not in new_card["metrics"]   # test: eval --update-card


def test_reblend_refuses_data_the_version_was_not_trained_on(hub):
    data = ranking_data()
    cfg = TrainConfig(max_steps=2, eval_every=2, batch_size=12, group_size=6, n_valid=None, n_test=None)
    adapter, _ = hub.train("music", data, cfg, progress=False, force=True)
    with pytest.raises(DataError, match="other data"):
        reblend(hub, adapter.key, ranking_data(seed=1).__class__(**{**ranking_data().__dict__, "sha256": "y"}))


def test_a_pointwise_version_is_judged_on_pooled_and_per_user_auc_and_refuses_redrawn_groups(hub):
    from conftest import toy_data
    from adapterhub.errors import ConfigError
    data = toy_data()
    cfg = TrainConfig(max_steps=2, eval_every=2, batch_size=8, n_valid=None, n_test=None)
    adapter, _ = hub.train("toy", data, cfg, progress=False, force=True)
    with pytest.raises(ConfigError, match="pointwise"):
        reblend(hub, adapter.key, data, ("sampled", "catalog"))
    with pytest.raises(ConfigError, match="include sampled"):
        reblend(hub, adapter.key, data, ("catalog",))
    _, card = reblend(hub, adapter.key, data, ("sampled",))
    for row in card["reblend"]["cross_fitted"].values():
        assert {"auc", "user_auc", "mean"} <= set(row)
        assert row["mean"] == pytest.approx((row["auc"] + row["user_auc"]) / 2, abs=1e-4)
    assert set(card["metrics"]["valid"]["adapter"]) == {"auc", "user_auc"}


def test_the_logit_and_rule_recipe_drops_the_features_whose_sign_the_sampler_decides():
    from adapterhub.train.reblend import RULE_ONLY, _recipe, held_out
    names = ["llm_logit", "log1p_popularity", "brand_overlap", "is_new"]
    X = [[0.5 * i, float(i % 4), float(i % 3 == 0), float(i % 4 == 0)] for i in range(24)]
    x, kept, within, rows = _recipe(RULE_ONLY, X, names, [True] * 24)
    assert kept == ["llm_logit", "brand_overlap"] and x[6] == [3.0, 1.0] and not within and rows is None
    # held out: the second protocol's rows are scored by a blend fit on the first's only
    examples = [type("E", (), {"label": int(i % 3 == 0)})() for i in range(24)]
    views = {"sampled": examples[:12], "popular": examples[12:]}
    out = held_out(x, examples, [str(i // 4) for i in range(24)], kept, False, views)
    first = fit(x[:12], [e.label for e in examples[:12]], names=kept)
    assert out[15] == pytest.approx(sigmoid(apply(first, [x[15]])[0]))


def test_a_blend_of_the_logit_and_the_rule_alone_scores_through_fused_scores():
    """A stored blend names its features: one without popularity reads only the brand overlap."""
    from adapterhub.datasets.common import Example
    from adapterhub.scoring import fused_scores
    facts = {"format": 2, "scenario": "ecommerce",
             "items": {"a": {"t": "A", "c": "acme", "p": 50}, "b": {"t": "B", "c": "zeta", "p": 1},
                       "h": {"t": "H", "c": "acme"}}}
    model = {"features": ["llm_logit", "brand_overlap"], "mean": [0.0, 0.0], "std": [1.0, 1.0],
             "weights": [1.0, 2.0], "bias": 0.0, "fit": "pointwise"}
    rows = [Example("u", ("h",), "a", 1, group="g"), Example("u", ("h",), "b", 0, group="g")]
    a, b = fused_scores(model, facts, "ecommerce", rows, [0.5, 0.5])
    assert a == pytest.approx(sigmoid(2.0)) and b == pytest.approx(0.5)   # popularity 50 against 1 reads nothing
