"""The benchmark suite on random:tiny: every script writes valid JSON lines; the report builds from sample lines."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from adapterhub import bench

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
TINY = ["--base", "random:tiny", "--device", "cpu", "--quick", "--quants", "fp32"]


@pytest.fixture
def scripts(monkeypatch):
    """The benchmark scripts as modules (they import each other as top-level `common`, `runtime`)."""
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    monkeypatch.delenv("ADAPTERHUB_BENCH_RUN", raising=False)
    return lambda name: importlib.import_module(name)


@pytest.fixture
def in_process(scripts, monkeypatch):
    """Run a script's --child mode in this process (the runner test covers real subprocesses)."""
    import contextlib
    import io

    def use(name):
        module = scripts(name)

        def fake_run_child(argv, timeout):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                module.main(argv[1:])
            return json.loads(buf.getvalue().strip().splitlines()[-1])
        monkeypatch.setattr(scripts("common"), "run_child", fake_run_child)
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


def test_base_memory(in_process, tmp_path):
    in_process("base_memory").main(TINY + ["--out", str(tmp_path)])
    rows = read_rows(tmp_path, "base")
    for metric in ("param_bytes", "load_s", "peak_rss_bytes"):
        measured(rows, metric)
    assert measured(rows, "param_bytes")[0]["dtype"] == "float32"


def test_adapter_size(scripts, tmp_path):
    scripts("adapter_size").main(TINY + ["--out", str(tmp_path)])
    rows = read_rows(tmp_path, "adapters")
    files = {r["params"]["rank"]: r["value"] for r in measured(rows, "adapter_file_bytes")}
    weights = {r["params"]["rank"]: r["value"] for r in measured(rows, "adapter_weight_bytes")}
    assert sorted(files) == [4, 8, 16, 32, 64]
    assert weights[64] == 16 * weights[4]       # A and B grow linearly with the rank
    assert all(files[r] > weights[r] for r in files)  # plus the safetensors header


def test_runtime(scripts, tmp_path, monkeypatch):
    runtime = scripts("runtime")
    monkeypatch.setattr(runtime, "RESIDENT", (1, 16))  # 18 adapters, not 66: seconds on random:tiny
    monkeypatch.setattr(runtime, "SEQ", 16)
    monkeypatch.setattr(sys, "argv", ["runtime.py"] + TINY + ["--out", str(tmp_path)])
    runtime.main()
    rows = read_rows(tmp_path, "runtime")
    loads = measured(rows, "cold_load_ms")
    assert [r["params"]["resident"] for r in loads] == [1, 16] and all(r["peft"] > 0 for r in loads)
    measured(rows, "mixed_vs_single_throughput")


def test_forward(scripts, tmp_path, monkeypatch):
    forward = scripts("forward")
    monkeypatch.setattr(forward, "MIXED", (1, 4))
    monkeypatch.setattr(forward, "SPLIT", (4,))
    monkeypatch.setattr(forward, "REPEAT_QUICK", 1)
    forward.main(TINY + ["--out", str(tmp_path)])
    rows = measured(read_rows(tmp_path, "forward"), "forward_rows_per_s")
    modes = [(r["params"]["mode"], r["params"]["adapters"]) for r in rows]
    assert modes == [("base", 0), ("single", 1), ("mixed", 1), ("mixed", 4), ("split", 4), ("merged", 1)]
    assert all(r["peft"] > 0 for r in rows)
    for r in rows:
        if "max_abs_diff" in r:  # mixed == split, merged == unmerged
            assert r["max_abs_diff"] < 1e-4, r


def test_ranking(scripts, tmp_path):
    scripts("ranking").main(TINY + ["--out", str(tmp_path)])
    rows = measured(read_rows(tmp_path, "ranking"), "ranking_candidates_per_s")
    assert sorted(r["params"]["reuse_prefix"] for r in rows) == [False, True]
    assert all(r["max_abs_p_diff"] < 1e-4 and r["prefix_tokens"] > 0 for r in rows)


