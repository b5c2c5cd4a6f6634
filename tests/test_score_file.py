"""Hub.score_file / `adapterhub score-file`: the batch job over a file of users (adapterhub.batch)."""
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapterhub.batch.readers import read_rows, scan
from adapterhub.cli import main
from adapterhub.errors import ConfigError, DataError
from conftest import publish_random

ITEMS = [f"item {j} of the toy catalog" for j in range(30)]


def make_rows(n: int, seed: int = 0, adapters=("news", "music")) -> list[dict]:
    """Synthetic users: a history, 3-12 candidates, an adapter each (mixed), some with their own k."""
    rng = random.Random(seed)
    rows = []
    for u in range(n):
        row = {"user": f"u{u}", "history": rng.sample(ITEMS, rng.randint(0, 5)),
               "candidates": rng.sample(ITEMS, rng.randint(3, 12)), "adapter": adapters[u % len(adapters)]}
        if u % 5 == 0:
            row["k"] = 2
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_out(folder: Path) -> list[dict]:
    """Every output row, parts in order (JSONL or Parquet)."""
    out = []
    for p in sorted(folder.glob("part-*")):
        if p.suffix == ".jsonl":
            out += [json.loads(line) for line in p.read_text().splitlines()]
        else:
            import pyarrow.parquet as pq
            out += pq.read_table(p).to_pylist()
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny base's forwards are far too small for two threads; on a shared machine a second
    spinning thread only slows them (this file: 22 s with two threads, 11 s with one, on the shared 2 cores)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def two(hub):
    publish_random(hub, "news", seed=0)
    publish_random(hub, "music", seed=1)
    return hub


def test_each_row_ranks_as_recommend_does(two, tmp_path):
    """A mixed file (two adapters, several rows per forward): each row's scores are hub.recommend's for
    that row alone within 2e-3, its k best by them (up to that tolerance: the toy items tie often),
    rows in file order, each with the adapter version it ran with."""
    rows = make_rows(16)
    summary = two.score_file(write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out", k=4, part_rows=6,
                             batch_tokens=512)
    assert (summary["rows"], summary["scored"], summary["bad"], summary["parts"]) == (16, 16, 0, 3)
    out = read_out(tmp_path / "out")
    assert [o["line"] for o in out] == list(range(1, 17)) and [o["user"] for o in out] == [r["user"] for r in rows]
    worst = 0.0
    for row, o in zip(rows, out):
        alone = dict(two.recommend(row["adapter"], row["history"], row["candidates"], k=len(row["candidates"])))
        assert o["adapter"] == f"{row['adapter']}@v1" and len(o["ranked"]) == min(row.get("k", 4), len(alone))
        mine = [c["score"] for c in o["ranked"]]
        assert mine == sorted(mine, reverse=True)
        worst = max(worst, max(abs(c["score"] - alone[c["item"]]) for c in o["ranked"]))
        left_out = [s for item, s in alone.items() if item not in {c["item"] for c in o["ranked"]}]
        assert not left_out or min(mine) >= max(left_out) - 2e-3  # its top k, up to the tolerance
        assert all(c["score"] == c["raw"] for c in o["ranked"])  # no facts, no blend: fused = raw
    assert worst <= 2e-3
    assert (tmp_path / "out" / "_SUCCESS").exists() and not (tmp_path / "out" / "_bad_rows.jsonl").exists()


def test_jsonl_csv_and_parquet_give_the_same_rows(two, tmp_path):
    import csv
    rows = make_rows(12, seed=1)
    write_jsonl(tmp_path / "in.jsonl", rows)
    with open(tmp_path / "in.csv", "w", newline="") as fh:  # lists two ways: JSON lists and '|' text
        w = csv.writer(fh)
        w.writerow(["user", "history", "candidates", "adapter", "k"])
        for i, r in enumerate(rows):
            cands = json.dumps(r["candidates"]) if i % 2 else "|".join(r["candidates"])
            w.writerow([r["user"], "|".join(r["history"]), cands, r["adapter"], r.get("k", "")])
    outs = {}
    for fmt in ("jsonl", "csv"):
        two.score_file(tmp_path / f"in.{fmt}", tmp_path / f"out-{fmt}", k=3, part_rows=5)
        outs[fmt] = [{k: v for k, v in o.items() if k != "line"} for o in read_out(tmp_path / f"out-{fmt}")]
    assert outs["jsonl"] == outs["csv"] and len(outs["jsonl"]) == 12
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([{**r, "k": r.get("k")} for r in rows]), tmp_path / "in.parquet",
                   row_group_size=3)  # parts cross row groups
    two.score_file(tmp_path / "in.parquet", tmp_path / "out-pq", k=3, part_rows=5, out_format="parquet")
    got = [{k: v for k, v in o.items() if k != "line"} for o in read_out(tmp_path / "out-pq")]
    assert got == outs["jsonl"]


