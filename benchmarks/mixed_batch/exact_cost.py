"""What attending each group at its own shape costs (packing.pack(exact=True), the scoring path)
against one attention call over every group padded to the longest (exact=False, training's), on the
same rows in one process, alternating.

    flock /tmp/adapterhub-heavy.lock python benchmarks/mixed_batch/exact_cost.py [--cells 8x60,32x60,8x400]

Rows: plain prompts of about `tokens` tokens (each within +-15%, so nearly every row is its own
shape: the worst case for exact), one adapter, and ranking groups (one user's history and 20
candidates). One JSON line per cell to mixed_batch.jsonl (adapterhub.bench.common.Recorder).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from mixed_batch import make_prompts  # noqa: E402

from adapterhub import packing  # noqa: E402
from adapterhub.bench.common import Recorder, publish_random_adapters  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


@torch.inference_mode()
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="8x60,32x60,8x400,rank20", help="rows x tokens, or rankN (a user's N candidates)")
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--quant", default="nf4")
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args(argv)
    import tempfile
    from adapterhub import Hub
    hub = Hub(base="smollm2-135m", registry=Path(tempfile.mkdtemp()) / "adapters", quant=args.quant)
    key = hub.load(publish_random_adapters(hub, 1)[0]).key
    rec = Recorder("mixed_batch", args.out, base="smollm2-135m", device="cpu", quant=args.quant,
                   compute=hub.base.compute)
    real = packing.pack
    for cell in args.cells.split(","):
        if cell.startswith("rank"):
            n = int(cell[4:])
            rows = make_prompts(hub, n + 1, 30, seed=n)
            groups = [(make_prompts(hub, 1, 300, seed=7)[0], rows[:n])]
        else:
            n, tokens = map(int, cell.split("x"))
            groups = [([], [r]) for r in make_prompts(hub, n, tokens, seed=n * 1000 + tokens)]
        ms = {True: [], False: []}
        for turn in range(args.turns + 1):
            for exact in ((True, False) if turn % 2 else (False, True)):
                packing.pack = lambda *a, _e=exact, **kw: real(*a, **{**kw, "exact": _e})
                try:
                    t = timed(lambda: hub.packed_logits(key, groups))
                finally:
                    packing.pack = real
                if turn:   # the first turn warms both
                    ms[exact].append(t)
        exact_ms, padded_ms = statistics.median(ms[True]), statistics.median(ms[False])
        rec.record("exact_vs_padded", {"cell": cell, "quant": args.quant}, padded_ms / exact_ms, "padded ms / exact ms",
                   {"exact_ms": exact_ms, "padded_ms": padded_ms, "turns": args.turns,
                    "blocks": len({(len(p), max(map(len, s))) for p, s in groups})})
        print(f"{cell}: exact {exact_ms:.0f} ms, padded {padded_ms:.0f} ms: {padded_ms / exact_ms:.3f}x", flush=True)


if __name__ == "__main__":
    main()
