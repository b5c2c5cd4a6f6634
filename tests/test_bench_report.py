"""The benchmark report (adapterhub.bench.build_report) built from sample result lines: its markdown
sections and tables, its plots, and what it says without matplotlib or without results."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from adapterhub import bench


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
    for q, steady in (("nf4", 1.0e9), ("bf16", 2.5e9)):  # a GPU run: steady and peaks, each its own
        rows += [_row("base", "param_bytes", {"quant": q}, steady, device="cuda", base="random:llama-1b", quant=q,
                      linear_bytes=steady * 0.6, dtype=f"{q}/bfloat16"),
                 _row("base", "steady_gpu_bytes", {"quant": q}, steady, device="cuda", base="random:llama-1b", quant=q),
                 _row("base", "load_peak_gpu_bytes", {"quant": q}, steady * 1.1, device="cuda", base="random:llama-1b",
                      quant=q),
                 _row("base", "forward_peak_gpu_bytes", {"quant": q}, steady + 3e8, device="cuda",
                      base="random:llama-1b", quant=q),
                 _row("base", "train_step_peak_gpu_bytes", {"quant": q}, steady + 6e8, device="cuda",
                      base="random:llama-1b", quant=q)]
    for mode, speed, peak in (("ours", 40.0, 6.2e9), ("peft", 10.0, 9.3e9)):
        p = {"scenario": "synthetic", "mode": mode, "steps": 8, "batch_size": 8, "rank": 8}
        rows += [_row("train", "train_candidates_per_s", p, speed, device="cuda", base="random:llama-8b", quant="nf4",
                      compute="native", prompt_tokens_per_s=speed * 300),
                 _row("train", "train_peak_gpu_bytes", p, peak, device="cuda", base="random:llama-8b", quant="nf4",
                      memory="cuda_max_allocated")]
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
    for mode, speed, peak in (("ours", 2.4, 1.3e9), ("peft", 0.3, 7.2e9), ("ours-nockpt", 3.4, 2.6e9)):
        p = {"scenario": "music", "mode": mode, "steps": 3, "batch_size": 8, "rank": 8}
        rows += [_row("train", "train_candidates_per_s", p, speed, quant="nf4", compute="bf16", candidates=24),
                 _row("train", "train_peak_bytes", p, peak, quant="nf4", memory="ru_maxrss")]
    rows.append(_row("train", "skipped", {"scenario": "music", "mode": "peft-bf16", "steps": 3, "batch_size": 8, "rank": 8},
                     None, quant="nf4", reason="time budget"))
    rows.append(_row("train", "rank_candidates_per_s", {"scenario": "music", "mode": "score", "steps": 3, "batch_size": 8,
                                                        "rank": 8}, 6.0, peft=1.5, quant="nf4", max_abs_p_diff=0.01,
                     compute="bf16", candidates=20))
    for callers in (1, 8, 32):
        for mode, rps in (("serial", 2.0), ("batched", 2.0 * callers ** 0.5)):
            rows.append(_row("concurrency", "concurrent_requests", {"mode": mode, "callers": callers, "rows_per_request": 1,
                                                                    "adapters": 4, "seconds": 2.0},
                             rps, quant="fp32", requests=40, p50_ms=300.0 * callers / rps, p99_ms=900.0 * callers / rps,
                             single_call_ms=350.0, loadavg_1m=2.5, cores=2, **({"batches": 9} if mode == "batched" else {})))
    for way, v in (("gather", 0.96), ("slices", 0.91)):
        rows.append(_row("concurrency", "mixed_vs_single", {"way": way, "rows": 8, "adapters": 4, "seq": 32, "pairs": 6}, v,
                         quant="fp32", single_ms=400.0, mixed_ms=400.0 / v, max_abs_diff=1e-6, loadavg_1m=3.5))
    rows.append(_row("concurrency", "routing_us", {"way": "contextvar", "wrappers": 210}, 7.2, quant="fp32"))
    for s in ("video", "news"):
        for m, v in (("own", 0.70), ("base", 0.55), ("cat-sum", 0.66), ("ties-sum", 0.60)):
            rows.append(_row("merge", "merge_quality", {"scenario": s, "recipe": m, "n": 200}, v, metric_name="auc",
                             n_examples=200, parents=["news@v1", "video@v1"],
                             **({"kept": (v - 0.55) / 0.15} if "-" in m else {})))
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
                    "## 5. Ranking throughput", "## 6. Training throughput", "## 7. Quality kept by merges",
                    "## 8. Concurrent requests"):
        assert heading in md
    assert "NVIDIA H100 80GB HBM3" in md and "CPU (Test CPU, 2 threads)" in md
    assert "| 64 | 5 | 1380 | 276.00x |" in md           # cold load row: PEFT / adapterhub ratio
    assert "| 20 | nf4 | 60 | 15 | 4.00x |" in md          # ranking speed-up
    assert "| mixed-4 | 96 | 80 | 1.20x | 0.97x | 1.00x |" in md
    assert "n/a: 4-bit" in md and "adapterhub bench --quick" in md
    assert "| 1 | 1 |" not in md                           # the older run of the suite is not reported
    assert "| music | ours | bf16 | 2.4 | 1.00x | n/a | 1239.8 | 3 x 8 |" in md    # training: each mode, ours / this
    assert "| music | peft | bf16 | 0.3 | 8.00x | n/a | 6866.5 | 3 x 8 |" in md
    # GPU rows: steady bytes per quant and their ratio to bf16, then each peak on its own
    assert "| nf4 | nf4/bfloat16 | 953.7 | 572.2 | n/a | 953.7 | 0.40x | 1049.0 | 1239.8 | 1525.9 |" in md
    assert "| synthetic | peft | native | 10 | 4.00x | 3000 | 8869.2 | 8 x 8 |" in md
    assert "ours / peft: synthetic: 4.00x the candidates/s, 0.67x the peak GPU." in md
    assert md.index("| music | ours-nockpt |") < md.index("| music | peft |")  # the modes in their fixed order
    assert "ours / peft: music: 8.00x the candidates/s, 0.18x the peak RSS." in md
    assert "| music | 6 | 1.5 | 4.00x | 0.01 | bf16 |" in md                # ranking 20 candidates vs PEFT
    assert "| cat-sum | 0.66 (73%) | 0.66 (73%) | 73% |" in md             # merges: value (kept), worst kept
    assert "| own | 0.7 | 0.7 |  |" in md
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


def test_report_concurrency_section(tmp_path):
    """The concurrency suite's figures: requests/s and p50/p99 per callers level and mode, vs serial; the mixed batch."""
    write_rows(tmp_path, [r for r in sample_rows() if r["suite"] == "concurrency"])
    md = bench.build_report(tmp_path, plots=False).read_text()
    section = md[md.index("## 8. Concurrent requests"):]
    assert "| callers | mode | requests/s | vs serial | p50 ms | p99 ms | requests | batches |" in section
    assert "| 8 | serial | 2 | 1.00x | 1200 | 3600 | 40 | - |" in section
    assert "| 8 | batched | 5.66 | 2.83x | 424 | 1273 | 40 | 9 |" in section
    assert section.index("| 1 | serial |") < section.index("| 8 | serial |") < section.index("| 32 | serial |")
    assert "| gather | 8 x 32 | 6 | 400 | 417 | 0.96x |" in section and "| slices |" in section
    assert "2.5-3.5 on 2 cores" in section and "| contextvar | 7.2 |" in section
    assert "## 1. Base memory" not in md  # no rows, no section


def test_report_with_no_results_says_what_to_run(tmp_path):
    with pytest.raises(bench.BenchError, match="adapterhub bench --quick"):
        bench.build_report(tmp_path)


def test_main_report_action(tmp_path, capsys):
    write_rows(tmp_path, sample_rows())
    assert bench.main(["report", "--out", str(tmp_path), "--no-plots"]) == 0
    assert "REPORT.md" in capsys.readouterr().out
    assert bench.main(["--only", "nope", "--out", str(tmp_path)]) == 2
