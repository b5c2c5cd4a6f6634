"""`adapterhub bench`: run the benchmark suite (the scripts in benchmarks/) and build its report.

    adapterhub bench --quick                         # CPU, SmolLM2-135M, <= 10 min
    adapterhub bench                                 # the full run (benchmarks/README.md)
    adapterhub bench --base random:llama-1b --device cuda --out OUT --budget-s 240
    adapterhub bench report --out benchmarks/results # REPORT.md + PNGs from the JSON lines

Each script runs in its own process (so one crash or memory peak does not touch the others) and
appends one JSON line per measurement to <out>/<suite>.jsonl; every script of one invocation shares
a run id. The report reads, for each (suite, base, device), the latest run, and writes REPORT.md and
PNG plots (matplotlib, the `bench` extra) next to the JSON lines.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from .errors import AdapterHubError, ConfigError, did_you_mean

REPO = Path(__file__).resolve().parent.parent
# suite -> (script, issue item, share of the time budget)
SUITES = {
    "base": ("base_memory.py", "base memory per quant mode, load time", 50),
    "adapters": ("adapter_size.py", "adapter file size and resident bytes per rank", 25),
    "runtime": ("runtime.py", "cold load / switch vs resident adapters, mixed batch, memory (vs PEFT)", 130),
    "forward": ("forward.py", "forward throughput: base, single, mixed, split, merged (vs PEFT)", 120),
    "ranking": ("ranking.py", "ranking candidates/s with and without prefix reuse", 40),
    "train": ("training.py", "training samples/s and peak memory, LoRA and QLoRA", 90),
    "merge": ("merge_quality.py", "AUC kept by 4-way merges (cat, ties)", 105),
    "concurrency": ("concurrency.py", "requests/s, p50/p99 at 1/8/32 callers (batcher vs one at a time); mixed batch", 60),
}
QUICK_BUDGET_S = 540  # `--quick` on 2 CPU cores: the whole suite, scripts' start-up included
PLOTS = ("base_memory.png", "adapter_size.png", "latency_vs_resident.png", "forward_throughput.png",
         "ranking.png", "training.png", "merge_quality.png")


class BenchError(AdapterHubError):
    """The benchmark suite cannot run or report (missing scripts, results or matplotlib)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `adapterhub bench` arguments (also `python -m adapterhub.bench`)."""
    p.add_argument("action", nargs="?", default="run", choices=["run", "report"],
                   help="run: the suite, then the report (default); report: only rebuild REPORT.md and the PNGs")
    p.add_argument("--quick", action="store_true", help=f"small sizes, few repeats, a {QUICK_BUDGET_S} s budget (CPU)")
    p.add_argument("--base", default="smollm2-135m", help="base spec: smollm2-135m or random:<preset> (e.g. random:llama-1b)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quants", default=None, help="comma-separated quant modes for every suite (default: each suite's own)")
    p.add_argument("--only", default=None, help=f"comma-separated suites (default all: {', '.join(SUITES)})")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="results folder (JSON lines, REPORT.md, PNGs)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="time budget for the whole suite, shared among the scripts (default: none; --quick: "
                        f"{QUICK_BUDGET_S})")
    p.add_argument("--no-report", action="store_true", help="run the suite without building the report")
    p.add_argument("--no-plots", action="store_true", help="write REPORT.md without PNGs (no matplotlib needed)")


def run_from_args(args) -> int:
    out = Path(args.out)
    if args.action == "report":
        path = build_report(out, plots=not args.no_plots)
        print(f"wrote {path}")
        return 0
    failed = run_suites(args.base, args.device, out, quick=args.quick, only=args.only, quants=args.quants,
                        budget_s=args.budget_s if args.budget_s is not None else (QUICK_BUDGET_S if args.quick else None))
    if not args.no_report:
        print(f"wrote {build_report(out, plots=not args.no_plots)}")
    return 1 if failed else 0


# ---------------------------------------------------------------- running

def benchmarks_dir() -> Path:
    folder = REPO / "benchmarks"
    if not (folder / "common.py").is_file():
        raise BenchError(f"the benchmark scripts are not in {folder}; `adapterhub bench` runs from a source checkout "
                         "(git clone ... && pip install -e '.[bench]')")
    return folder


def parse_suites(only: str | None) -> list[str]:
    if not only:
        return list(SUITES)
    names = [s.strip() for s in only.split(",") if s.strip()]
    bad = [s for s in names if s not in SUITES]
    if bad:
        raise ConfigError(f"unknown suite(s) {', '.join(map(repr, bad))} (choose from: {', '.join(SUITES)})."
                          f"{did_you_mean(bad[0], SUITES)}")
    return names


def run_suites(base: str, device: str, out: Path, quick: bool = False, only: str | None = None,
               quants: str | None = None, budget_s: float | None = None) -> list[str]:
    """Run each suite's script in a subprocess; -> the suites that failed. Logs go to <out>/logs/."""
    folder = benchmarks_dir()
    suites = parse_suites(only)
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    run_id = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    env = dict(os.environ, ADAPTERHUB_BENCH_RUN=run_id, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    command = "adapterhub bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])
    end = None if budget_s is None else time.monotonic() + budget_s
    failed = []
    for i, suite in enumerate(suites):
        script, _, _ = SUITES[suite]
        argv = [sys.executable, str(folder / script), "--base", base, "--device", device, "--out", str(out.resolve())]
        argv += ["--quick"] if quick else []
        if quants or suite == "runtime":  # runtime's default (fp32,nf4) is CPU's; on CUDA bf16 is the 16-bit mode
            argv += ["--quants", quants or ("bf16,nf4" if device.startswith("cuda") else "fp32,nf4")]
        soft = hard = None
        if end is not None:
            left = end - time.monotonic()
            soft = max(10.0, left * _share(suite, base) / sum(_share(s, base) for s in suites[i:]))
            hard = soft * 1.5 + 30
            if suite != "runtime":  # runtime.py has no soft budget: its hard limit is its share
                argv += ["--budget-s", f"{soft:.0f}"]
            else:
                hard = soft * 1.2 + 30
        log_path = out / "logs" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', base)}-{device}-{suite}.log"
        print(f"[{suite}] {script}" + (f" (budget {soft:.0f} s)" if soft else ""), flush=True)
        t0 = time.monotonic()
        status = _run(argv, env, log_path, hard)
        wall = time.monotonic() - t0
        print(f"[{suite}] {status} in {wall:.0f} s (log: {log_path})", flush=True)
        if status != "ok":
            failed.append(suite)
        with open(out / "bench.jsonl", "a") as fh:
            fh.write(json.dumps({"suite": "bench", "run": run_id, "metric": "suite_wall_s", "params": {"suite": suite},
                                 "value": round(wall, 1), "unit": "s", "status": status, "base": base, "device": device,
                                 "quick": quick, "command": command, "budget_s": soft}) + "\n")
    return failed


def _share(suite: str, base: str) -> float:
    """A suite's weight in the time budget (merge quality skips at once on a random base)."""
    return 2.0 if suite == "merge" and base.startswith("random:") else SUITES[suite][2]


def _run(argv: list[str], env: dict, log_path: Path, timeout: float | None) -> str:
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the script and any child it started
            proc.wait()
            return f"timed out after {timeout:.0f} s (rows written so far are kept)"
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    return "ok" if rc == 0 else f"failed (exit {rc})"


# ---------------------------------------------------------------- reading results

def load_rows(results: Path) -> list[dict]:
    """Every JSON line of <results>/*.jsonl (lines that do not parse are skipped)."""
    rows = []
    for path in sorted(Path(results).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "suite" in row and "metric" in row:
                rows.append(row)
    return rows


def latest(rows: list[dict]) -> list[dict]:
    """For each (suite, base, device): the rows of its latest run only."""
    last: dict[tuple, str] = {}
    for r in rows:
        k = (r["suite"], r.get("base"), r.get("device"))
        last[k] = max(last.get(k, ""), r.get("run", ""))
    return [r for r in rows if r.get("run", "") == last[(r["suite"], r.get("base"), r.get("device"))]]


def device_label(row: dict) -> str:
    env = row.get("env") or {}
    if str(row.get("device", "cpu")).startswith("cuda"):
        return env.get("gpu") or "CUDA GPU"
    return f"CPU ({env.get('cpu', '?')}, {env.get('threads', '?')} threads)"


def _group(row: dict) -> str:
    return f"{row.get('base')} on {device_label(row)}"


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def _f(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:.0f}"
    return str(v)


def _ratio(a, b) -> str:
    return "n/a" if a is None or b in (None, 0) else f"{a / b:.2f}x"


def _table(header: list[str], body: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return lines + [""]


def _by(rows, suite: str, metric: str | None = None) -> dict[str, list[dict]]:
    """{group label: rows} for one suite (and metric), in file order."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        if r["suite"] == suite and (metric is None or r["metric"] == metric):
            out.setdefault(_group(r), []).append(r)
    return out


def _value(rows, metric: str, **params):
    for r in rows:
        if r["metric"] == metric and all(r["params"].get(k) == v for k, v in params.items()):
            return r
    return None


# ---------------------------------------------------------------- the report

def build_report(results: Path, plots: bool = True) -> Path:
    """<results>/REPORT.md (+ PNGs unless plots=False) from the latest run of each suite."""
    results = Path(results)
    all_rows = load_rows(results)
    if not all_rows:
        raise BenchError(f"no benchmark results in {results}/ (*.jsonl); run: adapterhub bench --quick --out {results}")
    rows = latest(all_rows)
    plt = _matplotlib() if plots else None
    md = ["# adapterhub benchmark report", "",
          f"Generated by `adapterhub bench report` from the JSON lines in this folder ({len(rows)} measurements: "
          "the latest run of each suite per base and device). Comparisons are ratios of two numbers measured in "
          "the same run.", ""]
    md += _section_env(rows)
    sections = [_section_base, _section_adapters, _section_runtime, _section_forward, _section_ranking,
                _section_train, _section_merge]
    for section in sections:
        md += section(rows, results, plt)
    skipped = [r for r in rows if r["metric"] == "skipped"]
    if skipped:
        md += ["## Skipped", ""] + _table(["suite", "where", "params", "reason"],
                                          [[r["suite"], _group(r), json.dumps(r["params"]), r.get("reason", "")] for r in skipped])
    if not plots:
        md += ["PNG plots were not drawn (no matplotlib here); rebuild them with `pip install 'adapterhub[bench]'` "
               "and `adapterhub bench report --out <this folder>`.", ""]
    path = results / "REPORT.md"
    path.write_text("\n".join(md))
    return path


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise BenchError("the report's plots need matplotlib: pip install 'adapterhub[bench]' "
                         "(or pass --no-plots for the Markdown alone)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _section_env(rows) -> list[str]:
    seen: dict[tuple, dict] = {}
    for r in rows:
        if r["suite"] != "bench":
            seen.setdefault((r.get("base"), r.get("device"), r.get("run")), r)
    body = []
    for (base, device, run), r in sorted(seen.items(), key=lambda kv: str(kv[0])):
        env = r.get("env") or {}
        body.append([base, device_label(r), run, env.get("git"), env.get("torch"), env.get("transformers"),
                     env.get("peft"), env.get("bitsandbytes")])
    body = [list(x) for x in dict.fromkeys(tuple(b) for b in body)]
    md = ["## Runs", ""] + _table(["base", "device", "run", "git", "torch", "transformers", "peft", "bitsandbytes"], body)
    walls = [r for r in rows if r["suite"] == "bench"]
    if walls:
        by_run: dict[tuple, list[dict]] = {}
        for r in walls:
            by_run.setdefault((r["run"], r["command"], r["base"], r["device"]), []).append(r)
        for (run, command, base, device), rs in by_run.items():
            total = sum(r["value"] for r in rs)
            md += [f"`{command}` ({base}, {device}, run {run}): {total:.0f} s wall in all — "
                   + ", ".join(f"{r['params']['suite']} {r['value']:.0f} s" + ("" if r["status"] == "ok" else f" ({r['status']})")
                               for r in rs), ""]
    return md


def _save(fig, results: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(results / name, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return f"![{name}]({name})"


def _subplots(plt, n: int, width: float = 6.0, height: float = 3.6):
    """n panels, two per row; -> (figure, the n axes)."""
    n = max(1, n)
    cols, rows = min(n, 2), (n + 1) // 2
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    axes = [ax for row in axes for ax in row]
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _section_base(rows, results, plt) -> list[str]:
    groups = _by([r for r in rows if r["metric"] != "skipped"], "base")
    if not groups:
        return []
    md = ["## 1. Base memory and load time per quant mode", "",
          "param = parameter + buffer bytes as stored (4-bit weights count their packed bytes and absmax); "
          "peak RSS = the loading process's peak (imports included); RSS delta = growth over the load; "
          "peak GPU = the CUDA allocator's peak. Each quant mode loads in a fresh process.", ""]
    for label, rs in groups.items():
        quants = list(dict.fromkeys(r["params"]["quant"] for r in rs))
        body = []
        for q in quants:
            get = lambda m: (_value(rs, m, quant=q) or {}).get("value")  # noqa: E731
            dtype = next((r.get("dtype") for r in rs if r["params"]["quant"] == q), "")
            body.append([q, dtype, _mib(get("param_bytes")), _f(get("load_s")), _mib(get("peak_rss_bytes")),
                         _mib(get("rss_delta_bytes")), _mib(get("peak_gpu_bytes"))])
        md += [f"**{label}**", ""] + _table(["quant", "dtype", "param MiB", "load s", "peak RSS MiB", "RSS delta MiB",
                                             "peak GPU MiB"], body)
    if plt:
        fig, axes = _subplots(plt, len(groups))
        for ax, (label, rs) in zip(axes, groups.items()):
            quants = list(dict.fromkeys(r["params"]["quant"] for r in rs))
            cuda = any(r["metric"] == "peak_gpu_bytes" for r in rs)
            second = "peak_gpu_bytes" if cuda else "rss_delta_bytes"
            x = range(len(quants))
            for off, metric, name in ((-0.2, "param_bytes", "parameter bytes"),
                                      (0.2, second, "GPU peak" if cuda else "RSS growth on load")):
                ax.bar([i + off for i in x], [((_value(rs, metric, quant=q) or {}).get("value") or 0) / 2**20 for q in quants],
                       0.4, label=name)
            ax.set_xticks(list(x), quants)
            ax.set_ylabel("MiB")
            ax.set_title(label, fontsize=8)
            ax.legend(fontsize=8)
        md += [_save(fig, results, "base_memory.png"), ""]
    return md


def _section_adapters(rows, results, plt) -> list[str]:
    groups = _by([r for r in rows if r["metric"] != "skipped"], "adapters")
    if not groups:
        return []
    md = ["## 2. Adapter size per rank (q/k/v/o)", "",
          "file = adapter_model.safetensors (fp32); weights = the hub's A and B in the compute dtype; "
          "resident = measured memory growth per loaded adapter (RSS on CPU, CUDA allocated on GPU).", ""]
    for label, rs in groups.items():
        ranks = sorted({r["params"]["rank"] for r in rs})
        body = []
        for k in ranks:
            f, w, res = (((_value(rs, m, rank=k) or {}).get("value")) for m in
                         ("adapter_file_bytes", "adapter_weight_bytes", "adapter_resident_bytes"))
            body.append([k, _f(f / 1024 if f else None), _f(w / 1024 if w else None), _f(res / 1024 if res else None),
                         _ratio(res, w)])
        md += [f"**{label}** (quant {rs[0].get('quant')})", ""] + _table(
            ["rank", "file KiB", "weights KiB", "resident KiB", "resident / weights"], body)
    if plt:
        fig, axes = _subplots(plt, 1)
        ax = axes[0]
        for label, rs in groups.items():
            ranks = sorted({r["params"]["rank"] for r in rs})
            for metric, style, name in (("adapter_file_bytes", "o-", "file"), ("adapter_resident_bytes", "s--", "resident")):
                ax.plot(ranks, [((_value(rs, metric, rank=k) or {}).get("value") or 0) / 2**20 for k in ranks], style,
                        label=f"{name}: {label}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("LoRA rank")
        ax.set_ylabel("MiB per adapter")
        ax.legend(fontsize=7)
        md += [_save(fig, results, "adapter_size.png"), ""]
    return md


def _section_runtime(rows, results, plt) -> list[str]:
    groups = _by(rows, "runtime")
    if not groups:
        return []
    md = ["## 3. Cold load and switch latency vs resident adapters (adapterhub vs plain PEFT)", "",
          "cold load = read + check + place one more adapter (then unload it) with n resident; switch = make another "
          "resident adapter active. Median ms; lower is better.", ""]
    for label, rs in groups.items():
        ns = sorted({r["params"]["resident"] for r in rs if "resident" in r["params"]})
        body = []
        for n in ns:
            cl, sw = _value(rs, "cold_load_ms", resident=n) or {}, _value(rs, "switch_ms", resident=n) or {}
            body.append([n, _f(cl.get("value")), _f(cl.get("peft")), _ratio(cl.get("peft"), cl.get("value")),
                         _f(sw.get("value")), _f(sw.get("peft")), _ratio(sw.get("peft"), sw.get("value"))])
        md += [f"**{label}**", ""] + _table(["resident", "cold load ms (adapterhub)", "cold load ms (PEFT)", "PEFT / adapterhub",
                                             "switch ms (adapterhub)", "switch ms (PEFT)", "PEFT / adapterhub"], body)
        other = [r for r in rs if r["metric"] not in ("cold_load_ms", "switch_ms")]
        if other:
            md += _table(["metric", "params", "quant", "adapterhub", "plain PEFT", "notes"],
                         [[r["metric"], json.dumps(r["params"]), r.get("quant", "-"), f"{_f(r['value'])} {r['unit']}",
                           f"{_f(r['peft'])} {r['unit']}" if "peft" in r else "-", _notes(r)] for r in other])
    if plt:
        fig, axes = _subplots(plt, 2)
        for ax, metric, title in zip(axes, ("cold_load_ms", "switch_ms"), ("cold load", "switch")):
            for label, rs in groups.items():
                pts = sorted((r["params"]["resident"], r["value"], r.get("peft")) for r in rs if r["metric"] == metric)
                if not pts:
                    continue
                line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"adapterhub: {label}")
                ax.plot([p[0] for p in pts], [p[2] for p in pts], "s--", color=line.get_color(), label=f"PEFT: {label}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("resident adapters")
            ax.set_ylabel("ms (median)")
            ax.set_title(f"{title} latency vs resident adapters")
            ax.legend(fontsize=7)
        md += [_save(fig, results, "latency_vs_resident.png"), ""]
    return md


def _notes(r: dict) -> str:
    skip = {"suite", "run", "metric", "params", "value", "unit", "env", "peft", "base", "device", "quant", "dtype"}
    return ", ".join(f"{k}={_f(v)}" for k, v in r.items() if k not in skip)


def _mode(p: dict) -> str:
    return p["mode"] if p["mode"] in ("base", "single", "merged") else f"{p['mode']}-{p['adapters']}"


def _section_forward(rows, results, plt) -> list[str]:
    rs_all = [r for r in rows if r["suite"] == "forward" and r["metric"] == "forward_rows_per_s"]
    if not rs_all:
        return []
    groups: dict[str, list[dict]] = {}
    for r in rs_all:
        groups.setdefault(f"{_group(r)}, {r.get('quant')}", []).append(r)
    p0 = rs_all[0]["params"]
    md = ["## 4. Forward throughput (adapterhub vs plain PEFT)", "",
          f"rows/s for one batch of {p0['rows']} rows x {p0['seq']} tokens; mixed-k = k adapters among the rows in "
          "one forward, split-k = one forward per adapter on its rows, switching between them; merged = adapter "
          "folded into the base weights (n/a on 4-bit bases). 'vs single' is each tool against its own "
          "single-adapter throughput; max diff = the hub's answer logit vs the split (mixed) or unmerged (merged) result.", ""]
    for label, rs in groups.items():
        single = _value(rs, "forward_rows_per_s", mode="single") or {}
        body = [[_mode(r["params"]), _f(r["value"]), _f(r.get("peft")), _ratio(r["value"], r.get("peft")),
                 _ratio(r["value"], single.get("value")), _ratio(r.get("peft"), single.get("peft")),
                 _f(r.get("max_abs_diff"), 2) if "max_abs_diff" in r else r.get("note", "")] for r in rs]
        md += [f"**{label}**", ""] + _table(["mode", "adapterhub rows/s", "PEFT rows/s", "adapterhub / PEFT",
                                             "adapterhub vs single", "PEFT vs single", "max diff / note"], body)
    if plt:
        fig, axes = _subplots(plt, len(groups), width=7.0)
        for ax, (label, rs) in zip(axes, groups.items()):
            names = [_mode(r["params"]) for r in rs]
            x = range(len(rs))
            ax.bar([i - 0.2 for i in x], [r["value"] or 0 for r in rs], 0.4, label="adapterhub")
            ax.bar([i + 0.2 for i in x], [r.get("peft") or 0 for r in rs], 0.4, label="plain PEFT")
            ax.set_xticks(list(x), names, rotation=30, fontsize=8)
            ax.set_ylabel("rows/s (higher is better)")
            ax.set_title(label, fontsize=8)
            ax.legend(fontsize=8)
        md += [_save(fig, results, "forward_throughput.png"), ""]
    return md


def _section_ranking(rows, results, plt) -> list[str]:
    groups = _by(rows, "ranking", "ranking_candidates_per_s")
    if not groups:
        return []
    md = ["## 5. Ranking throughput with and without history-prefix reuse", "",
          "One user (10-item history) ranks N candidates under one adapter; reuse runs the history prefix once "
          "and shares its KV cache with every candidate.", ""]
    for label, rs in groups.items():
        body = []
        for n in sorted({r["params"]["candidates"] for r in rs}):
            on = (_value(rs, "ranking_candidates_per_s", candidates=n, reuse_prefix=True) or {})
            off = (_value(rs, "ranking_candidates_per_s", candidates=n, reuse_prefix=False) or {})
            body.append([n, rs[0].get("quant"), _f(on.get("value")), _f(off.get("value")), _ratio(on.get("value"), off.get("value")),
                         f"{on.get('prefix_tokens', '?')} + {_f(on.get('suffix_tokens'))}", _f(on.get("max_abs_p_diff"), 2)])
        md += [f"**{label}**", ""] + _table(["candidates", "quant", "cand/s with reuse", "cand/s without", "speed-up",
                                             "prefix + suffix tokens", "max P diff"], body)
    if plt:
        fig, axes = _subplots(plt, len(groups))
        for ax, (label, rs) in zip(axes, groups.items()):
            ns = sorted({r["params"]["candidates"] for r in rs})
            x = range(len(ns))
            for off, reuse, name in ((-0.2, True, "prefix reuse"), (0.2, False, "full prompts")):
                ax.bar([i + off for i in x], [(_value(rs, "ranking_candidates_per_s", candidates=n, reuse_prefix=reuse) or {})
                                              .get("value") or 0 for n in ns], 0.4, label=name)
            ax.set_xticks(list(x), [f"{n} candidates" for n in ns])
            ax.set_ylabel("candidates/s")
            ax.set_title(label, fontsize=8)
            ax.legend(fontsize=8)
        md += [_save(fig, results, "ranking.png"), ""]
    return md


def _section_train(rows, results, plt) -> list[str]:
    groups = _by(rows, "train")
    groups = {k: [r for r in v if r["metric"] != "skipped"] for k, v in groups.items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return []
    md = ["## 6. Training throughput and peak memory (LoRA, QLoRA)", "",
          "`Hub.train` on the built-in synthetic scenario, r=8 q/k/v/o; samples/s = steps x batch / the card's train_s "
          "(includes one validation pass); peak = process peak RSS on CPU (base included), "
          "torch.cuda.max_memory_allocated on GPU; 'before' = the same measure after the base was loaded.", ""]
    for label, rs in groups.items():
        body = []
        for r in rs:
            if r["metric"] != "train_samples_per_s":
                continue
            peak = _value(rs, "train_peak_bytes", method=r["params"]["method"]) or {}
            body.append([r["params"]["method"], r.get("quant"), r.get("dtype"), _f(r["value"]), r["params"]["steps"],
                         r["params"]["batch_size"], _f(r.get("tokens_per_sample")), _mib(peak.get("value")),
                         _mib(peak.get("before_bytes"))])
        md += [f"**{label}**", ""] + _table(["method", "quant", "dtype", "samples/s", "steps", "batch", "tokens/sample",
                                             "peak MiB", "before MiB"], body)
    if plt:
        fig, axes = _subplots(plt, 2)
        labels, speeds, peaks = [], [], []
        for label, rs in groups.items():
            for r in rs:
                if r["metric"] == "train_samples_per_s":
                    labels.append(f"{r['params']['method']} ({r.get('quant')})\n{r.get('base')}")
                    speeds.append(r["value"])
                    peaks.append(((_value(rs, "train_peak_bytes", method=r["params"]["method"]) or {}).get("value") or 0) / 2**20)
        axes[0].bar(labels, speeds)
        axes[0].set_ylabel("samples/s")
        axes[1].bar(labels, peaks, color="tab:orange")
        axes[1].set_ylabel("peak MiB")
        for ax in axes:
            ax.tick_params(axis="x", labelsize=7)
        md += [_save(fig, results, "training.png"), ""]
    return md


def _section_merge(rows, results, plt) -> list[str]:
    groups = _by(rows, "merge")
    if not groups:
        return []
    md = ["## 7. Quality kept by merges (AUC)", "",
          "Each scenario's test AUC with its own adapter, with an equal-weight merge of all the shipped adapters "
          "(cat: exact sum of deltas; ties: TIES + SVD, lossy), and with the bare base. kept = (merged - base) / "
          "(own - base).", ""]
    for label, rs in groups.items():
        aucs = [r for r in rs if r["metric"] == "merge_auc"]
        if not aucs:
            md += [f"**{label}**: skipped — " + "; ".join(r.get("reason", "") for r in rs if r["metric"] == "skipped"), ""]
            continue
        scen = list(dict.fromkeys(r["params"]["scenario"] for r in aucs))
        body = []
        for s in scen:
            get = lambda m: _value(aucs, "merge_auc", scenario=s, method=m) or {}  # noqa: E731
            body.append([s, get("own").get("n_examples", "?"), _f(get("own").get("value")), _f(get("cat").get("value")),
                         _f(get("ties").get("value")), _f(get("base").get("value")), _f(get("cat").get("kept"), 2),
                         _f(get("ties").get("kept"), 2)])
        n_ad = aucs[0]["params"].get("adapters")
        md += [f"**{label}** ({n_ad}-way merge of {', '.join(aucs[0].get('parents', []))})", ""] + _table(
            ["scenario", "examples", "own AUC", "cat AUC", "ties AUC", "base AUC", "kept (cat)", "kept (ties)"], body)
        if plt:
            fig, axes = _subplots(plt, 1, width=7.0)
            ax = axes[0]
            x = range(len(scen))
            for j, m in enumerate(("own", "cat", "ties", "base")):
                ax.bar([i + (j - 1.5) * 0.2 for i in x],
                       [(_value(aucs, "merge_auc", scenario=s, method=m) or {}).get("value") or 0 for s in scen], 0.2, label=m)
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
            ax.set_xticks(list(x), scen)
            ax.set_ylim(0.3, 1.0)
            ax.set_ylabel("test AUC")
            ax.set_title(label, fontsize=8)
            ax.legend(fontsize=8)
            md += [_save(fig, results, "merge_quality.png"), ""]
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m adapterhub.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_from_args(args)
    except AdapterHubError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
