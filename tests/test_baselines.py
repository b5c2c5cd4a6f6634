import pytest

from adapterhub import baselines as B
from adapterhub.datasets import Example, Item, ScenarioData
from adapterhub.evaluation import evaluate


def make_data(scenario="news", extra=None):
    items = {f"i{k}": Item(f"i{k}", f"Item {k}", "sports" if k < 3 else "tech") for k in range(6)}
    train = [Example("u1", ("i0", "i1"), "i2", 1), Example("u1", ("i0", "i1"), "i5", 0),
             Example("u2", ("i0",), "i1", 1)]
    test = [Example("t", ("i3",), "i4", 1, group="g"), Example("t", ("i3",), "i0", 0, group="g")]
    return ScenarioData(scenario, "toy", items, {"train": train, "valid": [], "test": test}, "x",
                        "ranking", extra or {})


def test_popularity_counts_train_only():
    data = make_data()
    # i0: u1, u2; i1: u1 (history) + u2 (target) = 2; i2: 1; i5 is a negative -> 0; i4 only in test
    assert B.popularity(data) == {"i0": 2, "i1": 2, "i2": 1}
    scores = B.most_popular(data, data.splits["test"])
    assert scores[1] > scores[0] and scores[0] < 1e-3


def test_category_overlap_with_subcategory():
    data = make_data(extra={"subcategory": {"i3": "ai", "i4": "ai", "i0": "football"}})
    ex = [Example("t", ("i3", "i0"), "i4", 1), Example("t", ("i3", "i0"), "i1", 0)]
    s = B.category_overlap(data, ex)
    assert s[0] == pytest.approx(1.5, abs=1e-3) and s[1] == pytest.approx(1.0, abs=1e-3)


def test_like_share_plus_rate():
    data = make_data("video", {"like_rate": {"i4": 0.8}, "global_like_rate": 0.5})
    ex = [Example("u", ("i0",), "i4", 1, disliked=("i1", "i2", "i3")), Example("u", (), "i5", 0)]
    assert B.like_share_plus_rate(data, ex) == pytest.approx([0.25 + 0.8, 0.5 + 0.5])


def test_tag_overlap_and_registry():
    data = make_data("music", {"tags": {"i0": ["rock"], "i1": ["pop", "rock"], "i2": ["jazz"]}})
    s = B.tag_overlap(data, [Example("u", ("i0", "i2"), "i1", 1)])
    assert s[0] == pytest.approx(1.0, abs=1e-3)
    for scenario, methods in B.BASELINES.items():
        assert {"random", "most-popular"} <= set(methods) and len(methods) == 3
    assert set(B.for_scenario(make_data("podcasts"))) == {"random", "most-popular", "category-overlap"}


def test_baselines_are_deterministic_and_evaluable():
    data = make_data()
    for name, fn in B.BASELINES["news"].items():
        a, b = fn(data, data.splits["test"], seed=1), fn(data, data.splits["test"], seed=1)
        assert a == b and len(a) == 2
        evaluate("ranking", data.splits["test"], a)
