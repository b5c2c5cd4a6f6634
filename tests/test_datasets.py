"""Dataset loaders on tiny synthetic fixtures in the real formats (never the real data),
plus smoke tests on the real data marked real_data (skipped when ../shared/data is absent)."""
from __future__ import annotations

import json
import random

import pytest

from adapterhub.datasets import ScenarioData, default_data_dir, load
from adapterhub.errors import DataError

GENRE_FLAGS = 19


# ---------- fixtures: synthetic files in each source's format ----------

@pytest.fixture
def video_dir(tmp_path):
    ml, tr = tmp_path / "movielens-100k", tmp_path / "tallrec-movie"
    ml.mkdir(), tr.mkdir()
    lines = []
    for i in range(1, 41):
        flags = ["0"] * GENRE_FLAGS
        flags[1 + i % 5] = "1"
        lines.append(f"{i}|Film {i} Caf\xe9 (1990)|01-Jan-1990||http://x|" + "|".join(flags))
    (ml / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    rng = random.Random(1)
    ratings = [f"{u}\t{i}\t{rng.randint(1, 5)}\t{880000000 + u * 100 + i}"
               for u in range(1, 31) for i in rng.sample(range(1, 41), 15)]
    (ml / "u.data").write_text("\n".join(ratings) + "\n")

    def rows(users):
        out = ["user_id,history_movie_id,history_rating,movie_id,rating,timestamp"]
        for u in users:
            for j in range(6):
                hist = [str(1 + (u + j + k) % 40) for k in range(10)]
                rates = [rng.randint(0, 1) for _ in hist]
                out.append(f'{u},"{hist}","{rates}",{1 + (u * 7 + j) % 40},{rng.randint(0, 1)},{880000000 + j}')
        return "\n".join(out) + "\n"
    (tr / "train.csv").write_text(rows(range(1, 11)))
    (tr / "valid.csv").write_text(rows(range(11, 31)))
    return tmp_path


def user_sequences(n_users, n_items, length, seed):
    rng = random.Random(seed)
    return {f"A{u}": rng.sample(range(n_items), length) for u in range(n_users)}


@pytest.fixture
def ecommerce_dir(tmp_path):
    root = tmp_path / "amazon18-industrial"
    (root / "valid").mkdir(parents=True), (root / "test").mkdir()
    items = {str(i): {"title": f"Widget {i} " + "long " * 30, "description": "", "brand": f"B{i % 4}",
                      "categories": ""} for i in range(80)}
    (root / "Industrial_and_Scientific.item.json").write_text(json.dumps(items))
    seqs = user_sequences(16, 80, 9, seed=2)
    seqs["A0"][7] = seqs["A0"][2]   # a repeat purchase: a test target also seen earlier
    header = "user_id,history_item_title,item_title,history_item_id,item_id,history_item_sid,item_sid"
    valid, test = [header], [header]
    for user, seq in seqs.items():   # positions 3..6 are valid rows, 7..8 test rows
        for pos in range(3, 9):
            hist = seq[max(0, pos - 10):pos]
            row = f'{user},"[]",x,"{hist}",{seq[pos]},"[]",x'
            (valid if pos < 7 else test).append(row)
    name = "Industrial_and_Scientific_5_2016-10-2018-11.csv"
    (root / "valid" / name).write_text("\n".join(valid) + "\n")
    (root / "test" / name).write_text("\n".join(test) + "\n")
    return tmp_path


@pytest.fixture
def news_dir(tmp_path):
    root = tmp_path / "mind-recprompt"
    (root / "test_group" / "variant1").mkdir(parents=True)
    cols = ["news_id", "title", "category", "subvert", "abstract"]
    header = "impression_id,history,candidate,label," + ",".join(
        f"{side}_{c}" for side in ("history", "candidate") for c in cols)
    rng = random.Random(3)
    rows = [header]

    def field(values):
        return '"' + "\n".join(values).replace('"', '""') + '"'
    for imp in range(60):
        hist, cands = rng.sample(range(100), 4), rng.sample(range(100), 6)
        side = {}
        for name, ids, p in (("history", hist, "H"), ("candidate", cands, "C")):
            side[name] = [[f"N{i}" for i in ids], [f'News "{i}", story' for i in ids],
                          [f"cat{i % 3}" for i in ids], [f"sub{i % 6}" for i in ids], ["abs"] * len(ids)]
            side[name + "_lines"] = [f"{p}{k + 1}: News \"{i}\", story" for k, i in enumerate(ids)]
        label = "C2" if imp % 2 else "\"C1,C4\""
        rows.append(",".join([str(imp), field(side["history_lines"]), field(side["candidate_lines"]), label]
                             + [field(v) for v in side["history"]] + [field(v) for v in side["candidate"]]))
    text = "\n".join(rows) + "\n"
    (root / "test_group" / "variant1" / "a.csv").write_text(text)
    (root / "test_group" / "variant1" / "dup.csv").write_text(text)   # same impressions again
    (root / "test_group" / "variant1" / "empty.csv").write_text(header + "\n")
    # 900 falls in the train bucket, 902 in the test bucket (sampled impressions: train only)
    (root / "sampled_100.csv").write_text(
        'impression_id,history,candidate,label\n900,"H1: News ""5"", story","C1: News ""7"", story\nC2: Unseen headline",C2\n'
        '902,"H1: News ""5"", story","C1: News ""7"", story\nC2: Other headline",C1\n')
    return tmp_path


@pytest.fixture
def music_dir(tmp_path):
    root = tmp_path / "hetrec2011-lastfm-2k"
    root.mkdir()
    (root / "artists.dat").write_text("id\tname\turl\tpictureURL\n" + "".join(f"{i}\tArtist {i}\tu\tp\n" for i in range(1, 61)))
    (root / "tags.dat").write_bytes(("tagID\ttagValue\n" + "".join(f"{t}\ttag{t} m\xe9tal\n" for t in range(1, 9))).encode("latin-1"))
    seqs = {u: random.Random(u).sample(range(1, 61), 8 if u < 12 else 3) for u in range(2, 14)}
    listened, tagged = ["userID\tartistID\tweight"], ["userID\tartistID\ttagID\tday\tmonth\tyear"]
    for u, seq in seqs.items():
        for pos, a in enumerate(seq):
            listened.append(f"{u}\t{a}\t{100 - pos}")
            tagged.append(f"{u}\t{a}\t{1 + a % 8}\t{1 + pos}\t3\t2009")
            tagged.append(f"{u}\t{a}\t{1 + (a + 1) % 8}\t{1 + pos}\t4\t2009")   # later tag: ignored for order
    tagged.append("2\t59\t1\t1\t1\t2010")   # tagged but never listened: dropped
    (root / "user_artists.dat").write_text("\n".join(listened) + "\n")
    (root / "user_taggedartists.dat").write_text("\n".join(tagged) + "\n")
    return tmp_path, seqs


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


# ---------- per source ----------

def test_video_splits_by_user_and_like_rate_excludes_heldout(video_dir):
    data = load("video", video_dir, seed=0)
    assert_valid_shapes(data)
    assert data.task == "pointwise" and data.items["1"].text == "Film 1 Caf\xe9 (1990)"
    users = {s: {ex.user for ex in data.splits[s]} for s in data.splits}
    assert users["valid"] and users["test"]
    assert not users["train"] & users["valid"] and not users["train"] & users["test"]
    assert not users["valid"] & users["test"]
    ex = data.splits["train"][0]
    assert len(ex.history) + len(ex.disliked) == 10
    # like_rate must only count ratings of non-held-out users (valid/test users are 11..30)
    lines = (video_dir / "movielens-100k" / "u.data").read_text().split("\n")
    kept = [ln.split("\t") for ln in lines if ln and int(ln.split("\t")[0]) < 11]
    item = kept[0][1]
    rates = [int(r) > 3 for u, i, r, t in kept if i == item]
    assert data.extra["like_rate"][item] == pytest.approx(sum(rates) / len(rates))
    assert data.extra["like_count"][item] == [sum(rates), len(rates)]   # facts.OwnLabelOut's counts


def test_video_valid_from_train_moves_whole_users_and_keeps_test(video_dir):
    base = load("video", video_dir, seed=0)
    more = load("video", video_dir, seed=0, options={"valid_from_train": 0.5})
    users = lambda d, s: {ex.user for ex in d.splits[s]}  # noqa: E731
    moved = users(base, "train") - users(more, "train")
    assert moved and users(more, "valid") == users(base, "valid") | moved       # whole users move to valid
    assert more.splits["test"] == base.splits["test"]                           # test is the same
    assert len(more.splits["train"]) + len(more.splits["valid"]) == len(base.splits["train"]) + len(base.splits["valid"])
    assert not users(more, "train") & users(more, "valid")
    assert more.sha256 != base.sha256 and more.load_args["options"] == {"valid_from_train": 0.5}
    # the moved users' ratings no longer feed the like-rates (no valid label leaks into the facts)
    assert more.extra["like_rate"] != base.extra["like_rate"]
    with pytest.raises(DataError, match="valid_from_train"):
        load("video", video_dir, options={"valid_from_train": 1.5})


def test_video_more_users_builds_tallrec_rows_from_u_data(video_dir):
    """more_users=true: u.data users that TALLRec's files lack become TALLRec-style rows, split by
    md5(user) % 10 (1 test, 2 valid, else train); their valid/test ratings leave the like-rates."""
    from adapterhub.datasets.common import md5_int
    udata = video_dir / "movielens-100k" / "u.data"
    rng = random.Random(5)
    extra = []
    for u in range(100, 160):   # 60 users TALLRec's files lack, 14 ratings each, shuffled in the file
        extra += [(u, i, rng.randint(1, 5), 880000000 + rng.randrange(10**6)) for i in rng.sample(range(1, 41), 14)]
    rng.shuffle(extra)
    udata.write_text(udata.read_text() + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in extra))
    base = load("video", video_dir, seed=0)
    more = load("video", video_dir, seed=0, options={"more_users": True})
    part = {str(u): {1: "test", 2: "valid"}.get(md5_int(str(u)) % 10, "train") for u in range(100, 160)}
    assert {"test", "valid", "train"} <= set(part.values())
    for split in ("train", "valid", "test"):
        added = more.splits[split][len(base.splits[split]):]
        assert more.splits[split][:len(base.splits[split])] == base.splits[split]   # TALLRec's rows first, unchanged
        assert {ex.user for ex in added} == {u for u, s in part.items() if s == split}
        assert len(added) == 4 * len({ex.user for ex in added})                       # 14 ratings: positions 10..13
    # one user's rows by hand: sorted by time, the previous 10 as history, label rating > 3
    user = next(u for u, s in part.items() if s == "test")
    seq = sorted((t, i, r) for u, i, r, t in extra if str(u) == user)
    rows = [ex for ex in more.splits["test"] if ex.user == user]
    for p, ex in zip(range(10, 14), rows):
        window = seq[p - 10:p]
        assert ex.candidate == str(seq[p][1]) and ex.label == int(seq[p][2] > 3)
        assert ex.history == tuple(str(i) for _, i, r in window if r > 3)
        assert ex.disliked == tuple(str(i) for _, i, r in window if r <= 3)
    # like-rates: the train users' ratings count, the new valid/test users' do not
    kept = [(str(u), str(i), r) for u, i, r, t in extra if part[str(u)] == "train"]
    kept += [(ln.split("\t")[0], ln.split("\t")[1], int(ln.split("\t")[2]))
             for ln in udata.read_text().split("\n")[:450] if ln and int(ln.split("\t")[0]) < 11]
    item = kept[0][1]
    rates = [r > 3 for u, i, r in kept if i == item]
    assert more.extra["like_rate"][item] == pytest.approx(sum(rates) / len(rates))
    assert more.sha256 != base.sha256 and more.load_args["options"] == {"more_users": True}


