"""Dataset loaders on tiny synthetic fixtures in the real formats (never the real data),
plus smoke tests on the real data marked real_data (skipped when ../shared/data is absent)."""
from __future__ import annotations

import json

import pytest

from adapterhub.datasets import ScenarioData, default_data_dir, load
from adapterhub.errors import DataError

SMALL = {"n_candidates": 5}


# ---------- shared checks ----------

def later_targets(data: ScenarioData) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for split in ("valid", "test"):
        for ex in data.splits[split]:
            if ex.label == 1:
                out.setdefault(ex.user, set()).add(ex.candidate)
    return out


def assert_no_sequential_leak(data: ScenarioData):
    targets = later_targets(data)
    for ex in data.splits["train"]:
        leaked = targets.get(ex.user, set()) & (set(ex.history) | {ex.candidate})
        assert not leaked, (ex, leaked)


def assert_valid_shapes(data: ScenarioData):
    assert set(data.splits) == {"train", "valid", "test"}
    for examples in data.splits.values():
        for ex in examples:
            assert ex.candidate in data.items and all(h in data.items for h in ex.history + ex.disliked)
            assert ex.label in (0, 1)
    for item in data.items.values():
        assert "\n" not in item.text and item.text


# ---------- across sources ----------

@pytest.mark.parametrize("source", ["video", "ecommerce", "news", "music"])
def test_same_seed_same_data_and_caps(source, video_dir, ecommerce_dir, news_dir, music_dir):
    path = {"video": video_dir, "ecommerce": ecommerce_dir, "news": news_dir, "music": music_dir[0]}[source]
    a, b = load(source, path, seed=3, **SMALL), load(source, path, seed=3, **SMALL)
    assert a.splits == b.splits and a.items == b.items and a.sha256 == b.sha256
    assert load(source, path, seed=4, **SMALL).sha256 != a.sha256
    capped = load(source, path, seed=3, max_examples={"train": 7, "valid": 6, "test": 6}, **SMALL)
    assert capped.sizes()["train"] <= 7
    for split in ("valid", "test"):   # whole groups only
        full = {}
        for ex in a.splits[split]:
            full.setdefault(ex.group, []).append(ex)
        kept = {}
        for ex in capped.splits[split]:
            kept.setdefault(ex.group, []).append(ex)
        assert all(kept[g] == full[g] for g in kept) if a.task != "pointwise" else len(capped.splits[split]) <= 6


