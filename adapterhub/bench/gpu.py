"""The one-GPU run that benchmarks/gpu.sh starts: which suites on which bases, in what order and
time; which rows must be there; the result files.

    python -m adapterhub.bench.gpu --out OUT --budget-s 320     # on the GPU machine (gpu.sh does this)
    python -m adapterhub.bench.gpu --out OUT --check            # dry run on CPU, random:small bases
    python -m adapterhub.bench.gpu --plan                       # print the plan and the required rows

Stages run in order, each over its share of the time left (what one leaves flows to the next):
the rows the table needs for the ~1B base, then the same for the ~8B base, then the other suites
on the 1B base if time is left. A suite of a required stage that overruns is killed only when it
would eat into the next required stage's share (the optional stages' time absorbs it). Every suite runs NF4 first. A required row that is missing or
skipped is named with why (its `skipped` reason, or its suite's status and log) and the exit code is
1. The result files are at most MAX_FILES flat files in OUT (the GPU machine returns no more):
REPORT.md, results.jsonl (every measurement), logs.txt (every suite's log), plots.tar.gz (the
PNGs), check.txt (the required rows, found or not); gpu.sh adds gpu_sh.log and env.txt.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from . import SUITES, run_suites
from .report import build_report, latest, load_rows

SMALL, BIG = "random:llama-1b", "random:llama-8b"
CHECK_BASE = "random:small"  # the dry run: real suites, a base that runs NF4 on a CPU in seconds
MAX_FILES, MAX_FILE_BYTES, MAX_DEPTH = 8, 16 << 20, 2  # what the GPU machine returns from OUT
NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
TRAIN_ARGS = ["--scenarios", "synthetic", "--modes", "ours,peft"]  # no real data travels; the main ratio


@dataclasses.dataclass(frozen=True)
class Stage:
    slot: str                 # "small" or "big": which base
    suites: str               # for adapterhub.bench.parse_suites
    weight: float             # its share of the time left, against the stages after it
    required: bool            # holds rows the table needs
    quants: str | None = None  # for every suite of the stage (None: each suite's CUDA default, NF4 first)


STAGES = (
    Stage("small", "base,runtime,train", 0.34, True),
    Stage("big", "base,runtime,train", 0.46, True),
    Stage("small", "forward,ranking,adapters", 0.14, False),
    Stage("small", "concurrency", 0.06, False, quants="nf4"),  # NF4, not the CPU default fp32
)
EXTRA = {"train": TRAIN_ARGS, "runtime": ["--quants", "nf4"]}
CHECK_EXTRA = {"train": TRAIN_ARGS + ["--one-process"], "base": ["--one-process"]}  # the dry run takes the CUDA path


def required_rows(device: str) -> list[tuple[str, str, dict, str | None]]:
    """(suite, metric, params it must have, quant) of each row the table needs, for each base."""
    cuda = device.startswith("cuda")
    memory = "steady_gpu_bytes" if cuda else "param_bytes"
    peak = "train_peak_gpu_bytes" if cuda else "train_peak_bytes"
    rows = [("base", memory, {"quant": q}, q) for q in ("nf4", "bf16")]
    rows += [("runtime", m, {"resident": n}, None) for m in ("cold_load_ms", "switch_ms") for n in (1, 64)]
    rows += [("runtime", "mixed_vs_single_throughput", {}, "nf4")]
    rows += [("train", m, {"mode": mode}, "nf4") for m in ("train_candidates_per_s", peak) for mode in ("ours", "peft")]
    rows += [("train", "rank_candidates_per_s", {"mode": "score"}, "nf4")]
    return rows


def bases(check: bool, small: str, big: str) -> dict[str, str]:
    return {"small": CHECK_BASE, "big": CHECK_BASE} if check else {"small": small, "big": big}


def run_plan(work: Path, device: str, slots: dict[str, str], budget_s: float, check: bool) -> list[dict]:
    """Every stage in order over its share of the time left; -> [{stage, base, budget_s, wall_s, failed}].
    check: the dry run (--quick suites; base and train in one process each, as on CUDA)."""
    end = time.monotonic() + budget_s
    done = []
    for i, stage in enumerate(STAGES):
        left = end - time.monotonic()
        rest = sum(s.weight for s in STAGES[i:])
        share = left * stage.weight / rest
        # a required stage may overrun into the optional stages' time, never into a later required one's
        hard = share + (left * sum(s.weight for s in STAGES[i:] if not s.required) / rest if stage.required else 0)
        base = slots[stage.slot]
        print(f"[gpu] stage {i + 1}/{len(STAGES)}: {base} {stage.suites} ({share:.0f} s of {left:.0f} s left)", flush=True)
        t = time.monotonic()
        extra = {**EXTRA, **CHECK_EXTRA} if check else EXTRA
        failed = run_suites(base, device, work, quick=check, only=stage.suites, quants=stage.quants,
                            budget_s=max(0.0, share), extra=extra, hard_s=hard)  # records a suite it cannot start
        done.append({"stage": i + 1, "base": base, "suites": stage.suites, "budget_s": round(share),
                     "wall_s": round(time.monotonic() - t), "failed": failed})
    return done


def verdict(work: Path, device: str, slots: dict[str, str]) -> list[str]:
    """One line per required row: 'ok ...' or 'MISSING ...: why'."""
    every = load_rows(work)
    rows = latest(every)
    # each stage is its own run: a suite's status is its last, whichever run that was
    status = {(r["base"], r["params"]["suite"]): r["status"] for r in every if r["suite"] == "bench"}
    lines = []
    for base in dict.fromkeys(slots[s.slot] for s in STAGES if s.required):
        for suite, metric, params, quant in required_rows(device):
            mine = [r for r in rows if r["suite"] == suite and r.get("base") == base and r.get("device") == device
                    and (quant is None or r.get("quant") == quant)
                    and all(r["params"].get(k) == v for k, v in params.items())]
            what = f"{base} {suite} {metric} {json.dumps(params)}" + (f" ({quant})" if quant else "")
            got = [r for r in mine if r["metric"] == metric and r.get("value") is not None]
            if got:
                lines.append(f"ok       {what}: {got[0]['value']:.4g} {got[0]['unit']}")
                continue
            skipped = [r.get("reason") for r in mine if r["metric"] == "skipped"]
            why = (f"skipped: {skipped[0]}" if skipped else
                   f"suite {status[(base, suite)]}" if status.get((base, suite), "ok") != "ok" else
                   "suite did not run" if (base, suite) not in status else "no such row (see logs.txt)")
            lines.append(f"MISSING  {what}: {why}")
    return lines


def collect(work: Path, out: Path, check_lines: list[str], plan: list[dict]) -> list[Path]:
    """The result files, flat in `out`; -> their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    rows = [line for f in sorted(work.glob("*.jsonl")) for line in f.read_text().splitlines() if line.strip()]
    written.append(_write(out / "results.jsonl", "\n".join(rows) + "\n"))
    logs = [f"==> {p.name} <==\n{p.read_text(errors='replace')}" for p in sorted((work / "logs").glob("*.log"))]
    written.append(_write(out / "logs.txt", "\n".join(logs)))
    missing = [x for x in check_lines if x.startswith("MISSING")]
    head = ["# Required rows: " + (f"{len(missing)} MISSING" if missing else "all present"), ""]
    head += [f"stage {p['stage']}: {p['base']} {p['suites']}: {p['wall_s']} s of {p['budget_s']} s"
             + (f", failed: {', '.join(p['failed'])}" if p["failed"] else "") for p in plan]
    check_text = "\n".join(head + [""] + check_lines) + "\n"
    written.append(_write(out / "check.txt", check_text))
    report = work / "REPORT.md"
    if report.is_file():
        text = report.read_text()
        written.append(_write(out / "REPORT.md", "```\n" + check_text + "```\n\n" + text))
    pngs = sorted(work.glob("*.png"))
    if pngs:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for p in pngs:
                tar.add(p, arcname=p.name)
        (out / "plots.tar.gz").write_bytes(buf.getvalue())
        written.append(out / "plots.tar.gz")
    return written


