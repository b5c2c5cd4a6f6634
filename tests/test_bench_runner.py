"""The benchmark runner's time limits and the suites' behaviour under them, as a one-GPU run needs:
a run ends within its budget, a child's finished measurements are kept when it dies, the rows the
GPU table needs are measured when the budget is short, and no suite needs data that does not travel."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from adapterhub import bench
from test_bench import TINY, read_rows, suites  # noqa: F401  (suites: the fixture)


def test_base_memory_runs_nf4_first():
    """A short budget keeps the first quant modes; NF4 is the one the GPU run is for."""
    from adapterhub.bench import memory
    from adapterhub.bench.common import quant_list
    assert memory.QUANTS.split(",")[0] == "nf4"
    assert quant_list("auto", "cuda") == ["nf4", "bf16"] and quant_list("auto", "cpu") == ["fp32", "nf4"]


def test_training_scenarios_default_to_synthetic_without_data_or_on_a_random_base(suites, monkeypatch):
    """A fresh GPU machine has no ../shared/data: the suite trains on the built-in scenario instead of
    dying with DataError in every child."""
    training = suites("training")
    monkeypatch.setattr("adapterhub.datasets.default_data_dir", lambda: None)
    assert training.default_scenarios(False, "smollm2-135m") == "synthetic"
    monkeypatch.setattr("adapterhub.datasets.default_data_dir", lambda: Path("/data"))
    assert training.default_scenarios(False, "random:llama-1b") == "synthetic"
    assert training.default_scenarios(True, "smollm2-135m") == "synthetic"
    assert training.default_scenarios(False, "smollm2-135m") == "music,news,video"


def test_runtime_measures_ours_where_peft_does_not_fit(suites, tmp_path, monkeypatch):
    """Loading PEFT up to 64 adapters is most of a level's cost: when it does not fit, ours is still
    measured (the flat-latency rows the GPU table needs) and PEFT's figure is None, saying why."""
    runtime = suites("runtime")
    monkeypatch.setattr(runtime, "RESIDENT", (1, 3))
    monkeypatch.setattr(runtime, "REPEAT_QUICK", 2)
    for other in ("bench_memory", "bench_ranking", "bench_mixed"):  # test_runtime covers them
        monkeypatch.setattr(runtime, other, lambda *a, **k: None)

    class NoRoom(runtime.Budget):
        def fits(self, seconds):
            return False
    monkeypatch.setattr(runtime, "Budget", NoRoom)
    runtime.main(TINY + ["--out", str(tmp_path)])
    loads = {r["params"]["resident"]: r for r in read_rows(tmp_path, "runtime") if r["metric"] == "cold_load_ms"}
    assert loads[1]["peft"] > 0 and "peft_skipped" not in loads[1]  # one adapter: PEFT has it already
    assert loads[3]["value"] > 0 and loads[3]["peft"] is None and "time budget" in loads[3]["peft_skipped"]


def test_runner_budget_is_a_hard_limit_for_the_whole_run(tmp_path, monkeypatch):
    """Each suite is told a share of the time left and killed no later than the run's end (before:
    1.5x its share + 30 s each, so a '8 minute' run could take far longer): even when every suite
    runs until it is killed, the run ends within its budget."""
    clock, calls, real_run = [0.0], [], bench._run

    def fake_run(argv, env, log_path, timeout):
        calls.append((float(argv[argv.index("--budget-s") + 1]), timeout, argv))
        clock[0] += timeout  # the worst case: it runs until killed
        return f"timed out after {timeout:.0f} s"
    monkeypatch.setattr(bench.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(bench, "_run", fake_run)
    failed = bench.run_suites("random:tiny", "cpu", tmp_path, only="base,runtime,train", budget_s=100,
                              extra={"runtime": ["--x", "y"]})
    assert failed == ["base", "runtime", "train"] and clock[0] <= 100
    assert all(soft <= bench.SOFT_SHARE * 100 and soft < hard for soft, hard, _ in calls)
    assert calls[1][2][-4:-2] == ["--x", "y"] and "--x" not in calls[0][2]  # a suite's own arguments
    walls = [json.loads(x) for x in (tmp_path / "bench.jsonl").read_text().splitlines()]
    assert len(calls) == 2 and walls[2]["status"] == "not run: the run's time budget was spent"
    calls.clear()
    clock[0] = 0.0
    bench.run_suites("random:tiny", "cpu", tmp_path, only="base,runtime,train", budget_s=100, hard_s=250)
    assert len(calls) == 3 and clock[0] <= 250  # the shares still come from 100 s; the kills from 250 s
    assert all(soft <= bench.SOFT_SHARE * 100 for soft, _, _ in calls)
    monkeypatch.undo()
    status = real_run([sys.executable, "-c", "import time; time.sleep(30)"], dict(), tmp_path / "s.log", 1.0)
    assert status.startswith("timed out after 1 s")


def test_a_childs_lines_arrive_as_it_prints_them_and_a_failure_keeps_them(tmp_path, monkeypatch, capfd):
    """Each finished mode is recorded before the next runs: a child that dies (or is killed) later
    loses only what it was running; its stderr reaches the suite's log."""
    import os
    from adapterhub.bench.common import child_lines
    (tmp_path / "fake_child.py").write_text("import json, sys, time\nprint(json.dumps({'mode': 'ours'}), flush=True)\n"
                                            "print('loading peft', file=sys.stderr, flush=True)\n"
                                            "time.sleep(float(sys.argv[1]))\nsys.exit('peft ran out of memory')\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    got = []
    with pytest.raises(RuntimeError, match="exit 1: peft ran out of memory"):
        for line in child_lines("fake_child", ["0"], timeout=60):
            got.append(line)
    assert got == [{"mode": "ours"}] and "loading peft" in capfd.readouterr().err
    t = time.monotonic()
    with pytest.raises(RuntimeError, match="timed out after 1 s"):
        for line in child_lines("fake_child", ["30"], timeout=1):
            got.append(line)
    assert got == [{"mode": "ours"}] * 2 and time.monotonic() - t < 20


def test_a_mode_that_fails_is_a_skip_with_its_reason_and_the_next_mode_runs(monkeypatch, capsys):
    """In the one-process CUDA child, an error in one quant mode (out of memory, a missing kernel)
    must not lose the modes after it: it prints a 'skipped' line naming the error, then goes on."""
    from adapterhub.bench import memory

    def measure(base, quant, device):
        if quant == "int8":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"param_bytes": 1}
    monkeypatch.setattr(memory, "measure_cpu", measure)
    memory.child("random:tiny", ["int8", "fp32"], "cpu", None)
    out, err = capsys.readouterr()
    lines = [json.loads(x) for x in out.splitlines()]
    assert lines == [{"quant": "int8", "skipped": "failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"},
                     {"quant": "fp32", "param_bytes": 1}]
    assert "Traceback" in err  # the whole error is in the suite's log