def test_missing_data_and_unknown_source(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="--data PATH"):
        load("video", tmp_path / "nope")
    with pytest.raises(DataError, match="Did you mean 'music'"):
        load("musik", tmp_path)
    monkeypatch.setenv("ADAPTERHUB_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    with pytest.raises(DataError, match="video.*--data PATH"):
        load("video")   # tmp_path/video does not exist -> names the path tried and --data
    (tmp_path / "video").mkdir()
    with pytest.raises(DataError, match="u.item"):
        load("video")


# ---------- generic JSONL / CSV ----------

def write_generic(folder, fmt="jsonl", examples=None, items=None):
    folder.mkdir(exist_ok=True)
    items = items or [{"id": f"i{k}", "text": f"Thing {k}", "category": "c" + str(k % 2)} for k in range(6)]
    examples = examples or [
        {"user": "u1", "history": ["i0", "i1"], "candidate": "i2", "label": 1, "split": "train"},
        {"user": "u1", "history": ["i0", "i1"], "candidate": "i3", "label": 0, "split": "train"},
        {"user": "u2", "history": ["i4"], "candidate": "i5", "label": 1, "split": "valid"},
        {"user": "u3", "history": [], "candidate": "i1", "label": 0, "split": "test"},
    ]
    if fmt == "jsonl":
        (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
        (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in examples))
    else:
        (folder / "items.csv").write_text("id,text,category\n" + "".join(f"{r['id']},{r['text']},{r.get('category', '')}\n" for r in items))
        (folder / "examples.csv").write_text("user,history,candidate,label,split\n" + "".join(
            f"{r['user']},{'|'.join(r['history'])},{r['candidate']},{r['label']},{r['split']}\n" for r in examples))
    return folder


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_generic_roundtrip(tmp_path, fmt):
    data = load(fmt, write_generic(tmp_path / "podcasts", fmt))
    assert data.scenario == "podcasts" and data.task == "pointwise"
    assert data.sizes() == {"train": 2, "valid": 1, "test": 1}
    assert data.splits["train"][0].history == ("i0", "i1") and data.items["i1"].category == "c1"


def test_generic_task_from_groups_and_meta(tmp_path):
    ex = [{"user": "u", "history": ["i0"], "candidate": f"i{k}", "label": int(k == 1), "split": "train",
           "group": "g1"} for k in range(1, 4)]
    folder = write_generic(tmp_path / "d", examples=ex)
    assert load("jsonl", folder).task == "ranking"
    (folder / "meta.json").write_text('{"task": "impression", "scenario": "shop"}')
    data = load("jsonl", folder)
    assert data.task == "impression" and data.scenario == "shop"


BAD = {
    "unknown id": ({"candidate": "zz"}, "candidate", "unknown item id 'zz'"),
    "label": ({"label": 2}, "label", "0 or 1"),
    "missing user": ({"user": None}, "user", "missing 'user'"),
    "history type": ({"history": "i0"}, "history", "list of item ids"),
    "split": ({"split": "dev"}, "split", "train, valid, test"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_generic_errors_name_file_line_field(tmp_path, case):
    change, field, text = BAD[case]
    rows = [{"user": "u1", "history": ["i0"], "candidate": "i2", "label": 1, "split": "train"},
            {"user": "u1", "history": ["i0"], "candidate": "i3", "label": 0, "split": "train"}]
    rows[1] = {**rows[1], **change}
    folder = write_generic(tmp_path / "d", examples=rows)
    with pytest.raises(DataError, match=text) as err:
        load("jsonl", folder)
    assert err.value.line == 2 and err.value.field == field and err.value.file.endswith("examples.jsonl")


def test_generic_file_level_errors(tmp_path):
    folder = write_generic(tmp_path / "d")
    (folder / "items.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        load("jsonl", folder)
    folder = write_generic(tmp_path / "e")
    (folder / "examples.jsonl").write_bytes(b'{"user": "u"}\n{"user": "\xff"}\n')
    with pytest.raises(DataError, match="utf-8") as err:
        load("jsonl", folder)
    assert err.value.line == 2
    one_label = [{"user": "u", "history": [], "candidate": "i1", "label": 1, "split": "train"}]
    with pytest.raises(DataError, match="both labels") as err:
        load("jsonl", write_generic(tmp_path / "f", examples=one_label))
    assert err.value.field == "label"
    folder = write_generic(tmp_path / "g", "csv")
    (folder / "items.csv").write_text("id,name\ni0,x\n")
    with pytest.raises(DataError, match="missing 'text'") as err:
        load("csv", folder)
    assert err.value.line == 2
    with pytest.raises(DataError, match="items.jsonl"):
        load("jsonl", tmp_path / "g")   # csv files only


# ---------- the real data (skipped when absent) ----------

@pytest.fixture(scope="module")
def real_dir():
    if default_data_dir() is None:
        pytest.skip("no ../shared/data (set ADAPTERHUB_DATA)")
    return default_data_dir()


@pytest.mark.real_data
@pytest.mark.parametrize("source,minimum", [("video", {"train": 7000, "valid": 200, "test": 200}),
                                            ("ecommerce", {"train": 5000, "valid": 20000, "test": 50000}),
                                            ("news", {"train": 5000, "valid": 1000, "test": 1000}),
                                            ("music", {"train": 20000, "valid": 10000, "test": 10000})])
def test_real_data_loads(real_dir, source, minimum):
    if not (real_dir / source).exists():
        pytest.skip(f"no {real_dir / source}")
    data = load(source)
    sizes = data.sizes()
    assert all(sizes[s] >= n for s, n in minimum.items()), sizes
    assert_valid_shapes(data)
    if source in ("ecommerce", "music"):
        assert_no_sequential_leak(data)
    capped = load(source, max_examples={"train": 64, "valid": 64, "test": 64})
    assert 0 < capped.sizes()["train"] <= 64 and 0 < capped.sizes()["valid"] <= 64


def test_loader_options_reach_the_loader_and_unknown_ones_are_named(tmp_path):
    from adapterhub.datasets import load
    with pytest.raises(DataError, match="no data option.*full_trian.*it has: full_train, sampled_eval"):
        load("news", tmp_path, options={"full_trian": True})
    with pytest.raises(DataError, match="no data option.*full_train.*it has: valid_from_train, more_users"):
        load("video", tmp_path, options={"full_train": True})
    with pytest.raises(DataError, match="no data option.*full_train.*it has: none"):
        load("music", tmp_path, options={"full_train": True})


def test_load_records_its_arguments_so_the_card_can_load_the_data_again(news_dir):
    data = load("news", news_dir, seed=3, options={"full_train": True})
    assert data.load_args == {"seed": 3, "n_candidates": 20, "max_examples": None, "options": {"full_train": True}}
    args = data.load_args
    again = load("news", news_dir, seed=args["seed"], n_candidates=args["n_candidates"],
                 max_examples=args["max_examples"], options=args["options"])
    assert again.sha256 == data.sha256 != load("news", news_dir, seed=3).sha256
