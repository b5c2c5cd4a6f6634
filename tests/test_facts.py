import json
import math
import random

import pytest

from adapterhub import baselines as B
from adapterhub import facts as F
from adapterhub.datasets import Example, Item, ScenarioData
from adapterhub.errors import DataError

CATS = ["sports", "news", "tv", ""]
SUBS = ["nfl", "us", "", "celebrity"]
TAGS = [["rock", "indie"], ["pop"], ["rock"], [], ["jazz", "pop"]]


def toy(scenario: str, seed: int = 0) -> ScenarioData:
    """Shaped like the real loaders' output: ids, categories (genres/brands), extra statistics,
    full histories, dislikes (video), groups (news/ranking); some items only in valid/test."""
    rng = random.Random(seed)
    n_items = 40
    items = {}
    for k in range(n_items):
        cat = "|".join(rng.sample(["Action", "Crime", "Drama"], rng.randint(1, 2))) if scenario == "video" \
            else rng.choice(CATS)
        items[f"i{k}"] = Item(f"i{k}", f"Item number {k} ({1990 + k})", cat)
    ids = list(items)
    extra = {}
    if scenario == "video":
        extra = {"like_rate": {i: rng.random() for i in ids[:30]}, "global_like_rate": 0.55}
    if scenario == "news":
        extra = {"subcategory": {i: rng.choice(SUBS) for i in ids}}
    if scenario == "music":
        extra = {"tags": {i: rng.choice(TAGS) for i in ids}}

    def examples(split, n_users, pool):
        out = []
        for u in range(n_users):
            hist = tuple(rng.sample(pool, rng.randint(0, 14)))
            disliked = tuple(rng.sample(pool, rng.randint(0, 5))) if scenario == "video" else ()
            for c in rng.sample(ids, 4):
                out.append(Example(f"{split}{u}", hist, c, int(rng.random() < 0.4), disliked,
                                   group="" if scenario == "video" else f"{split}{u}"))
        return out
    splits = {"train": examples("train", 12, ids[:30]), "valid": examples("valid", 4, ids),
              "test": examples("test", 4, ids)}
    return ScenarioData(scenario, "toy", items, splits, "x", "pointwise" if scenario == "video" else "ranking", extra)