def test_ecommerce_groups_and_no_leak(ecommerce_dir):
    data = load("amazon", ecommerce_dir, seed=0, **SMALL)
    assert_valid_shapes(data)
    assert data.task == "ranking" and len(data.items["0"].text.split()) <= 21
    assert data.items["5"].category == "B1"
    for split in ("valid", "test"):
        groups: dict[str, list] = {}
        for ex in data.splits[split]:
            groups.setdefault(ex.group, []).append(ex)
        for members in groups.values():
            assert len(members) == 5 and sum(ex.label for ex in members) == 1
            assert len({ex.candidate for ex in members}) == 5
    train_users = {ex.user for ex in data.splits["train"]}
    valid_users = {ex.user for ex in data.splits["valid"]}
    assert train_users and valid_users and not train_users & valid_users
    assert_no_sequential_leak(data)


def test_news_impressions_dedup_and_split(news_dir):
    data = load("mind", news_dir, seed=0)
    assert_valid_shapes(data)
    assert data.task == "impression"
    groups = {s: {ex.group for ex in data.splits[s]} for s in data.splits}
    assert sum(len(g) for g in groups.values()) == 61        # 60 deduplicated + 1 sampled
    assert not groups["train"] & groups["valid"] and not groups["train"] & groups["test"]
    assert not groups["valid"] & groups["test"]
    assert data.items["N7"].category == "cat1" and data.extra["subcategory"]["N7"] == "sub1"
    assert data.items["N7"].text == 'News "7", story'
    sampled = [ex for ex in data.splits["train"] if ex.group == "imp900"]
    # a known headline gets its news id (and category), an unknown one a hash id
    assert [ex.candidate for ex in sampled][0] == "N7" and sampled[1].candidate.startswith("h")
    assert sampled[0].history == ("N5",) and [ex.label for ex in sampled] == [0, 1]
    assert "imp902" not in {ex.group for s in data.splits.values() for ex in s}
    for g in groups["train"]:
        members = [ex for ex in data.splits["train"] if ex.group == g]
        assert sum(1 - ex.label for ex in members) <= 4