def _write(path: Path, text: str) -> Path:
    """A text file of at most MAX_FILE_BYTES (the middle of a longer one is cut, and says so)."""
    data = text.encode()
    if len(data) > MAX_FILE_BYTES:
        keep = MAX_FILE_BYTES // 2 - 100
        data = data[:keep] + f"\n[... {len(data) - 2 * keep} bytes cut ...]\n".encode() + data[-keep:]
    path.write_bytes(data)
    return path


def check_out(out: Path) -> list[str]:
    """What in `out` the GPU machine would not return: too many files, too big, too deep, odd names."""
    files = [p for p in out.rglob("*") if p.is_file() or p.is_symlink()]
    problems = [f"{len(files)} files, more than {MAX_FILES}"] if len(files) > MAX_FILES else []
    for p in files:
        rel = p.relative_to(out)
        if p.is_symlink():
            problems.append(f"{rel}: a link")
        elif p.stat().st_size > MAX_FILE_BYTES:
            problems.append(f"{rel}: {p.stat().st_size} bytes, more than {MAX_FILE_BYTES}")
        if len(rel.parts) > MAX_DEPTH + 1:
            problems.append(f"{rel}: more than {MAX_DEPTH} folders down")
        if not all(NAME_RE.fullmatch(part) for part in rel.parts):
            problems.append(f"{rel}: a name with characters other than letters, digits, '.', '_', '-'")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="folder for the result files (created; at most 8 files land in it)")
    ap.add_argument("--budget-s", type=float, default=None, help="time for the suites (default 320; --check 420)")
    ap.add_argument("--check", action="store_true", help=f"dry run on CPU with {CHECK_BASE} bases and --quick suites")
    ap.add_argument("--small", default=SMALL, help="the ~1B base")
    ap.add_argument("--big", default=BIG, help="the ~8B base")
    ap.add_argument("--work", default=None, help="where the suites write (default: a temporary folder)")
    ap.add_argument("--plan", action="store_true", help="print the stages and the required rows, run nothing")
    args = ap.parse_args(argv)
    device = "cpu" if args.check else "cuda"
    slots = bases(args.check, args.small, args.big)
    if args.plan or not args.out:
        for s in STAGES:
            print(f"{slots[s.slot]}: {s.suites} ({'required rows' if s.required else 'if time is left'}; "
                  f"{s.weight:.0%} of the time left; {', '.join(SUITES[x][1] for x in s.suites.split(','))})")
        print("required, per base:", *(f"  {s} {m} {p} {q or ''}" for s, m, p, q in required_rows(device)), sep="\n")
        return 0 if args.plan else 2
    budget = args.budget_s if args.budget_s is not None else (420.0 if args.check else 320.0)
    work = Path(args.work or tempfile.mkdtemp(prefix="adapterhub-gpu-"))
    plan = run_plan(work, device, slots, budget, check=args.check)
    try:
        import matplotlib  # noqa: F401
        plots = True
    except ImportError:
        plots = False
    try:
        build_report(work, plots=plots)
    except Exception as e:  # the rows and logs still go back; the report can be rebuilt from them
        print(f"[gpu] report failed: {type(e).__name__}: {e}", flush=True)
    lines = verdict(work, device, slots)
    collect(work, Path(args.out), lines, plan)
    problems = check_out(Path(args.out))
    print("\n".join(lines), flush=True)
    for p in problems:
        print(f"[gpu] result files: {p}", flush=True)
    missing = [x for x in lines if x.startswith("MISSING")]
    if missing:
        print(f"[gpu] FAILED: {len(missing)} required row(s) missing (above, and {args.out}/check.txt)", flush=True)
    return 1 if missing or problems else 0


if __name__ == "__main__":
    sys.exit(main())
