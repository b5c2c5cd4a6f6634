"""A caller's catalog (adapterhub.catalog): built from interaction data or given as item dicts, used by
recommend instead of the version's own facts."""
import json

import pytest

from adapterhub import catalog as C
from adapterhub import recommend
from adapterhub.config import TrainConfig
from adapterhub.errors import DataError

FAST = dict(max_steps=6, eval_every=6, lr=1e-2, batch_size=8, patience=10, n_test=24)


@pytest.fixture
def trained(hub, toy):
    adapter, card = hub.train("toy", toy, TrainConfig(**FAST), progress=False, force=True)
    return hub, toy, adapter, card


def test_item_dicts_are_checked_field_by_field():
    ok = C.from_items([{"id": "a", "text": "Heat (1995)", "category": "Action", "popularity": 9, "like_rate": 0.7},
                       {"id": 2, "text": "Emma", "tags": ["drama"]}])
    assert ok["items"]["a"] == {"t": "Heat (1995)", "c": "Action", "p": 9, "r": 0.7, "b": 1}
    assert ok["items"]["2"] == {"t": "Emma", "g": ["drama"]}            # no popularity: a new item
    for bad, message in [({"id": "x", "text": "t", "popularity": -1}, "item 0 .*'popularity'"),
                         ({"id": "x", "text": "t", "like_rate": 1.5}, "item 0 .*'like_rate'"),
                         ({"id": "x", "text": ""}, "item 0 .*'text'"),
                         ({"text": "no id"}, "item 0: 'id'"),
                         ({"id": "x", "text": "t", "popularty": 3}, "popularty.*Did you mean 'popularity'")]:
        with pytest.raises(DataError, match=message):
            C.from_items([bad])


def test_recommend_uses_a_callers_catalog_and_item_dicts(trained):
    hub, toy, adapter, card = trained
    history, candidates = ["i0", "i2", "i4"], ["i1", "i6"]
    own = recommend.plan(hub, adapter.key, card, history, candidates)
    assert own.facts is recommend.facts_of(hub.registry, adapter.key)
    # a catalog of the caller's: i6 is very popular there, i1 unknown (so shown as a new item)
    cat = C.from_items([{"id": "i6", "text": toy.items["i6"].text, "category": toy.items["i6"].category,
                         "popularity": 900}, {"id": "i0", "text": toy.items["i0"].text, "popularity": 3}])
    theirs = recommend.plan(hub, adapter.key, card, history, candidates, catalog=cat)
    assert "top 1% popular" in theirs.suffixes[1] and "(new item)" in theirs.suffixes[0]
    from adapterhub import ranking   # which renders one candidate at a time as it counts: the same texts
    assert ranking.plan(hub, adapter.key, history, candidates, catalog=cat).plan.suffixes == theirs.suffixes
    assert [c for c, _ in adapter.recommend(history, candidates, k=2, catalog=cat)] != [] and \
        dict(adapter.recommend(history, candidates, k=2, catalog=cat)) != dict(adapter.recommend(history, candidates, k=2))
    # items given as dicts carry their own facts for this call, and come back as given
    item = {"id": "zz", "text": "a red gadget nobody sold yet", "category": "red", "popularity": 0}
    ranked = adapter.recommend(history, [item, "i1"], k=2)
    assert item in [c for c, _ in ranked]
    plan = recommend.plan(hub, adapter.key, card, history, [item])
    assert "a red gadget nobody sold yet\" (red; new item)" in plan.suffixes[0]
    assert ranking.plan(hub, adapter.key, history, [item]).plan.suffixes == plan.suffixes
    assert "zz" not in recommend.facts_of(hub.registry, adapter.key)["items"]   # the version's facts untouched
    # Hub(catalog=...) is every call's default
    from adapterhub.hub import Hub
    other = Hub(base=hub.base, registry=hub.registry, catalog=cat)
    assert dict(other.recommend(adapter.key, history, candidates, k=2)) == \
        pytest.approx(dict(adapter.recommend(history, candidates, k=2, catalog=cat)))


def test_catalog_build_counts_every_split_given(toy_folder, tmp_path, capsys):
    from adapterhub.cli import main
    out = tmp_path / "catalog.json"
    assert main(["catalog", "build", str(out), "--format", "jsonl", "--data", str(toy_folder)]) == 0
    assert "wrote" in capsys.readouterr().out
    built = json.loads(out.read_text())
    assert built["built_from"]["splits"] == ["train", "valid", "test"]
    only_train = tmp_path / "train.json"
    assert main(["catalog", "build", str(only_train), "--splits", "train", "--format", "jsonl",
                 "--data", str(toy_folder)]) == 0
    train = json.loads(only_train.read_text())
    total = lambda c: sum(e.get("p", 0) for e in c["items"].values())  # noqa: E731
    assert total(built) > total(train) > 0
    assert main(["catalog", "build", str(out), "--format", "jsonl", "--data", str(toy_folder)]) == 2   # exists
    assert "--overwrite" in capsys.readouterr().err
