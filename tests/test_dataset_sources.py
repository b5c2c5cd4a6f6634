"""The built-in sources' loaders (video, ecommerce, news, music) on tiny synthetic files in each
source's format (the fixtures in conftest.py): splits, labels, options and no leaks."""
from __future__ import annotations

import random

import pytest

from adapterhub.datasets import load
from adapterhub.errors import DataError
from test_datasets import SMALL, assert_no_sequential_leak, assert_valid_shapes


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
