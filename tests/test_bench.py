"""The benchmark suites (adapterhub.bench) on random:tiny: every suite writes valid JSON lines and
scales to its budget; the runner works as `python -m adapterhub.bench`; the report builds from sample lines."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapterhub import bench

TINY = ["--base", "random:tiny", "--device", "cpu", "--quick", "--quants", "fp32"]


@pytest.fixture
def suites(monkeypatch):
    """A suite's module by its name in adapterhub.bench (each run gets its own run id)."""
    monkeypatch.delenv("ADAPTERHUB_BENCH_RUN", raising=False)
    return lambda name: importlib.import_module(f"adapterhub.bench.{name}")


@pytest.fixture
def in_process(suites, monkeypatch):
    """Run a suite's --child mode in this process (the runner test covers real subprocesses)."""
    import contextlib
    import io

    def use(name):
        module = suites(name)

        def fake_child_lines(child_module, args, timeout):
            assert child_module == module.__name__
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                module.main(args)
            yield from (json.loads(x) for x in buf.getvalue().splitlines() if x.startswith("{"))
        monkeypatch.setattr(module, "child_lines", fake_child_lines)
        return module
    return use


def read_rows(out: Path, suite: str) -> list[dict]:
    path = out / f"{suite}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows, f"{path} is empty"
    for r in rows:
        assert r["suite"] == suite and r["metric"] and isinstance(r["params"], dict) and "unit" in r
        assert r["device"] == "cpu" and r["base"] == "random:tiny"
        assert {"torch", "transformers", "peft", "bitsandbytes", "git", "python"} <= set(r["env"])
        if r.get("quant"):
            assert r["dtype"]
    assert len({r["run"] for r in rows}) == 1
    return rows


def measured(rows: list[dict], metric: str) -> list[dict]:
    out = [r for r in rows if r["metric"] == metric]
    assert out and all(isinstance(r["value"], (int, float)) and r["value"] > 0 for r in out), rows
    return out


def test_suites_are_modules_of_the_package():
    """Every suite is adapterhub.bench.<module> with a main(); the runner starts them with -m, not by path."""
    for suite, (module, what, share) in bench.SUITES.items():
        assert callable(importlib.import_module(f"adapterhub.bench.{module}").main), suite
        assert what and share > 0
    assert bench.parse_suites("training,memory") == ["train", "base"]  # a module name works too
    assert not (Path(bench.__file__).parent / "benchmarks").exists()