BAD = {
    3: "{not json",
    5: {"user": "u5", "history": [], "candidates": []},                                  # empty candidates
    6: {"user": "u6", "history": [], "candidate": ["a"], "adapter": "news"},             # misspelt field
    8: {"user": "u8", "history": [], "candidates": ["a", "b"], "adapter": "newz"},       # unknown adapter
    9: {"user": "u9", "history": "[1, 2", "candidates": ["a"], "adapter": "news"},       # broken list text
    11: {"user": "u11", "history": [], "candidates": ["a"], "adapter": "news", "k": 0},  # k < 1
    12: [1, 2, 3],
}


def _with_bad_rows(path: Path) -> tuple[Path, list[int]]:
    rows = make_rows(14, seed=2)
    lines = [BAD.get(i, r) for i, r in enumerate(rows, 1)]
    lines.insert(1, "")  # a blank line is no row; the lines after it keep their own numbers
    write_jsonl(path, lines)
    bad_lines = [i + (i > 1) for i in BAD]
    return path, bad_lines


def test_a_bad_row_stops_the_job_naming_its_line(two, tmp_path):
    src, bad_lines = _with_bad_rows(tmp_path / "in.jsonl")
    with pytest.raises(DataError) as e:
        two.score_file(src, tmp_path / "out", adapter="music", part_rows=4)
    msg = str(e.value)
    assert msg.startswith(f"{src}, line {bad_lines[0]}: not valid JSON") and "--skip-bad" in msg
    # the bad row is in the first part (rows 1-4: lines 1, 3, 4, 5), so no part was committed
    assert not list((tmp_path / "out").glob("part-*"))


def test_skip_bad_sets_rows_aside_once(two, tmp_path):
    src, bad_lines = _with_bad_rows(tmp_path / "in.jsonl")
    summary = two.score_file(src, tmp_path / "out", adapter="music", part_rows=4, skip_bad=True)
    assert (summary["rows"], summary["scored"], summary["bad"]) == (14, 14 - len(BAD), len(BAD))
    bad = [json.loads(line) for line in (tmp_path / "out" / "_bad_rows.jsonl").read_text().splitlines()]
    assert [b["line"] for b in bad] == bad_lines
    errors = {b["line"]: b["error"] for b in bad}
    line = dict(zip(BAD, bad_lines))
    assert "not valid JSON" in errors[line[3]] and bad[0]["row"] == "{not json"
    assert errors[line[5]] == "field 'candidates': is empty: give at least one item"
    assert "did you mean 'candidates'" in errors[line[6]]
    assert "adapter 'newz' not found" in errors[line[8]] and "Did you mean 'news'" in errors[line[8]]
    assert "field 'history'" in errors[line[9]] and "not a JSON list" in errors[line[9]]
    assert "field 'k'" in errors[line[11]] and "JSON list, not an object" in errors[line[12]]
    good = read_out(tmp_path / "out")
    assert sorted([o["line"] for o in good] + bad_lines) == [1] + list(range(3, 16))  # line 2 is blank
    assert not list((tmp_path / "out").glob(".bad-*"))


def test_resume_finishes_without_redoing_parts(two, tmp_path, monkeypatch):
    """A job that dies after 2 of 4 parts resumes with the other 2; its output equals a clean run's."""
    from adapterhub.batch import parts
    src = write_jsonl(tmp_path / "in.jsonl", make_rows(8, seed=3))
    two.score_file(src, tmp_path / "clean", part_rows=2)
    commits, real = [], parts.Output.commit

    def dying(self, index, *a):
        if len(commits) == 2:
            raise KeyboardInterrupt  # as a kill would, between two parts
        commits.append(index)
        return real(self, index, *a)

    monkeypatch.setattr(parts.Output, "commit", dying)
    with pytest.raises(KeyboardInterrupt):
        two.score_file(src, tmp_path / "out", part_rows=2)
    monkeypatch.setattr(parts.Output, "commit", lambda self, index, *a: (commits.append(index), real(self, index, *a)))
    summary = two.score_file(src, tmp_path / "out", part_rows=2)
    assert commits == [0, 1, 2, 3] and summary["resumed_parts"] == 2
    assert read_out(tmp_path / "out") == read_out(tmp_path / "clean")
    again = two.score_file(src, tmp_path / "out", part_rows=2)  # a finished job: nothing to do
    assert again["already_complete"] and commits == [0, 1, 2, 3]