def test_training(in_process, tmp_path):
    in_process("training").main(TINY + ["--out", str(tmp_path), "--steps", "1", "--batch", "4", "--modes", "ours,peft",
                                        "--repeat", "1"])
    rows = read_rows(tmp_path, "train")
    speed = {r["params"]["mode"]: r for r in measured(rows, "train_candidates_per_s")}
    assert set(speed) == {"ours", "peft"} and speed["peft"]["ours_over_this"] > 0
    assert speed["ours"]["candidates"] >= 4 and speed["peft"]["candidates"] == 4
    assert {r["memory"] for r in measured(rows, "train_peak_bytes")} == {"ru_maxrss"}
    rank = measured(rows, "rank_candidates_per_s")[0]
    assert rank["candidates"] == 20 and rank["max_abs_p_diff"] < 1e-4  # fp32 base: packed == full prompts


def test_merge_quality_skips_random_base(scripts, tmp_path):
    scripts("merge_quality").main(TINY + ["--out", str(tmp_path)])
    rows = read_rows(tmp_path, "merge")
    assert [r["metric"] for r in rows] == ["skipped"] and "random" in rows[0]["reason"]


def test_budget_skips_and_records(scripts, tmp_path):
    scripts("ranking").main(TINY + ["--out", str(tmp_path), "--budget-s", "0"])
    rows = read_rows(tmp_path, "ranking")
    assert {r["metric"] for r in rows} == {"skipped"} and rows[0]["reason"] == "time budget"


def test_runner_runs_a_suite_in_a_subprocess(tmp_path):
    failed = bench.run_suites("random:tiny", "cpu", tmp_path, quick=True, only="ranking", quants="fp32")
    assert failed == []
    wall = [json.loads(x) for x in (tmp_path / "bench.jsonl").read_text().splitlines()]
    assert wall[0]["params"] == {"suite": "ranking"} and wall[0]["status"] == "ok"
    rows = read_rows(tmp_path, "ranking")
    assert rows[0]["run"] == wall[0]["run"]  # one run id for every script of an invocation
    assert "ranking.py" in (tmp_path / "logs" / "random-tiny-cpu-ranking.log").read_text()


def test_unknown_suite_is_refused():
    from adapterhub.errors import ConfigError
    with pytest.raises(ConfigError, match="Did you mean 'forward'"):
        bench.parse_suites("fowrard")


# ---------------------------------------------------------------- the report, from sample lines

def _row(suite, metric, params, value, run="2026-01-01T00:00:00+00:00", device="cpu", base="smollm2-135m", **extra):
    env = {"torch": "2.13", "transformers": "5.2", "peft": "0.21", "bitsandbytes": "0.50", "git": "abc1234",
           "cpu": "Test CPU", "threads": 2}
    if device == "cuda":
        env["gpu"] = "NVIDIA H100 80GB HBM3"
    return {"suite": suite, "run": run, "metric": metric, "params": params, "value": value, "unit": "",
            "base": base, "device": device, "env": env, **extra}


