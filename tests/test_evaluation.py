import pytest

from adapterhub.datasets import Example
from adapterhub.errors import DataError
from adapterhub.evaluation import evaluate, format_table


def test_pointwise_logloss_only_for_probabilities():
    ex = [Example("u", (), "a", 1), Example("u", (), "b", 0)]
    out = evaluate("pointwise", ex, [0.8, 0.4])
    assert out["auc"] == 1.0 and "logloss" in out and out["n"] == 2
    assert "logloss" not in evaluate("pointwise", ex, [3.0, 1.0])


def test_ranking_groups():
    ex = [Example("u", (), c, int(c == "p"), group=g) for g in ("g1", "g2") for c in ("p", "n1", "n2", "n3")]
    scores = [0.9, 0.1, 0.2, 0.3,    # g1: positive ranked 1st
              0.2, 0.5, 0.1, 0.9]    # g2: positive ranked 3rd
    out = evaluate("ranking", ex, scores, ks=(1, 3))
    assert out["hr@1"] == 0.5 and out["hr@3"] == 1.0
    assert out["ndcg@3"] == pytest.approx((1 + 0.5) / 2)
    assert out["mrr"] == pytest.approx((1 + 1 / 3) / 2)
    assert out["n_groups"] == 2 and out["n_candidates"] == 4.0
    assert 0 < out["auc"] < 1


def test_impression_metrics():
    ex = [Example("i1", (), c, y, group="i1") for c, y in (("a", 1), ("b", 0), ("c", 1))]
    ex += [Example("i2", (), c, 1, group="i2") for c in ("d", "e")]   # all clicked: no AUC
    out = evaluate("impression", ex, [0.9, 0.5, 0.1, 0.3, 0.2])
    assert out["auc"] == 0.5 and out["n_groups"] == 2
    assert out["mrr"] == pytest.approx(((1 + 1 / 3) / 2 + (1 + 1 / 2) / 2) / 2)
    assert set(out) == {"auc", "mrr", "ndcg@5", "ndcg@10", "n_groups"}


def test_errors_and_table():
    with pytest.raises(ValueError, match="unknown task"):
        evaluate("listwise", [Example("u", (), "a", 1)], [0.5])
    with pytest.raises(ValueError, match="2 scores for 1"):
        evaluate("pointwise", [Example("u", (), "a", 1)], [0.5, 0.1])
    table = format_table({"random": {"auc": 0.5, "n": 10}, "adapter": {"auc": 0.71234}})
    assert table.splitlines() == ["| method | auc | n |", "|---|---|---|",
                                  "| random | 0.5000 | 10 |", "| adapter | 0.7123 |  |"]


def test_every_refusal_is_a_data_error():
    one = [Example("u", (), "a", 1), Example("u", (), "b", 1)]
    for task, examples in (("pointwise", one), ("ranking", [Example("u", (), "a", 0, group="g")]),
                           ("impression", [Example("u", (), "a", 0, group="g")]), ("listwise", one)):
        with pytest.raises(DataError):
            evaluate(task, examples, [0.5] * len(examples))
    with pytest.raises(DataError, match="2 scores for 1"):
        evaluate("pointwise", one[:1], [0.5, 0.1])