def test_another_job_in_the_same_folder_is_refused(two, tmp_path):
    rows = make_rows(6)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    two.score_file(src, tmp_path / "out", k=3)
    with pytest.raises(ConfigError, match=r"another job \(k: 3 -> 5\).*--overwrite"):
        two.score_file(src, tmp_path / "out", k=5)
    two.score_file(src, tmp_path / "out", k=5, overwrite=True)
    out = read_out(tmp_path / "out")
    assert [len(o["ranked"]) for o in out] == [min(r.get("k", 5), len(r["candidates"])) for r in rows]
    from filelock import FileLock
    with FileLock(str(tmp_path / "out" / ".lock")):  # a job still writing there
        with pytest.raises(ConfigError, match="another score-file job is writing"):
            two.score_file(src, tmp_path / "out", k=5)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a score-file job"):
        two.score_file(src, tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_scan_parts_and_lines(tmp_path):
    """Parts start where their first record starts; a CSV record spanning lines keeps its first line."""
    p = tmp_path / "in.csv"
    p.write_text('user,history,candidates\nu0,a|b,c\n\nu1,"x\ny",c\nu2,,"[""c"", ""d""]"\nu3,a,b\n')
    sc = scan(p, "csv", 2)
    assert sc.rows == 4 and [(q.first, q.rows, q.line) for q in sc.parts] == [(0, 2, 2), (2, 2, 6)]
    rows = list(read_rows(sc))
    assert [r.line for r in rows] == [2, 4, 6, 7] and rows[1].data["history"] == "x\ny"
    assert rows[2].data["candidates"] == '["c", "d"]' and list(read_rows(sc, sc.parts[1:]))[0].data["user"] == "u2"


def test_progress_bar_moves_with_each_forward(two, tmp_path, monkeypatch):
    """The bar counts rows (total known from the scan, resumed parts as its start), moves as each forward
    finishes, not only when a part is committed, and ends at the exact count."""
    from adapterhub.batch import parts
    shown = []

    class Bar:
        disable = False

        def __init__(self, total, initial, **kw):
            self.total, self.n = total, initial
            shown.append(("start", total, initial))

        def update(self, n):
            self.n += n
            shown.append(self.n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr("tqdm.auto.tqdm", Bar)
    src = write_jsonl(tmp_path / "in.jsonl", make_rows(12, seed=6))
    commits, real = [], parts.Output.commit
    monkeypatch.setattr(parts.Output, "commit", lambda self, *a: (commits.append(len(shown)), real(self, *a)))
    two.score_file(src, tmp_path / "out", part_rows=6, batch_tokens=128, progress=True)
    assert shown[0] == ("start", 12, 0) and shown[-1] == 12 and shown[1:] == sorted(shown[1:])
    assert any(0 < n < 6 for n in shown[1:commits[0]])  # it moved inside the first part, before its commit
    shown.clear()
    two.score_file(src, tmp_path / "out", part_rows=6, progress=True, overwrite=False)  # done: no bar
    assert shown == []


def test_parquet_parts_are_read_forward(tmp_path, monkeypatch):
    """One big row group: parts read in order open the file once and read it forward (a part alone
    would decode its row group from the start: quadratic in the file); parts out of order are right too."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    from adapterhub.batch import readers
    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 8)
    rows = [{"user": f"u{i}", "history": ["a"], "candidates": ["b", "c"]} for i in range(50)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    assert pq.ParquetFile(tmp_path / "in.parquet").metadata.num_row_groups == 1
    sc = scan(tmp_path / "in.parquet", "parquet", 7)
    opened, real = [], readers.PartReader._open
    monkeypatch.setattr(readers.PartReader, "_open", lambda self, first: (opened.append(first), real(self, first))[1])
    got = list(read_rows(sc))
    assert [r.data["user"] for r in got] == [r["user"] for r in rows] and [r.line for r in got] == list(range(1, 51))
    assert opened == [0]
    reader = readers.PartReader(sc)
    assert [r.data["user"] for r in reader.rows(sc.parts[5])] == [f"u{i}" for i in range(35, 42)]
    assert [r.index for r in reader.rows(sc.parts[1])] == list(range(7, 14))  # backwards: opened again
    assert [r.index for r in reader.rows(sc.parts[7])] == [49] and opened == [0, 35, 7]
    shorter = dataclasses.replace(sc.parts[7], rows=3)  # the file lost rows since the scan
    with pytest.raises(DataError, match="ended before row 51"):
        list(readers.PartReader(sc).rows(shorter))


def test_cli_score_file(two, tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", make_rows(8))
    reg = str(two.registry.root)
    args = ["score-file", str(src), str(tmp_path / "out"), "--registry", reg, "--base", "random:tiny",
            "--quant", "fp32", "-k", "3", "--no-progress"]
    assert main(args) == 0
    assert "scored 8 of 8 rows" in capsys.readouterr().out and len(read_out(tmp_path / "out")) == 8
    assert main(args) == 0 and "already complete" in capsys.readouterr().out
    assert main(args[:3] + ["--adapter", "newz"] + args[3:]) == 2
    assert "adapter 'newz' not found" in capsys.readouterr().err
    assert main(["score-file", str(tmp_path / "missing.jsonl"), str(tmp_path / "o2"), "--registry", reg]) == 2
    assert "no such input file" in capsys.readouterr().err


# ------------------------------------------------------------------ kill -9 and restart
def _cli(reg: str, src: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "adapterhub", "score-file", str(src), str(out), "--registry", reg,
            "--base", "random:tiny", "--quant", "fp32", "--part-rows", "3", "--batch-tokens", "256", "-k", "5",
            "--no-progress", "--skip-bad"]


def _kill_and_finish(reg: str, src: Path, out: Path, delays_s) -> int:
    """For each delay: start the job and kill -9 it that long after a new part appeared (at once for a
    negative delay); then run the same command to the end. -> how many kills landed before the end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    early = 0
    for delay in delays_s:
        before = len(list(out.glob("part-*")))
        proc = subprocess.Popen(_cli(reg, src, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while (delay >= 0 and len(list(out.glob("part-*"))) <= before and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.01)
        time.sleep(max(delay, 0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        early += not (out / "_SUCCESS").exists()
    done = subprocess.run(_cli(reg, src, out), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return early


def _check_once(out: Path, clean: list[dict], n_rows: int, bad_lines: list[int]) -> None:
    got = read_out(out)
    assert [o["line"] for o in got] == sorted(set(o["line"] for o in got))  # none twice, in order
    assert got == clean                                                       # none lost, same answers
    bad = [json.loads(line)["line"] for line in (out / "_bad_rows.jsonl").read_text().splitlines()]
    assert bad == bad_lines and len(got) + len(bad) == n_rows
    assert not [p.name for p in out.iterdir() if p.name.startswith((".tmp-", ".bad-"))]


@pytest.fixture
def kill_job(two, tmp_path):
    rows = make_rows(240, seed=4)  # 80 parts: long enough for kills to land mid-job
    rows[7] = {"user": "u7", "history": [], "candidates": [], "adapter": "news"}
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    reg = str(two.registry.root)
    subprocess.run(_cli(reg, src, tmp_path / "clean"), env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True,
                   capture_output=True)  # a run never killed, with the same threads as the killed ones
    return reg, src, read_out(tmp_path / "clean")


@pytest.mark.slow
def test_kill_9_mid_job_and_restart_writes_every_row_once(kill_job, tmp_path):
    """kill -9 at random points (before any part is written; after a part, once or twice in a row);
    after the restart every row is there once, with the answers of a run never killed."""
    reg, src, clean = kill_job
    rng = random.Random()
    trials = [[-1.0], [rng.uniform(0, 0.5)], [rng.uniform(0, 0.5), rng.uniform(0, 0.5)], [rng.uniform(0, 1.0)]]
    for trial, delays in enumerate(trials):
        out = tmp_path / f"out{trial}"
        early = _kill_and_finish(reg, src, out, delays)
        assert early >= 1, f"trial {trial}: the job ended before the kill; make it longer"
        _check_once(out, clean, 240, [8])


@pytest.mark.slow   # two spawned processes each import torch and build a hub: ~15 s here
def test_workers_give_the_local_engines_output(hub, tmp_path):
    """workers=2: the parts scored by two spawned processes, each with its own Hub of the same base (one
    thread each, as this process here), committed in order: the local engine's bytes, bad rows included."""
    publish_random(hub, "news", seed=0)
    publish_random(hub, "music", seed=1)
    rows = make_rows(60, seed=3)
    rows[7] = {"user": "u7", "history": [], "candidates": [], "adapter": "news"}
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    opts = dict(k=4, part_rows=10, skip_bad=True)
    local = hub.score_file(src, tmp_path / "local", **opts)
    pooled = hub.score_file(src, tmp_path / "pool", workers=2, threads=1, **opts)
    assert (pooled["scored"], pooled["bad"], pooled["parts"]) == (local["scored"], local["bad"], 6) == (59, 1, 6)
    for name in [p.name for p in sorted((tmp_path / "local").glob("part-*"))] + ["_bad_rows.jsonl"]:
        assert (tmp_path / "pool" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    with pytest.raises(ConfigError, match="actors"):
        hub.score_file(src, tmp_path / "x", engine="ray", workers=2)
