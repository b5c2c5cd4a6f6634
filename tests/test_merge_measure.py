"""Merges measured before they are published: kept = (merged - base) / (own - base)
on each parent's valid examples, in the card and printed by `adapterhub merge`; the default recipe;
staged adapters."""
import pytest
import torch

from adapterhub import merge as merge_mod
from adapterhub import train as train_mod
from adapterhub.config import TrainConfig
from adapterhub.errors import ConfigError

from conftest import publish_random, toy_data

FAST = dict(max_steps=8, eval_every=4, lr=5e-3, batch_size=8, patience=10)
DATA = {"toy": toy_data(scenario="toy"), "books": toy_data(n_users=18, seed=1, scenario="books")}


@pytest.fixture
def trained(hub, monkeypatch):
    """Two adapters trained on toy scenarios; their data 'loads' from memory as if from disk."""
    for name, data in DATA.items():
        hub.train(name, data, TrainConfig(**FAST), progress=False, force=True)
    monkeypatch.setattr(train_mod, "load_card_data", lambda card, path=None: DATA[card["scenario"]])
    return hub


def test_merge_records_kept_per_parent(trained):
    hub = trained
    # books with weight 0: the cat merge is exactly toy's adapter, so it keeps all of toy's gain
    adapter = hub.merge({"toy": 1.0, "books": 0.0}, method="cat", name="only-toy")
    kept = adapter.card["merge"]["kept"]
    toy_card = hub.registry.card("toy")
    valid = toy_card["metrics"]["valid"]
    assert kept["toy"]["own"] == pytest.approx(valid["adapter"]["auc"], abs=1e-4)
    assert kept["toy"]["base"] == pytest.approx(valid["base"]["auc"], abs=1e-4)
    assert kept["toy"]["merged"] == pytest.approx(kept["toy"]["own"], abs=2e-3)
    assert kept["toy"]["kept"] == pytest.approx(1.0, abs=0.05) and kept["toy"]["n"] == len(DATA["toy"].splits["valid"])
    # books contributes nothing: on books' valid examples (with books' facts) the merge is toy's adapter
    from adapterhub.evaluation import evaluate
    from adapterhub.recommend import facts_of
    from adapterhub.scoring import encode_examples, score_examples
    books = DATA["books"]
    encoded = encode_examples(hub, books, books.splits["valid"], facts_of(hub.registry, "books@v1"))
    toy_on_books = evaluate("pointwise", books.splits["valid"], score_examples(hub, hub.load("toy").key, encoded))["auc"]
    k = kept["books"]
    assert k["merged"] == pytest.approx(toy_on_books, abs=2e-3)
    assert k["kept"] == pytest.approx((k["merged"] - k["base"]) / (k["own"] - k["base"]), abs=1e-3)
    low = [s for s, v in kept.items() if v["kept"] < 0.5]
    assert [s in " ".join(adapter.card.get("warnings", [])) for s in low] == [True] * len(low)  # said plainly
    assert "measuring" not in " ".join(hub.resident())  # the staged copy is gone


def test_merge_default_recipe_and_unmeasurable_parents(hub):
    publish_random(hub, "a", seed=1)
    publish_random(hub, "b", seed=2)
    adapter = hub.merge(["a", "b"], name="ab")  # no method, no weights: the measured default ...
    # ... regmean, which needs the parents' train data: random adapters have none, so the fallback
    assert merge_mod.DEFAULT_METHOD == "regmean" and adapter.card["merge"]["method"] == merge_mod.FALLBACK_METHOD
    assert "not the default regmean" in adapter.card["merge"]["fallback"] and "a@v1" in adapter.card["merge"]["fallback"]
    want = 1.0 if merge_mod.DEFAULT_WEIGHTS == "sum" else 0.5
    assert [p["weight"] for p in adapter.card["parents"]] == [want, want]
    # random adapters have no data record or valid metrics: listed as not measured, with why
    assert all("skipped" in k for k in adapter.card["merge"]["kept"].values())
    assert "warnings" not in adapter.card
    assert "kept" not in hub.merge(["a", "b"], name="ab2", measure=False).card["merge"]


def test_staged_adapter_scores_like_the_published_one(hub):
    publish_random(hub, "a", seed=1)
    config, tensors, card, _ = hub.registry.load("a")
    prompt = [hub.encode("Hello there, do you like it?")]
    want = hub.score([("a", "Hello there, do you like it?")])
    with hub.staged("a-copy@x", config, tensors, card) as staged:
        assert staged.key in hub.resident()
        assert hub.score([(staged.key, "Hello there, do you like it?")]) == pytest.approx(want, abs=1e-6)
    assert "a-copy@x" not in hub.resident() and prompt
    with pytest.raises(ConfigError, match="taken"):
        with hub.staged("a", config, tensors, card):
            pass
    assert torch.equal(hub.registry.load("a")[1][next(iter(tensors))], tensors[next(iter(tensors))])


def test_cli_merge_prints_kept(trained, capsys):
    from adapterhub.cli import main
    assert main(["merge", "toy=1", "books=0", "--name", "m", "--method", "cat",
                 "--registry", str(trained.registry.root), "--base", "random:tiny", "--quant", "fp32", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "toy: kept 100% of toy@v1's gain" in out and "books: kept" in out
    card = trained.registry.card("m")
    assert ("WARNING: this merge keeps less than 50%" in out) == ("warnings" in card)
