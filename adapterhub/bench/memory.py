"""Base memory per quant mode: parameter bytes, process / GPU peak, load time (issue 5, item 1).

    python -m adapterhub.bench.memory --quick                          # CPU, SmolLM2-135M, ~1 min
    python -m adapterhub.bench.memory --base random:llama-1b --device cuda

Each quant mode loads in a fresh process, so the peak is that load's own. Rows (suite "base"):
param_bytes (as stored: 4-bit weights count their packed bytes + absmax), load_s (spec -> frozen,
quantized model; the SmolLM2 GGUF conversion is cached and not counted), peak_rss_bytes and
rss_delta_bytes (the process; on CUDA mostly the CUDA context), peak_gpu_bytes (CUDA allocator peak).
With --budget-s a quant mode is skipped when the slowest load so far would not fit in what is left.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from .common import Budget, Recorder, add_args, peak_rss_bytes, quant_list, rss_bytes, run_child

QUANTS = "fp32,bf16,nf4,int8"


def child(base: str, quant: str, device: str) -> dict:
    import torch
    from ..base import load_base, param_bytes
    load_base("random:tiny", quant="fp32", device="cpu")  # imports and lazy inits are not the model's memory
    if quant in ("nf4", "int8"):
        import bitsandbytes  # noqa: F401
    rss0 = rss_bytes()
    b = load_base(base, quant=quant, device=device)
    ids = torch.randint(3, min(1000, b.model.config.vocab_size), (1, 16), device=b.device)
    with torch.no_grad():
        b.model(input_ids=ids)  # the first forward allocates (and for nf4 on CPU may repack) too
    out = {"load_s": b.load_s, "param_bytes": param_bytes(b.model), "rss_before_bytes": rss0,
           "rss_after_bytes": rss_bytes(), "peak_rss_bytes": peak_rss_bytes()}
    if b.device.type == "cuda":
        torch.cuda.synchronize()
        out.update(peak_gpu_bytes=torch.cuda.max_memory_allocated(), gpu_allocated_bytes=torch.cuda.memory_allocated())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap, quants=QUANTS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.base, args.child, args.device)))
        return
    budget = Budget(args.budget_s)
    rec = Recorder("base", args.out, base=args.base, device=args.device)
    slowest = 0.0
    for quant in quant_list(args.quants, args.device):
        rec.context.update(quant=quant)
        if budget.over() or not budget.fits(slowest):
            rec.record("skipped", {"quant": quant}, None, unit="", extra={"reason": "time budget"})
            continue
        t = time.monotonic()
        try:
            m = run_child("adapterhub.bench.memory", ["--child", quant, "--base", args.base, "--device", args.device],
                          timeout=budget.left() + 30)
        except RuntimeError as e:
            rec.record("skipped", {"quant": quant}, None, unit="", extra={"reason": str(e)[:300]})
            continue
        slowest = max(slowest, time.monotonic() - t)
        p = {"quant": quant}
        rec.record("param_bytes", p, m["param_bytes"], unit="B")
        rec.record("load_s", p, m["load_s"], unit="s")
        rec.record("peak_rss_bytes", p, m["peak_rss_bytes"], unit="B")
        rec.record("rss_delta_bytes", p, m["rss_after_bytes"] - m["rss_before_bytes"], unit="B")
        if "peak_gpu_bytes" in m:
            rec.record("peak_gpu_bytes", p, m["peak_gpu_bytes"], unit="B",
                       extra={"gpu_allocated_bytes": m["gpu_allocated_bytes"]})
    rec.print_table()


if __name__ == "__main__":
    sys.exit(main())
