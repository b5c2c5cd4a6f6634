"""Adapter file size and resident bytes per LoRA rank.

    python -m adapterhub.bench.adapters --quick                         # CPU, SmolLM2-135M NF4, ~30 s
    python -m adapterhub.bench.adapters --base random:llama-1b --device cuda

Random adapters (q/k/v/o) of each rank are published to a temporary registry and loaded into the
hub. Rows (suite "adapters"): adapter_file_bytes (adapter_model.safetensors, fp32 as published),
adapter_weight_bytes (the hub's A and B in the base's compute dtype), adapter_resident_bytes
(growth of process RSS on CPU / CUDA allocated memory, averaged over N adapters loaded together).
With --budget-s a rank that is not expected to fit (it costs up to twice the one before) is skipped.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

from .common import TARGETS, Budget, Recorder, add_args, publish_random_adapters, quant_list, used_bytes

RANKS = (4, 8, 16, 32, 64)
N_RESIDENT, N_RESIDENT_QUICK = 8, 4


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap, quants="nf4")
    args = ap.parse_args(argv)
    from ..hub import Hub
    from ..registry import Registry
    budget = Budget(args.budget_s)
    n = N_RESIDENT_QUICK if args.quick else N_RESIDENT
    quant = quant_list(args.quants, args.device)[0]
    rec = Recorder("adapters", args.out, base=args.base, device=args.device, quant=quant)
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(base=args.base, registry=Path(tmp) / "r0", quant=quant, device=args.device)
        last_s = 0.0
        for r in RANKS:
            params = {"rank": r, "targets": ",".join(TARGETS)}
            if budget.over() or not budget.fits(2 * last_s):  # a rank costs up to twice the one before
                rec.record("skipped", params, None, unit="", extra={"reason": "time budget"})
                continue
            t = time.monotonic()
            hub.registry = Registry(Path(tmp) / f"r{r}")
            names = publish_random_adapters(hub, n, r=r, seed=r)
            file_bytes = (hub.registry.resolve(names[0]) / "adapter_model.safetensors").stat().st_size
            gc.collect()
            before = used_bytes(hub.device)
            adapters = [hub.load(x) for x in names]
            resident = (used_bytes(hub.device) - before) / n
            rec.record("adapter_file_bytes", params, file_bytes, unit="B")
            rec.record("adapter_weight_bytes", params, adapters[0].weight_bytes, unit="B",
                       extra={"weight_dtype": str(hub.base.compute_dtype).replace("torch.", "")})
            rec.record("adapter_resident_bytes", params, resident, unit="B",
                       extra={"measured_over": n, "memory": "cuda_allocated" if hub.device.type == "cuda" else "rss"})
            del adapters
            for x in names:
                hub.unload(x)
            last_s = time.monotonic() - t
    rec.print_table()


if __name__ == "__main__":
    sys.exit(main())