def test_news_labels_name_the_clicked_candidates(news_dir):
    """Each label 'C2' / 'C1,C4' marks exactly the candidates on those C-lines, in every split."""
    import csv

    from adapterhub.datasets import mind
    rows = list(csv.DictReader(open(news_dir / "mind-recprompt" / "test_group" / "variant1" / "a.csv", newline="")))
    want = {}
    for row in rows:
        lines = row["candidate"].split("\n")
        clicked = {lines[int(c.strip()[1:]) - 1].split(": ", 1)[1] for c in row["label"].split(",")}
        want[f"imp{row['impression_id']}"] = clicked
    for full in (False, True):
        data = mind.load(news_dir, full_train=full)
        for ex in (ex for split in data.splits.values() for ex in split if ex.group in want):
            assert ex.label == int(data.items[ex.candidate].text in want[ex.group]), ex
        # valid and test keep every candidate of an impression: all its clicks are there
        for split in ("valid", "test"):
            for g in {ex.group for ex in data.splits[split]}:
                assert {data.items[ex.candidate].text for ex in data.splits[split] if ex.group == g and ex.label} \
                    == want[g]


def test_news_full_train_and_sampled_eval(news_dir):
    from adapterhub.datasets import mind
    base = load("mind", news_dir, seed=0)
    full = mind.load(news_dir, full_train=True)
    assert base.sha256 == mind.load(news_dir).sha256 != full.sha256
    assert full.splits["valid"] == base.splits["valid"] and full.splits["test"] == base.splits["test"]
    groups = {ex.group for ex in full.splits["train"]}
    assert groups == {ex.group for ex in base.splits["train"]} | {"imp902"}   # nothing read is dropped
    assert all(sum(ex.group == g for ex in full.splits["train"]) in (2, 6) for g in groups)  # every candidate
    assert len(full.splits["train"]) > len(base.splits["train"])
    natural = mind.load(news_dir, full_train=True, sampled_eval=True)
    assert "imp902" in {ex.group for ex in natural.splits["test"]}
    assert "imp902" not in {ex.group for ex in natural.splits["train"]}


