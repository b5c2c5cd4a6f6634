"""benchmarks/gpu.sh and its plan (adapterhub.bench.gpu): the one-GPU run has to be right the first
time it runs. The slow tests run the script itself: its CPU dry run (--check) end to end, and each
set-up failure with its own message and exit code; the fast ones check the plan, the required-row
verdict and the result files from sample rows."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapterhub.bench import gpu

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu.sh"


def run_script(args: list[str], env: dict | None = None, timeout: float = 660) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


def rows_for(base: str, device: str, missing: tuple = (), run: str = "r1") -> list[dict]:
    """A row for each required measurement of one base (the verdict reads these)."""
    rows = []
    for suite, metric, params, quant in gpu.required_rows(device):
        if (suite, metric, json.dumps(params)) in missing:
            continue
        rows.append({"suite": suite, "metric": metric, "params": dict(params), "value": 1.5, "unit": "x",
                     "base": base, "device": device, "quant": quant, "run": run})
    return rows


def write(work: Path, rows: list[dict]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for r in rows:
        with open(work / f"{r['suite']}.jsonl", "a") as fh:
            fh.write(json.dumps(r) + "\n")


# ---------------------------------------------------------------- the plan (fast)

def test_plan_puts_the_required_rows_first_and_nf4_first():
    required = [s for s in gpu.STAGES if s.required]
    assert list(gpu.STAGES[:len(required)]) == required                     # what the table needs runs first
    assert [s.slot for s in required] == ["small", "big"] and gpu.SMALL.endswith("1b") and gpu.BIG.endswith("8b")
    assert all(set(s.suites.split(",")) <= set(gpu.SUITES) for s in gpu.STAGES)
    assert gpu.EXTRA["train"][:2] == ["--scenarios", "synthetic"]           # no real data travels
    assert [s.quants for s in gpu.STAGES if "concurrency" in s.suites] == ["nf4"]  # not the CPU default fp32
    from adapterhub.bench import memory
    from adapterhub.bench.common import quant_list
    assert memory.QUANTS.startswith("nf4,") and quant_list("auto", "cuda")[0] == "nf4"
    wanted = {(s, m) for s, m, _, _ in gpu.required_rows("cuda")}
    assert {("base", "steady_gpu_bytes"), ("train", "train_peak_gpu_bytes"), ("runtime", "cold_load_ms"),
            ("runtime", "mixed_vs_single_throughput"), ("train", "rank_candidates_per_s")} <= wanted


def test_each_stage_gets_its_share_of_what_is_left(tmp_path, monkeypatch):
    clock, calls = [0.0], []

    def fake_run_suites(base, device, out, quick, only, quants, budget_s, extra, hard_s):
        calls.append((base, only, budget_s, hard_s))
        clock[0] += budget_s * (0.5 if len(calls) == 1 else 1.0)  # the first stage leaves half its time
        return []
    monkeypatch.setattr(gpu.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(gpu, "run_suites", fake_run_suites)
    plan = gpu.run_plan(tmp_path, "cuda", gpu.bases(False, "random:a", "random:b"), 100.0, check=False)
    assert [c[0] for c in calls] == ["random:a", "random:b", "random:a", "random:a"]
    weights = [s.weight for s in gpu.STAGES]
    assert calls[0][2] == pytest.approx(100 * weights[0] / sum(weights))
    left = 100 - calls[0][2] / 2                        # what the first stage left flows on
    assert calls[1][2] == pytest.approx(left * weights[1] / sum(weights[1:]))
    assert calls[1][2] > calls[0][2] > calls[2][2]      # the 8B stage has the largest share
    optional = sum(s.weight for s in gpu.STAGES if not s.required) / sum(weights)
    assert calls[0][3] == pytest.approx(100 * (weights[0] / sum(weights) + optional))  # may eat the extras' time
    assert calls[1][3] == pytest.approx(left) and calls[2][3] == calls[2][2]   # the last required: all that is left
    assert sum(c[2] for c in calls) == pytest.approx(100.0 + calls[0][2] / 2)  # all of the time, none twice
    assert clock[0] == pytest.approx(100.0) and [p["failed"] for p in plan] == [[]] * 4


def test_verdict_names_each_missing_row_and_why(tmp_path):
    work = tmp_path / "work"
    slots = gpu.bases(False, "random:a", "random:b")
    rows = rows_for("random:a", "cuda") + rows_for("random:b", "cuda", missing={
        ("train", "train_candidates_per_s", json.dumps({"mode": "peft"})),
        ("runtime", "cold_load_ms", json.dumps({"resident": 64}))})
    rows.append({"suite": "train", "metric": "skipped", "params": {"mode": "peft", "scenario": "synthetic"}, "value": None,
                 "unit": "", "base": "random:b", "device": "cuda", "quant": "nf4", "run": "r1", "reason": "time budget"})
    rows.append({"suite": "bench", "metric": "suite_wall_s", "params": {"suite": "runtime"}, "value": 9.0, "unit": "s",
                 "base": "random:b", "device": "cuda", "run": "r1", "status": "timed out after 60 s"})
    write(work, rows)
    lines = gpu.verdict(work, "cuda", slots)
    missing = [x for x in lines if x.startswith("MISSING")]
    assert len(lines) == 2 * len(gpu.required_rows("cuda")) and len(missing) == 2
    assert any("random:b train train_candidates_per_s" in x and "skipped: time budget" in x for x in missing)
    assert any("random:b runtime cold_load_ms" in x and "suite timed out after 60 s" in x for x in missing)
    write(tmp_path / "full", rows_for("random:a", "cuda") + rows_for("random:b", "cuda"))
    assert all(x.startswith("ok") for x in gpu.verdict(tmp_path / "full", "cuda", slots))


def test_a_null_value_is_not_a_measurement(tmp_path):
    rows = rows_for("random:small", "cpu")
    for r in rows:
        if r["metric"] == "switch_ms":
            r["value"] = None  # e.g. PEFT's column left empty must not pass for ours
    write(tmp_path, rows)
    missing = [x for x in gpu.verdict(tmp_path, "cpu", gpu.bases(True, "", "")) if x.startswith("MISSING")]
    assert len(missing) == 2 and all("switch_ms" in x for x in missing)


def test_result_files_fit_what_the_gpu_machine_returns(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    write(work, rows_for("random:a", "cuda"))
    (work / "logs").mkdir()
    (work / "logs" / "a.log").write_text("x" * 100)
    (work / "REPORT.md").write_text("# report\n")
    for name in ("base_memory.png", "training.png"):
        (work / name).write_bytes(b"\x89PNG" + b"0" * 2000)
    (out).mkdir()
    for name in ("gpu_sh.log", "env.txt"):  # what gpu.sh writes beside
        (out / name).write_text("x")
    gpu.collect(work, out, ["ok a", "MISSING b: skipped: time budget"], [])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["REPORT.md", "check.txt", "env.txt", "gpu_sh.log", "logs.txt", "plots.tar.gz", "results.jsonl"]
    assert gpu.check_out(out) == []
    assert "1 MISSING" in (out / "REPORT.md").read_text().splitlines()[1]     # the verdict heads the report
    assert len((out / "results.jsonl").read_text().splitlines()) == len(gpu.required_rows("cuda"))
    import tarfile
    assert sorted(tarfile.open(out / "plots.tar.gz").getnames()) == ["base_memory.png", "training.png"]
    (out / "deep" / "er" / "still").mkdir(parents=True)
    (out / "deep" / "er" / "still" / "x.txt").write_text("x")
    (out / "odd name.txt").write_text("x")
    problems = gpu.check_out(out)
    assert any("more than 8" in p for p in problems) and any("folders down" in p for p in problems)
    assert any("odd name.txt" in p for p in problems)


def test_an_oversized_file_is_cut_in_the_middle(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "MAX_FILE_BYTES", 1000)
    path = gpu._write(tmp_path / "logs.txt", "a" * 600 + "b" * 600)
    text = path.read_text()
    assert path.stat().st_size <= 1000 and text.startswith("a") and text.endswith("b") and "bytes cut" in text


def test_no_python_is_its_own_error(tmp_path):
    run = run_script([str(tmp_path / "out")], env={"PYTHON": "no-such-python3"}, timeout=60)
    assert run.returncode == 10 and "no 'no-such-python3' on PATH" in run.stdout
    assert "no 'no-such-python3'" in (tmp_path / "out" / "gpu_sh.log").read_text()


def test_header_says_how_to_fetch_the_wheel():
    head = SCRIPT.read_text()[:3000]
    assert "pip download --no-deps --only-binary=:all: --python-version 3.12" in head
    assert "bitsandbytes==0.50.2" in head and "echo /.whl/ >> .git/info/exclude" in head
    assert "python3" in head and "6 minutes" in head


# ---------------------------------------------------------------- the script itself (slow)

@pytest.mark.slow
def test_dry_run_sets_up_selects_and_writes_the_result_files(tmp_path):
    """`benchmarks/gpu.sh --check OUT`: the same set-up as on the GPU machine (adapterhub installed
    --no-deps into a temporary folder and run from there), the same plan on random:small bases on
    the CPU, every required row measured, the result files within what the machine returns."""
    out = tmp_path / "out"
    t = time.monotonic()
    run = run_script(["--check", str(out)])
    wall = time.monotonic() - t
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert wall < 600, wall
    assert sorted(p.name for p in out.iterdir()) == ["REPORT.md", "check.txt", "env.txt", "gpu_sh.log", "logs.txt",
                                                     "plots.tar.gz", "results.jsonl"]
    assert gpu.check_out(out) == []
    env = (out / "env.txt").read_text()
    assert "installed copy used" in env and "bitsandbytes" in env
    check = (out / "check.txt").read_text()
    assert "all present" in check and "MISSING" not in check
    assert check.count("ok ") == len(gpu.required_rows("cpu"))  # both slots are random:small in a dry run
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    suites = {r["suite"] for r in rows}
    assert {"base", "runtime", "train", "bench"} <= suites           # the optional stages run if time is left
    walls = {r["params"]["suite"] for r in rows if r["suite"] == "bench"}
    assert walls == set(gpu.SUITES) - {"merge"}                      # every suite of the plan was started or accounted
    base_quants = [r["params"]["quant"] for r in rows if r["suite"] == "base" and r["metric"] == "param_bytes"]
    assert base_quants[:2] == ["nf4", "bf16"]                         # NF4 first
    assert {r["quant"] for r in rows if r["suite"] == "concurrency" and "quant" in r} <= {"nf4"}
    md = (out / "REPORT.md").read_text()
    assert "## 1. Base memory" in md and "## 6. Training throughput" in md
    assert "done in" in (out / "gpu_sh.log").read_text()


@pytest.mark.slow
def test_without_a_gpu_the_real_run_says_no_cuda(tmp_path):
    run = run_script([str(tmp_path / "out")], timeout=300)
    assert run.returncode == 14 and "sees no CUDA device" in run.stdout + run.stderr, run.stdout[-3000:]
    assert "FAILED: no CUDA device" in run.stdout


@pytest.mark.slow
def test_a_package_that_cannot_be_imported_is_named(tmp_path):
    fake = tmp_path / "fake" / "bitsandbytes"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('libbitsandbytes_cuda130.so: cannot open shared object file')\n")
    run = run_script(["--check", str(tmp_path / "out")], env={"PYTHONPATH": str(tmp_path / "fake"),
                                                               "WHEELS": str(tmp_path / "none")}, timeout=300)
    assert run.returncode == 12, run.stdout[-3000:]
    assert "cannot import bitsandbytes: ImportError: libbitsandbytes_cuda130.so" in run.stdout


@pytest.mark.slow
def test_without_pip_the_wheels_are_unpacked_and_adapterhub_copied(tmp_path):
    """A machine whose python3 has no pip (or no setuptools to build adapterhub) still gets both into
    the temporary site folder: the wheel unpacked (it is a zip), the package copied; the run goes on
    to the import check (here it stops at a bitsandbytes that cannot load, after adapterhub)."""
    import zipfile
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "fakepkg-1.0-py3-none-any.whl", "w") as z:
        z.writestr("fakepkg/__init__.py", "")
    nopip = tmp_path / "python3"
    nopip.write_text(f'#!/bin/bash\nif [ "$1 $2" = "-m pip" ]; then echo "No module named pip" >&2; exit 1; fi\n'
                     f'exec {sys.executable} "$@"\n')
    nopip.chmod(0o755)
    fake = tmp_path / "fake" / "bitsandbytes"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no CUDA kernels')\n")
    out = tmp_path / "out"
    run = run_script(["--check", str(out)], env={"PYTHON": str(nopip), "WHEELS": str(wheels),
                                                 "PYTHONPATH": str(tmp_path / "fake")}, timeout=300)
    log = (out / "gpu_sh.log").read_text()
    assert run.returncode == 12 and "cannot import bitsandbytes: ImportError: no CUDA kernels" in log, log[-3000:]
    assert "unpacking them into" in log and "copying the package into" in log
    adapterhub_line = next(x for x in (out / "env.txt").read_text().splitlines() if x.startswith("adapterhub "))
    assert "/site/adapterhub/__init__.py" in adapterhub_line    # the copy, not the tree it came from