def test_python_m_adapterhub_bench_help_and_a_light_import(tmp_path):
    run = subprocess.run([sys.executable, "-m", "adapterhub.bench", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert run.returncode == 0 and "--budget-s" in run.stdout and "--only" in run.stdout, run.stderr
    light = subprocess.run([sys.executable, "-c", "import sys, adapterhub.bench; print('torch' in sys.modules)"],
                           capture_output=True, text=True, timeout=60)
    assert light.stdout.strip() == "False", light.stderr


def test_base_memory(in_process, tmp_path):
    in_process("memory").main(TINY + ["--out", str(tmp_path)])
    rows = read_rows(tmp_path, "base")
    for metric in ("param_bytes", "load_s", "peak_rss_bytes"):
        measured(rows, metric)
    param = measured(rows, "param_bytes")[0]
    assert param["dtype"] == "float32" and 0 < param["linear_bytes"] < param["value"]
    assert not [r for r in rows if "gpu" in r["metric"]]  # CPU: no GPU figures, not zeros


def test_adapter_size(suites, tmp_path):
    suites("adapters").main(TINY + ["--out", str(tmp_path)])
    rows = read_rows(tmp_path, "adapters")
    files = {r["params"]["rank"]: r["value"] for r in measured(rows, "adapter_file_bytes")}
    weights = {r["params"]["rank"]: r["value"] for r in measured(rows, "adapter_weight_bytes")}
    assert sorted(files) == [4, 8, 16, 32, 64]
    assert weights[64] == 16 * weights[4]       # A and B grow linearly with the rank
    assert all(files[r] > weights[r] for r in files)  # plus the safetensors header


def test_runtime(suites, tmp_path, monkeypatch):
    runtime = suites("runtime")
    monkeypatch.setattr(runtime, "RESIDENT", (1, 4))  # 5 adapters published, not 66: seconds on random:tiny
    monkeypatch.setattr(runtime, "N_MEMORY", 4)
    monkeypatch.setattr(runtime, "SEQ_QUICK", 16)
    monkeypatch.setattr(runtime, "REPEAT_QUICK", 2)  # ranking 20 candidates on random:tiny is ~0.5 s a call
    runtime.main(TINY + ["--out", str(tmp_path)])
    rows = read_rows(tmp_path, "runtime")
    loads = measured(rows, "cold_load_ms")
    assert [r["params"]["resident"] for r in loads] == [1, 4] and all(r["peft"] > 0 for r in loads)
    assert all(r["params"]["repeat"] == runtime.REPEAT_QUICK for r in loads)  # no budget: nothing reduced
    measured(rows, "mixed_vs_single_throughput")
    # RSS growth for 4 adapters of 14 KB each is within malloc's noise (it reads 0 at times): the row is
    # there with a number and the weight bytes it divides by; its value means something on real sizes only
    (resident,) = [r for r in rows if r["metric"] == "resident_bytes_per_weight_byte"]
    assert isinstance(resident["value"], float) and resident["weight_bytes_per_adapter"] > 0
    measured(rows, "ranking_prefix_reuse_speedup")


def test_runtime_scales_to_its_budget(suites, tmp_path, monkeypatch):
    """A short budget: fewer repeats (recorded in params); what does not fit is a skipped row or (PEFT's
    side of a resident level) a None saying why; ours' load/switch and the mixed batch always run."""
    runtime = suites("runtime")
    monkeypatch.setattr(runtime, "RESIDENT", (1, 4))
    monkeypatch.setattr(runtime, "N_MEMORY", 4)
    monkeypatch.setattr(runtime, "SEQ_QUICK", 16)
    monkeypatch.setattr(runtime, "REPEAT_QUICK", 10**6)  # only the budget can stop these repeats
    t = time.monotonic()
    runtime.main(TINY + ["--out", str(tmp_path), "--budget-s", "5"])
    assert time.monotonic() - t < 40  # a million repeats of each would take hours
    rows = read_rows(tmp_path, "runtime")
    repeats = [r["params"]["repeat"] for r in rows if "repeat" in r["params"] and r["metric"] != "skipped"]
    assert repeats and all(1 <= n < 10**6 for n in repeats)
    assert {r["params"]["resident"] for r in rows if r["metric"] == "cold_load_ms" and r["value"] > 0} == {1, 4}
    assert [r["metric"] for r in rows if r["metric"] == "mixed_vs_single_throughput"] == ["mixed_vs_single_throughput"]
    assert all(r["reason"] == "time budget" for r in rows if r["metric"] == "skipped")


def test_forward(suites, tmp_path, monkeypatch):
    forward = suites("forward")
    monkeypatch.setattr(forward, "MIXED", (1, 4))
    monkeypatch.setattr(forward, "SPLIT", (4,))
    monkeypatch.setattr(forward, "REPEAT_QUICK", 1)
    forward.main(TINY + ["--out", str(tmp_path)])
    rows = measured(read_rows(tmp_path, "forward"), "forward_rows_per_s")
    modes = [(r["params"]["mode"], r["params"]["adapters"]) for r in rows]
    assert modes == [("base", 0), ("single", 1), ("mixed", 1), ("mixed", 4), ("split", 4), ("merged", 1)]
    assert all(r["peft"] > 0 and r["params"]["repeat"] == 1 for r in rows)
    for r in rows:
        if "max_abs_diff" in r:  # mixed == split, merged == unmerged
            assert r["max_abs_diff"] < 1e-4, r


def test_ranking(suites, tmp_path, monkeypatch):
    ranking = suites("ranking")
    monkeypatch.setattr(ranking, "REPEAT_QUICK", 1)
    ranking.main(TINY + ["--out", str(tmp_path)])
    rows = measured(read_rows(tmp_path, "ranking"), "ranking_candidates_per_s")
    assert sorted(r["params"]["reuse_prefix"] for r in rows) == [False, True]
    assert all(r["params"]["repeat"] == 1 for r in rows)
    assert all(r["max_abs_p_diff"] < 1e-4 and r["prefix_tokens"] > 0 for r in rows)


def test_training(in_process, tmp_path):
    in_process("training").main(TINY + ["--out", str(tmp_path), "--steps", "1", "--batch", "4", "--modes", "ours,peft",
                                        "--repeat", "1"])
    rows = read_rows(tmp_path, "train")
    speed = {r["params"]["mode"]: r for r in measured(rows, "train_candidates_per_s")}
    assert set(speed) == {"ours", "peft"} and speed["peft"]["ours_over_this"] > 0
    assert speed["ours"]["candidates"] >= 4 and speed["peft"]["candidates"] == 4
    for r in speed.values():  # the same prompt length for both: the token rate is the candidate rate x it
        assert r["prompt_tokens_per_s"] == pytest.approx(r["value"] * speed["peft"]["tokens_per_candidate"])
        assert r["data"] == "synthetic" and r["params"]["scenario"] == "synthetic"
    assert {r["memory"] for r in measured(rows, "train_peak_bytes")} == {"ru_maxrss"}
    assert [r["params"]["mode"] for r in rows if r["metric"] == "train_candidates_per_s"] == ["ours", "peft"]
    rank = measured(rows, "rank_candidates_per_s")[0]
    assert rank["candidates"] == 20 and rank["max_abs_p_diff"] < 1e-4  # fp32 base: packed == full prompts


def test_merge_quality_skips_random_base(suites, tmp_path):
    suites("merge").main(TINY + ["--out", str(tmp_path)])
    rows = read_rows(tmp_path, "merge")
    assert [r["metric"] for r in rows] == ["skipped"] and "random" in rows[0]["reason"]


def test_merge_quality_skips_without_shipped_adapters(suites, tmp_path, monkeypatch):
    """The default registry is ./adapters of the working folder; a wheel install has none: a clean skip."""
    monkeypatch.chdir(tmp_path)
    suites("merge").main(["--base", "smollm2-135m", "--quick", "--out", str(tmp_path / "out")])  # never loads the base
    rows = [json.loads(x) for x in (tmp_path / "out" / "merge.jsonl").read_text().splitlines()]
    assert [r["metric"] for r in rows] == ["skipped"] and "shipped adapters in adapters/" in rows[0]["reason"]


def test_merge_recipes_take_per_parent_weights(suites):
    parse = suites("merge").parse_recipe
    assert parse("cat-sum") == ("cat", "sum", 0.5, {})
    assert parse("cat-sum[ecommerce=1.5, video=0.8]") == ("cat", "sum", 0.5, {"ecommerce": 1.5, "video": 0.8})
    for bad, why in (("cat-summ", "unknown recipe"), ("cat-sum[books=1]", "SCENARIO one of"),
                     ("cat-sum[video=x]", "not SCENARIO=WEIGHT")):
        with pytest.raises(ValueError, match=why):
            parse(bad)


def test_budget_skips_and_records(suites, tmp_path):
    suites("ranking").main(TINY + ["--out", str(tmp_path), "--budget-s", "0"])
    rows = read_rows(tmp_path, "ranking")
    assert {r["metric"] for r in rows} == {"skipped"} and rows[0]["reason"] == "time budget"


def test_budget_shares_and_fits():
    from adapterhub.bench.common import Budget
    assert Budget(None, parts=3).fit(7, one_s=100.0) == 7  # no budget: what was asked
    b = Budget(10.0, parts=2)
    assert 4 <= b.fit(100, one_s=1.0) <= 5 and b.parts == 1  # half of 10 s, at 1 s a repeat
    assert b.fit(100, one_s=1.0) in (9, 10)                    # the last part gets all that is left
    assert Budget(1.0).fit(100, one_s=50.0, least=3) == 3
    assert Budget(10.0).fits(5.0) and not Budget(10.0).fits(20.0)


def test_runner_runs_a_suite_in_a_subprocess(tmp_path):
    # merge: the cheapest suite on a random base (it records why it skips); the others run in-process above
    failed = bench.run_suites("random:tiny", "cpu", tmp_path, quick=True, only="merge", quants="fp32", budget_s=120)
    assert failed == []
    wall = [json.loads(x) for x in (tmp_path / "bench.jsonl").read_text().splitlines()]
    assert wall[0]["params"] == {"suite": "merge"} and wall[0]["status"] == "ok" and wall[0]["budget_s"] > 0
    rows = read_rows(tmp_path, "merge")
    assert rows[0]["run"] == wall[0]["run"]  # one run id for every suite of an invocation
    log = (tmp_path / "logs" / "random-tiny-cpu-merge.log").read_text()
    assert "-m adapterhub.bench.merge" in log and "--budget-s" in log


def test_default_out_is_under_the_working_folder(tmp_path, monkeypatch):
    import argparse
    from adapterhub.bench.common import add_args
    monkeypatch.chdir(tmp_path)
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    q = argparse.ArgumentParser()
    add_args(q)
    assert p.parse_args([]).out == q.parse_args([]).out == str(Path("benchmarks") / "results")


def test_unknown_suite_is_refused():
    from adapterhub.errors import ConfigError
    with pytest.raises(ConfigError, match="Did you mean 'forward'"):
        bench.parse_suites("fowrard")