def sample_rows() -> list[dict]:
    rows = []
    for q, pb in (("fp32", 540e6), ("nf4", 120e6)):
        rows += [_row("base", "param_bytes", {"quant": q}, pb, quant=q, dtype="x"),
                 _row("base", "load_s", {"quant": q}, 1.5, quant=q),
                 _row("base", "peak_rss_bytes", {"quant": q}, 900e6, quant=q),
                 _row("base", "rss_delta_bytes", {"quant": q}, pb * 1.1, quant=q)]
    rows.append(_row("base", "peak_gpu_bytes", {"quant": "nf4"}, 3e9, device="cuda", base="random:llama-1b", quant="nf4"))
    for r in (4, 8, 16):
        rows += [_row("adapters", "adapter_file_bytes", {"rank": r}, r * 1e5, quant="nf4"),
                 _row("adapters", "adapter_weight_bytes", {"rank": r}, r * 0.98e5, quant="nf4"),
                 _row("adapters", "adapter_resident_bytes", {"rank": r}, r * 1e5, quant="nf4")]
    for n in (1, 4, 16, 64):
        rows += [_row("runtime", "cold_load_ms", {"resident": n}, 5.0, peft=100.0 + 20 * n, quant="nf4"),
                 _row("runtime", "switch_ms", {"resident": n}, 0.001, peft=10.0 + n, quant="nf4")]
    rows.append(_row("runtime", "mixed_vs_single_throughput", {"rows": 8}, 0.98, peft=0.9, quant="nf4"))
    for mode, k in (("base", 0), ("single", 1), ("mixed", 4), ("split", 4), ("merged", 1)):
        rows.append(_row("forward", "forward_rows_per_s", {"mode": mode, "adapters": k, "rows": 16, "seq": 32},
                         100.0 - k, peft=80.0, quant="fp32", max_abs_diff=0.0))
    rows.append(_row("forward", "forward_rows_per_s", {"mode": "merged", "adapters": 1, "rows": 16, "seq": 32}, None,
                     peft=None, quant="nf4", note="n/a: 4-bit"))
    for reuse, v in ((True, 60.0), (False, 15.0)):
        rows.append(_row("ranking", "ranking_candidates_per_s", {"candidates": 20, "reuse_prefix": reuse}, v,
                         quant="nf4", prefix_tokens=120, suffix_tokens=20.0, max_abs_p_diff=1e-6))
    for method, q in (("LoRA", "fp32"), ("QLoRA", "nf4")):
        p = {"method": method, "steps": 6, "batch_size": 8, "rank": 8}
        rows += [_row("train", "train_samples_per_s", p, 4.0, quant=q, tokens_per_sample=80.0),
                 _row("train", "train_peak_bytes", p, 1.2e9, quant=q, before_bytes=0.9e9)]
    for s in ("video", "news"):
        for m, v in (("own", 0.70), ("base", 0.55), ("cat", 0.66), ("ties", 0.60)):
            rows.append(_row("merge", "merge_auc", {"scenario": s, "method": m, "n": 200, "adapters": 2}, v,
                             n_examples=200, parents=["news", "video"], **({"kept": 0.5} if m in ("cat", "ties") else {})))
    rows.append(_row("bench", "suite_wall_s", {"suite": "forward"}, 80.0, status="ok", command="adapterhub bench --quick"))
    return rows


def write_rows(folder: Path, rows: list[dict]) -> None:
    for r in rows:
        with open(folder / f"{r['suite']}.jsonl", "a") as fh:
            fh.write(json.dumps(r) + "\n")


def test_report_markdown_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    old = _row("forward", "forward_rows_per_s", {"mode": "single", "adapters": 1, "rows": 16, "seq": 32}, 1.0,
               run="2025-01-01T00:00:00+00:00", peft=1.0, quant="fp32")
    write_rows(tmp_path, [old] + sample_rows())
    (tmp_path / "forward.jsonl").open("a").write("not json\n")  # a broken line is skipped, not fatal
    path = bench.build_report(tmp_path)
    md = path.read_text()
    for heading in ("## 1. Base memory", "## 2. Adapter size", "## 3. Cold load and switch", "## 4. Forward throughput",
                    "## 5. Ranking throughput", "## 6. Training throughput", "## 7. Quality kept by merges"):
        assert heading in md
    assert "NVIDIA H100 80GB HBM3" in md and "CPU (Test CPU, 2 threads)" in md
    assert "| 64 | 5 | 1380 | 276.00x |" in md           # cold load row: PEFT / adapterhub ratio
    assert "| 20 | nf4 | 60 | 15 | 4.00x |" in md          # ranking speed-up
    assert "| mixed-4 | 96 | 80 | 1.20x | 0.97x | 1.00x |" in md
    assert "n/a: 4-bit" in md and "adapterhub bench --quick" in md
    assert "| 1 | 1 |" not in md                           # the older run of the suite is not reported
    for png in bench.PLOTS:
        assert (tmp_path / png).stat().st_size > 1000, png
        assert f"]({png})" in md


def test_report_without_matplotlib(tmp_path, monkeypatch):
    write_rows(tmp_path, sample_rows())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(bench.BenchError, match=r"pip install 'adapterhub\[bench\]'"):
        bench.build_report(tmp_path)
    md = bench.build_report(tmp_path, plots=False).read_text()
    assert "## 4. Forward throughput" in md and ".png)" not in md


def test_report_with_no_results_says_what_to_run(tmp_path):
    with pytest.raises(bench.BenchError, match="adapterhub bench --quick"):
        bench.build_report(tmp_path)


def test_main_report_action(tmp_path, capsys):
    write_rows(tmp_path, sample_rows())
    assert bench.main(["report", "--out", str(tmp_path), "--no-plots"]) == 0
    assert "REPORT.md" in capsys.readouterr().out
    assert bench.main(["--only", "nope", "--out", str(tmp_path)]) == 2