SCENARIOS = ["video", "news", "ecommerce", "music", "podcasts"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rules_from_facts_equal_baselines(scenario, monkeypatch, tmp_path):
    data = toy(scenario)
    facts = F.load(F.save(F.compute(data), tmp_path))   # through the file: JSON keeps the values
    monkeypatch.setattr(B, "JITTER", 0.0)
    methods = {k: v for k, v in B.BASELINES.get(scenario, {"most-popular": B.most_popular,
                                                            "category-overlap": B.category_overlap}).items()
               if k != "random"}
    for split in ("train", "valid", "test"):
        examples = data.splits[split]
        mine = [F.rule_scores(facts, scenario, ex.history, ex.disliked, ex.candidate) for ex in examples]
        for name, fn in methods.items():
            assert [m[name] for m in mine] == fn(data, examples, seed=0), (scenario, split, name)
        feats = F.feature_matrix(facts, scenario, examples)
        names = F.feature_names(scenario)
        assert all(len(row) == len(names) for row in feats)
        rule = F.RULES.get(scenario, "category-overlap")
        assert [row[0] for row in feats] == [math.log1p(m["most-popular"]) for m in mine]
        assert [row[1] for row in feats] == [m[rule] for m in mine]
        assert [row[2] for row in feats] == [float(m["most-popular"] == 0) for m in mine]   # is_new
    if scenario == "video":  # a fused model fit with other features (video@v2's) names them itself
        old = F.feature_matrix(facts, scenario, examples, ("log1p_popularity", "like_share_plus_rate", "like_rate"))
        assert [row[:2] for row in old] == [row[:2] for row in feats] and all(0 <= row[2] <= 1 for row in old)


def test_compute_uses_train_only_and_is_compact_json(tmp_path):
    data = toy("news")
    facts = F.compute(data)
    assert json.loads(json.dumps(facts)) == facts
    counts = B.popularity(data)
    for item_id, entry in facts["items"].items():
        assert entry["t"] == data.items[item_id].text
        assert entry.get("p", 0) == counts.get(item_id, 0)
        assert entry.get("s", "") == data.extra["subcategory"][item_id]
    # items 30..39 appear only in valid/test candidates: no popularity from there
    assert all("p" not in facts["items"][f"i{k}"] for k in range(30, 40) if f"i{k}" not in counts)
    ranked = sorted(facts["items"].values(), key=lambda e: -e.get("p", 0))
    assert ranked[0]["b"] <= 5 and all(b in F.BUCKETS for e in ranked if (b := e.get("b")))
    path = F.save(facts, tmp_path / "f.json")
    assert F.load(path) == facts and "_by_text" not in path.read_text()


def test_buckets_are_percentiles():
    items = {f"i{k}": Item(f"i{k}", f"t{k}") for k in range(100)}
    train = [Example(f"u{u}", (), f"i{k}", 1) for k in range(100) for u in range(k)]   # i_k: k users
    data = ScenarioData("generic", "toy", items, {"train": train, "valid": [], "test": []}, "x", "pointwise")
    entries = F.compute(data)["items"]
    assert entries["i99"]["b"] == 1 and entries["i95"]["b"] == 5 and entries["i94"]["b"] == 10
    assert entries["i90"]["b"] == 10 and entries["i89"]["b"] == 25 and entries["i50"]["b"] == 50
    assert "b" not in entries["i49"] and entries["i49"]["p"] == 49 and "p" not in entries["i0"]


def test_lookup_by_id_text_and_normalised_text():
    data = toy("video")
    facts = F.compute(data)
    assert F.lookup(facts, "i3") == "i3"
    assert F.lookup(facts, "Item number 3 (1993)") == "i3"
    assert F.lookup(facts, "  item NUMBER 3   (1993) ") == "i3"
    assert F.lookup(facts, "item number 3") == "i3"            # without the trailing "(1993)"
    assert F.lookup(facts, "Nothing like it") is None
    assert F.lookup(facts, None) is None and F.lookup(None, "i3") is None
    assert F.item(facts, "i3")["t"] == "Item number 3 (1993)"


def test_unknown_items_get_neutral_values():
    data = toy("video")
    facts = F.compute(data)
    # an unknown candidate: popularity 0 and the global like-rate, as the rule gives an unseen movie
    assert F.features(facts, "video", ["i1", "zzz"], ["i2"], "zzz") == [0.0, 2 / 3 + 0.55, 1.0]
    assert F.features(facts, "video", ["i1"], ["i2"], "zzz", names=("like_rate",)) == [0.55]
    assert F.rule_scores(facts, "news", ["zzz"], [], "nope") == {"most-popular": 0.0, "category-overlap": 0.0}
    assert F.features(None, "music", [], [], "x") == [0.0, 0.0, 1.0]   # no facts: every item is new


def test_overlap_counts():
    items = {"a": Item("a", "A", "sports"), "b": Item("b", "B", "sports"), "c": Item("c", "C", "tv")}
    train = [Example("u", ("a", "b"), "c", 1)]
    data = ScenarioData("news", "toy", items, {"train": train, "valid": [], "test": []}, "x", "impression",
                        {"subcategory": {"a": "nfl", "b": "nba", "c": "nfl"}})
    facts = F.compute(data)
    assert F.overlap_counts(facts, ["a", "b", "c"], "a") == {"category": 2, "subcategory": 2, "tags": 0, "genres": 2}
    assert F.rule_scores(facts, "news", ["a", "b", "c"], [], "a")["category-overlap"] == 3.0
    assert F.features(facts, "news", ["a", "b", "c"], [], "a") == [math.log1p(1), 3.0, 0.0]
    assert F.features(facts, "news", ["a", "b", "c"], [], "a", names=("subcategory_overlap",)) == [2.0]


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="no facts file"):
        F.load(tmp_path)
    (tmp_path / F.FACTS_FILE).write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        F.load(tmp_path)
    (tmp_path / F.FACTS_FILE).write_text('{"format": 99, "items": {}}')
    with pytest.raises(DataError, match="newer"):
        F.load(tmp_path)


@pytest.mark.real_data
@pytest.mark.parametrize("scenario", ["video", "news", "ecommerce", "music"])
def test_real_facts_equal_baselines_and_stay_small(scenario, monkeypatch, tmp_path):
    from adapterhub.datasets import default_data_dir, load
    if default_data_dir() is None:
        pytest.skip("no ../shared/data (set ADAPTERHUB_DATA)")
    data = load(scenario)
    path = F.save(F.compute(data), tmp_path)
    assert path.stat().st_size < 2e6   # music holds all 17,632 artists of artists.dat since facts format 2
    facts = F.load(path)
    monkeypatch.setattr(B, "JITTER", 0.0)
    examples = data.splits["test"][:3000]
    mine = [F.rule_scores(facts, scenario, ex.history, ex.disliked, ex.candidate) for ex in examples]
    for name, fn in B.BASELINES[scenario].items():
        if name != "random":
            assert [m[name] for m in mine] == fn(data, examples, seed=0), name


def test_facts_read_before_come_back_without_waiting_behind_another_versions_read(monkeypatch, tmp_path):
    """A server's event loop asks for the facts of versions it ranked before; another version's first
    read (from the disk, in a worker thread) holds the lock meanwhile, and must not hold the loop up."""
    import threading
    from types import SimpleNamespace
    from adapterhub import recommend
    registry = SimpleNamespace(root=tmp_path)
    monkeypatch.setitem(recommend._FACTS, (str(tmp_path), "news@v1", None), {"format": 2})
    got = []
    with recommend._LOCK:   # another version's facts being read
        t = threading.Thread(target=lambda: got.append(recommend.facts_of(registry, "news@v1")), daemon=True)
        t.start()
        t.join(5)
    assert got == [{"format": 2}]