def test_news_candidate_lines_must_match_ids(news_dir):
    f = news_dir / "mind-recprompt" / "test_group" / "variant1" / "a.csv"
    text = f.read_text()
    f.write_text(text.replace('C6: News', 'C6 News', 1))   # one C-line lost its number: labels would shift
    with pytest.raises(DataError, match="'C<n>: ' lines but candidate_news_id has 6 ids"):
        load("mind", news_dir, seed=0)


def test_music_leave_last_out(music_dir):
    path, seqs = music_dir
    data = load("lastfm", path, seed=0, **SMALL)
    assert_valid_shapes(data)
    assert {ex.user for ex in data.splits["test"]} == {str(u) for u in range(2, 12)}   # 3-artist users dropped
    for u in range(2, 12):
        seq = [str(a) for a in seqs[u]]   # tag dates follow the sampled order
        test_pos = [ex for ex in data.splits["test"] if ex.user == str(u) and ex.label == 1]
        valid_pos = [ex for ex in data.splits["valid"] if ex.user == str(u) and ex.label == 1]
        assert test_pos[0].candidate == seq[-1] and test_pos[0].history == tuple(seq[:-1])
        assert valid_pos[0].candidate == seq[-2]
    assert "59" not in {ex.candidate for ex in data.splits["train"] if ex.user == "2" and ex.label}
    assert data.items["1"].text.startswith("Artist 1 (tags: ")
    assert_no_sequential_leak(data)


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
