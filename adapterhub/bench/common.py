"""What every suite shares: one JSON line per measurement with the context to trust it, the common
arguments, a soft time budget, timing, and random adapters to measure with.

Light to import (torch is imported inside the functions that need it).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ..memory import gpu_allocated_bytes, rss_bytes  # noqa: F401  (the suites import rss_bytes from here)

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
RANK = 8


def used_bytes(device) -> int:
    """Memory an allocation shows up in: the CUDA allocator on a GPU (after the queued work), the
    process RSS on CPU."""
    if str(device).startswith("cuda"):
        return gpu_allocated_bytes(device)
    return rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident set (Linux reports ru_maxrss in KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sync() -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def dtype_of(quant: str, device) -> str:
    """Weight storage / compute dtype of a quant mode on a device (4/8-bit layers compute in bf16 on CUDA)."""
    compute = "bfloat16" if str(device).startswith("cuda") else "float32"
    return {"fp32": "float32", "bf16": "bfloat16", "nf4": f"nf4/{compute}", "int8": f"int8/{compute}"}.get(quant, str(quant))


def git_sha() -> str:
    """HEAD's short sha (+'-dirty' with uncommitted changes); $ADAPTERHUB_GIT_SHA where there is no git."""
    try:
        cwd = Path(__file__).parent
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=cwd, timeout=10).stdout.strip()
        if sha and subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                  text=True, cwd=cwd, timeout=10).stdout.strip():
            sha += "-dirty"
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return sha or os.environ.get("ADAPTERHUB_GIT_SHA") or "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    import torch
    import transformers
    import peft
    env = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
           "python": platform.python_version(), "threads": torch.get_num_threads(), "git": git_sha(),
           "cpu": cpu_model(), "cpus": os.cpu_count()}
    try:
        import accelerate
        env["accelerate"] = accelerate.__version__
    except ImportError:
        env["accelerate"] = None
    try:
        import bitsandbytes
        env["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        env["bitsandbytes"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def row_logits(hub, keys, rows: list[list[int]]):
    """Yes-No logits of plain prompts (token ids) through the hub's one forward, Hub.packed_logits:
    each row a packed group of its own. keys: one adapter key for every row, or one per row."""
    return hub.packed_logits(keys, [([], [r]) for r in rows])


class Recorder:
    """Collects measurements; each is appended as one JSON line to <out>/<suite>.jsonl."""

    def __init__(self, suite: str, out: str, **context):
        self.suite = suite
        self.path = Path(out) / f"{suite}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.context = dict(context)
        self.env = environment(context.get("device", "cpu"))
        # `adapterhub bench` gives every script of one invocation the same run id
        self.run = os.environ.get("ADAPTERHUB_BENCH_RUN") or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.rows: list[dict] = []

    def record(self, metric: str, params: dict, value: float, unit: str = "ms", extra: dict | None = None) -> dict:
        row = {"suite": self.suite, "run": self.run, "metric": metric, "params": params, "value": value, "unit": unit,
               **self.context, **(extra or {}), "env": self.env}
        if "quant" in self.context and "dtype" not in row:
            row["dtype"] = dtype_of(self.context["quant"], self.context.get("device", "cpu"))
        self.rows.append(row)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        return row

    def pair(self, metric: str, params: dict, ours: float, peft: float, unit: str = "ms", extra: dict | None = None):
        """adapterhub and plain PEFT, measured in the same run."""
        return self.record(metric, params, ours, unit, {"peft": peft, **(extra or {})})

    def print_table(self) -> None:
        print(f"\n| metric | params | quant | adapterhub | plain PEFT | notes |\n|---|---|---|---|---|---|")
        for r in self.rows:
            skip = {"suite", "run", "metric", "params", "value", "unit", "env", "peft", "base", "device", "quant", "dtype"}
            notes = ", ".join(f"{k}={_fmt(v)}" for k, v in r.items() if k not in skip)
            peft = _fmt(r["peft"]) + " " + r["unit"] if "peft" in r else "-"
            print(f"| {r['metric']} | {json.dumps(r['params'])} | {r.get('quant', '-')} | {_fmt(r['value'])} {r['unit']} | {peft} | {notes} |")
        print(f"\n{self.path} (device {self.context.get('device')}, base {self.context.get('base')}, git {self.env['git']})")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


# ---------------------------------------------------------------- shared by the suites

def add_args(ap, quants: str = "auto") -> None:
    """The arguments every suite takes (`adapterhub bench` passes them through)."""
    ap.add_argument("--base", default="smollm2-135m", help="base spec: smollm2-135m, random:<preset>, a folder")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (CPU)")
    ap.add_argument("--quants", default=quants, help="comma-separated quant modes; 'auto' = fp32,nf4 on CPU, nf4,bf16 on CUDA")
    ap.add_argument("--out", default=str(Path("benchmarks") / "results"),
                    help="folder for <suite>.jsonl (default ./benchmarks/results)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="soft time budget: repeats shrink to fit it, what does not fit is skipped (a 'skipped' row)")


def quant_list(arg: str, device: str) -> list[str]:
    """'auto': nf4 then bf16 on CUDA (NF4 is what a GPU run is for: it must not be the mode a short
    budget leaves out); fp32 then nf4 on CPU (the CPU figures' long-standing order)."""
    if arg == "auto":
        return ["nf4", "bf16"] if str(device).startswith("cuda") else ["fp32", "nf4"]
    return [q.strip() for q in arg.split(",") if q.strip()]


class Budget:
    """A soft deadline, so a suite finishes inside its share of `adapterhub bench --budget-s` instead of
    being killed: it checks over() between measurements (recording a `skipped` row for what does not
    fit) and sizes repeats with fit(), each of the `parts` measurements to come getting an equal share
    of the time left."""

    def __init__(self, seconds: float | None, parts: int = 1):
        self.end = None if seconds is None else time.monotonic() + seconds
        self.parts = parts

    def over(self) -> bool:
        return self.end is not None and time.monotonic() > self.end

    def left(self, default: float = 3600.0) -> float:
        return default if self.end is None else max(1.0, self.end - time.monotonic())

    def fits(self, seconds: float) -> bool:
        """Whether `seconds` more work ends before the deadline."""
        return self.end is None or time.monotonic() + seconds <= self.end

    def share(self) -> float:
        """Seconds for the next measurement (inf without a budget); counts it as one of the parts done."""
        if self.end is None:
            return math.inf
        s = max(0.0, self.end - time.monotonic()) / max(1, self.parts)
        self.parts = max(1, self.parts - 1)
        return s

    def fit(self, want: int, one_s: float, least: int = 1) -> int:
        """Repeats (least..want) of a one_s-second call that fit in the next measurement's share."""
        s = self.share()
        return want if s == math.inf else max(least, min(want, int(s / max(one_s, 1e-6))))


def timed_s(fn) -> float:
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def median_ms(fn, repeat: int) -> float:
    return statistics.median(1000 * timed_s(fn) for _ in range(repeat))


def publish_random_adapters(hub, n: int, r: int = RANK, seed: int = 0, start: int = 0) -> list[str]:
    """Publish n random LoRA adapters (q/k/v/o) named a<start>.. to the hub's registry; -> their names."""
    import torch
    from ..lora import peft_key
    g = torch.Generator().manual_seed(seed * 10_000 + start)
    names = []
    for i in range(start, start + n):
        tensors = {}
        for path, m in hub.wrapped.items():
            if path.rsplit(".", 1)[-1] in TARGETS:
                tensors[peft_key(path, "A")] = torch.randn(r, m.in_features, generator=g) * 0.02
                tensors[peft_key(path, "B")] = torch.randn(m.out_features, r, generator=g) * 0.02
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
                  "target_modules": list(TARGETS), "bias": "none"}
        name = f"a{i:03d}"
        hub.registry.publish(name, tensors, config, {"scenario": "bench", "base": {"fingerprint": hub.fingerprint}})
        names.append(name)
    return names


def attempt(fn, *args) -> dict:
    """fn(*args), or {"skipped": "failed: <error>"} with the traceback on stderr (the suite's log): in a
    child running several modes, one that fails (out of memory, a kernel this GPU lacks) does not take
    the modes after it down with it."""
    import traceback
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001  (recorded as the mode's skip reason; the run goes on)
        traceback.print_exc()
        return {"skipped": f"failed: {type(e).__name__}: {str(e)[:300]}"}


def child_lines(module: str, args: list[str], timeout: float):
    """Run `python -m <module> <args>` (a suite's --child mode: its memory peaks are its own) and yield
    each JSON line it prints as it prints it, so the caller records every finished measurement before
    the next one runs (a child killed later, or its suite killed by the runner, loses only what was
    running). The child's stderr passes through to this process's (the suite's log). Raises
    RuntimeError with the child's last stderr line when it fails or runs past timeout."""
    import collections
    import threading
    proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    tail: collections.deque = collections.deque(maxlen=20)

    def copy_stderr():
        for line in proc.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.strip():
                tail.append(line.strip())
    copier = threading.Thread(target=copy_stderr, daemon=True)
    copier.start()
    killed = threading.Event()
    timer = threading.Timer(timeout, lambda: (killed.set(), proc.kill()))
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith("{"):
                yield json.loads(line)
            else:
                sys.stdout.write(line)  # the child's own table and notes, into the suite's log
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        copier.join(timeout=10)
    if rc != 0 or killed.is_set():
        why = f"timed out after {timeout:.0f} s" if killed.is_set() else f"exit {rc}"
        raise RuntimeError(f"{why}: {tail[-1] if tail else 'no output'}")
