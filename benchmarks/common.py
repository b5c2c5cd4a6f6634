"""What every benchmark shares: one JSON line per measurement, with the context to trust it."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def environment(device: str) -> dict:
    import torch
    import transformers
    import peft
    env = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
           "python": platform.python_version(), "threads": torch.get_num_threads(), "git": git_sha(),
           "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    try:
        import bitsandbytes
        env["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        env["bitsandbytes"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


class Recorder:
    """Collects measurements; each is appended as one JSON line to <out>/<suite>.jsonl."""

    def __init__(self, suite: str, out: str, **context):
        self.suite = suite
        self.path = Path(out) / f"{suite}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.context = dict(context)
        self.env = environment(context.get("device", "cpu"))
        self.run = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.rows: list[dict] = []

    def record(self, metric: str, params: dict, value: float, unit: str = "ms", extra: dict | None = None) -> dict:
        row = {"suite": self.suite, "run": self.run, "metric": metric, "params": params, "value": value, "unit": unit,
               **self.context, **(extra or {}), "env": self.env}
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
            skip = {"suite", "run", "metric", "params", "value", "unit", "env", "peft", "base", "device", "quant"}
            notes = ", ".join(f"{k}={_fmt(v)}" for k, v in r.items() if k not in skip)
            peft = _fmt(r["peft"]) + " " + r["unit"] if "peft" in r else "-"
            print(f"| {r['metric']} | {json.dumps(r['params'])} | {r.get('quant', '-')} | {_fmt(r['value'])} {r['unit']} | {peft} | {notes} |")
        print(f"\n{self.path} (device {self.context.get('device')}, base {self.context.get('base')}, git {self.env['git']})")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)
