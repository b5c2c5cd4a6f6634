"""Child processes for tests/test_reliability.py: each publishes one adapter, maybe stopping half-way.
(tests/test_hostile_input.py uses its tensors too.)

    python tests/reliability_worker.py SIGNAL_DIR ROOT,NAME,SEED[,POINT] ...

Imports torch and adapterhub.registry once (no model), then forks one process per job, so a
job costs a fork rather than an interpreter start. Each job writes SIGNAL_DIR/ready-SEED,
waits for SIGNAL_DIR/go, and publishes NAME (tensors unique to SEED, promote=True) into ROOT.
With a POINT it stops there instead, writes its pid to SIGNAL_DIR/paused-SEED and sleeps until
the test SIGKILLs it. A finished job writes the version it got to SIGNAL_DIR/done-SEED.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

import adapterhub.files as files
import adapterhub.registry as registry

# Where a job can stop, in the order a publish reaches them.
POINTS = ("weights", "config", "card", "rename", "promote", "current")
STOP_S = 300
CONFIG = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}


def tensors(seed: int) -> dict[str, torch.Tensor]:
    """Small LoRA tensors whose content is unique to `seed`."""
    g = torch.Generator().manual_seed(seed)
    return {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(2, 8, generator=g),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.full((8, 2), float(seed))}


def _install(point: str, stop) -> None:
    """Wrap the registry's writers so that a publish calls stop() at `point`."""
    save, write, atomic, replace = registry.save_safetensors, files.write_file, registry.atomic_write, os.replace

    def save_safetensors(ts, path):
        if point == "weights":  # half the weights file written
            from safetensors.torch import save as to_bytes
            data = to_bytes({k: v.contiguous() for k, v in ts.items()})
            write(path, data[: len(data) // 2])
            stop()
        return save(ts, path)

    def write_file(path, data):
        if (point, path.name) in (("config", registry.CONFIG), ("card", registry.CARD)):
            write(path, data[: len(data) // 2])  # half the file written
            stop()
        write(path, data)
        if point == "current" and path.name.startswith(".tmp-current"):
            stop()  # the new `current` written beside the old one, not yet renamed over it

    def atomic_write(path, text):
        if point == "promote":  # the version is in place, `current` not yet touched
            stop()
        atomic(path, text)

    def os_replace(src, dst, **kw):
        if point == "rename" and Path(src).name.startswith(".tmp-v"):
            stop()  # every file of the version written and fsynced, its folder not yet renamed
        replace(src, dst, **kw)

    # registry writes a version's files itself and `current` through files.atomic_write: patch both homes
    registry.save_safetensors, registry.atomic_write = save_safetensors, atomic_write
    registry.write_file = files.write_file = write_file
    os.replace = os_replace


def job(signals: Path, root: str, name: str, seed: int, point: str | None) -> None:
    def stop():
        (signals / f"paused-{seed}").write_text(str(os.getpid()))
        time.sleep(STOP_S)  # the test SIGKILLs us here
        os._exit(3)         # never killed: the test failed; don't outlive it for long

    if point:
        _install(point, stop)
    (signals / f"ready-{seed}").write_text(str(os.getpid()))
    while not (signals / "go").exists():
        time.sleep(0.002)
    version = registry.Registry(root).publish(name, tensors(seed), CONFIG, {"scenario": "toy", "seed": seed},
                                              promote=True)
    (signals / f"done-{seed}").write_text(version)


def main(signals: str, specs: list[str]) -> int:
    pids = []
    for spec in specs:
        root, name, seed, point = (spec.split(",") + [None])[:4]
        assert point in POINTS + (None,), point
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                job(Path(signals), root, name, int(seed), point)
            except BaseException as e:  # reported through the exit code and stderr
                print(f"job {spec}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        pids.append(pid)
    failed = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        failed += os.waitstatus_to_exitcode(status) not in (0, -9)  # -9: killed by the test on purpose
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
