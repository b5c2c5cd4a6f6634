"""Keeping a training run's work: its state at every check saved to disk (so `--resume` continues a
killed run where its last check left it), and Ctrl-C that stops after the current step instead of
throwing the run away.

A run's folder is <registry>/.runs/<name>/: state.json (step, clock, history, the best check's
valid figure and scores, the rngs' and the group order's state) and tensors.safetensors (the
trainable LoRA weights, the best check's weights, AdamW's moments, torch's rng). Both are written
to a temp folder and swapped in with one rename, so a kill mid-save leaves the previous checkpoint.
Only safetensors and JSON are read back: no pickles.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError
from ..files import fsync_dir, write_file
from ..safetensors_io import read_safetensors, save_safetensors

log = logging.getLogger(__name__)
RUNS = ".runs"
STATE, TENSORS = "state.json", "tensors.safetensors"


@dataclass
class RunState:
    """What the loop has done so far; everything a resumed run needs besides the tensors."""
    step: int = 0
    step_s: float = 0.0               # training seconds so far (checks excluded): max_minutes counts these
    bad_checks: int = 0
    n_candidates: int = 0
    history: list = field(default_factory=list)
    best_value: float = -math.inf
    best_step: int = 0
    best_scores: list | None = None   # the best check's valid P(yes) per part
    interrupted: dict | None = None   # {"at_step", "reason"} when Ctrl-C stopped the run
    domain_log: list = field(default_factory=list)   # domain adaptation's log (done before step 1)


def run_folder(registry_root, name: str) -> Path:
    return Path(registry_root) / RUNS / name


class Checkpoints:
    """Save and restore one run's state under run_folder(); `identity` (config, data, base) must
    match for a resume."""

    def __init__(self, folder: Path, identity: dict):
        self.folder, self.identity = Path(folder), identity

    def exists(self) -> bool:
        return (self.folder / STATE).is_file() and (self.folder / TENSORS).is_file()

    def save(self, state: RunState, params, best_weights, opt, sched, rng, order: dict) -> None:
        tensors = {f"param.{i}": p.detach().cpu().contiguous() for i, p in enumerate(params)}
        tensors.update({f"best.{i}": w.detach().cpu().contiguous() for i, w in enumerate(best_weights or [])})
        opt_state = opt.state_dict()
        for i, s in opt_state["state"].items():
            for k, v in s.items():
                tensors[f"opt.{i}.{k}"] = v.detach().cpu().reshape(-1).contiguous() if v.dim() == 0 else v.detach().cpu()
        tensors["torch_rng"] = torch.get_rng_state()
        body = {"identity": self.identity, "state": {**asdict(state), "best_value": _finite(state.best_value)},
                "opt": {"param_groups": opt_state["param_groups"],
                        "scalars": {str(i): [k for k, v in s.items() if v.dim() == 0] for i, s in opt_state["state"].items()}},
                "sched": {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"},
                "rng": _json_rng(rng.getstate()), "order": {str(k): v for k, v in order.items()},
                "n_params": len(params), "has_best": best_weights is not None}
        tmp = self.folder.with_name(f".tmp-{self.folder.name}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            save_safetensors(tensors, tmp / TENSORS)
            write_file(tmp / STATE, json.dumps(body).encode())
            old = self.folder.with_name(f".old-{self.folder.name}-{uuid.uuid4().hex[:8]}")
            if self.folder.exists():
                os.replace(self.folder, old)
            os.replace(tmp, self.folder)
            shutil.rmtree(old, ignore_errors=True)
            fsync_dir(self.folder.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def restore(self, params, opt, sched, rng) -> tuple[RunState, list | None, dict]:
        """Load the saved state into params, opt, sched and rng -> (state, best weights, order)."""
        body = json.loads((self.folder / STATE).read_text())
        mismatch = {k: (body["identity"].get(k), v) for k, v in self.identity.items() if body["identity"].get(k) != v}
        if mismatch:
            what = ", ".join(f"{k} (checkpoint {a!r}, now {b!r})" for k, (a, b) in mismatch.items())
            raise ConfigError(f"the checkpoint in {self.folder} is of another run: {what}. Pass the options it was "
                              "started with, or start afresh without --resume")
        tensors, _ = read_safetensors(self.folder / TENSORS)
        if body["n_params"] != len(params):
            raise ConfigError(f"the checkpoint in {self.folder} holds {body['n_params']} trainable tensors, this run "
                              f"has {len(params)}: start afresh without --resume")
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(tensors[f"param.{i}"])
        best = [tensors[f"best.{i}"].to(params[i].device) for i in range(len(params))] if body["has_best"] else None
        state_tensors = {}
        for i, scalars in body["opt"]["scalars"].items():
            entry = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
            state_tensors[int(i)] = {k: (v.reshape(()) if k in scalars else v.to(params[int(i)].device))
                                     for k, v in entry.items()}
        opt.load_state_dict({"state": state_tensors, "param_groups": body["opt"]["param_groups"]})
        sched.load_state_dict({**body["sched"], "lr_lambdas": [None] * len(opt.param_groups)})
        rng.setstate(_rng_state(body["rng"]))
        torch.set_rng_state(tensors["torch_rng"])
        state = RunState(**{**body["state"], "best_value": body["state"]["best_value"] if
                            body["state"]["best_value"] is not None else -math.inf})
        order = {(None if k == "None" else k if k == "seen" else int(k)): v for k, v in body["order"].items()}
        return state, best, order

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _finite(x: float):
    return None if x is None or not math.isfinite(x) else x


def _json_rng(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state(saved) -> tuple:
    version, internal, gauss = saved
    return version, tuple(internal), gauss


class StopOnInterrupt:
    """Ctrl-C while the body runs: the first sets `requested` (the loop stops after its current step
    and the run is evaluated and published), the second raises KeyboardInterrupt (abort). Only the
    main thread can take the signal; elsewhere this does nothing."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: stopping after this step; the best check is evaluated and published "
                    "(Ctrl-C again to abort without publishing)")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def human_duration(seconds: float) -> str:
    """12 s, 4 min 10 s, 3 h 12 min."""
    if not math.isfinite(seconds):
        return "unknown"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {(s % 3600) // 60} min"
