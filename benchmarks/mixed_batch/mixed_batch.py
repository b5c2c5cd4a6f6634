"""The mixed batch (rows of one forward routed to different adapters, adapterhub.lora) against one
adapter, and a row's score alone against the same row inside batches. SmolLM2-135M, CPU.

    flock /tmp/adapterhub-heavy.lock python benchmarks/mixed_batch/mixed_batch.py
    ... --only speed|dependence  --quants nf4,fp32  --cells 8x60,32x400  --pairs 8  --ways mixed  --out DIR

Rows are TALLRec-like prompts of about `tokens` tokens (each within +-15%), over 4 adapters in turn.
quant nf4 runs the default CPU compute (Hub(compute="auto"): bf16 over the dequantized weights where
the CPU has bf16 matmuls, as here); fp32 runs fp32. One JSON line per measurement in
<out>/mixed_batch.jsonl (Recorder: device, versions, git sha).

speed: the ways below and `single` (the same rows on one adapter, Hub.packed_logits) take turns,
  their order rotating, `pairs` times in one process; value = the median over turns of
  single ms / way ms (1.0: mixing adapters costs nothing).
    mixed           Hub.packed_logits with each row's own adapter: the hub's path (the rows packed back to
                    back in one row as `single` packs them, each adapter's tokens one span: lora.Route.in_one_row;
                    up to lora.STACK_TOKENS tokens the LoRA term is one product over the adapters' stacked
                    weights, each token masked to its own, past that one product per adapter's span)
    mixed_segments  `mixed` with one product per adapter's span at every size (the hub's path before stacking)
    mixed_stacked   `mixed` with the stacked product at every size
    mixed_rows      the layout the hub used before: a padded row per prompt, each adapter's rows one slice,
                    lora's per-adapter segments
    mixed_gathered  mixed_rows's layout with the LoRA term by gathered stacks (each row's A and B stacked, two
                    bmm in the compute dtype) instead of segments: the alternative the issue names
    control         `single` again: its ratio is the measurement's noise on this (shared) machine
dependence: P(yes) of each row alone (its own forward) against the same row inside: the mixed batch
  (the hub's path and mixed_rows), all rows on one adapter (against each alone on it), and SHUFFLES sub-batches of
  random size, order and partners; per batch kind the max |dP| over rows and whether every row's
  logit was bit-equal. Random adapters (r=8, q/k/v/o) and the shipped ones (adapters/).
"""
from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from adapterhub import lora, packing
from adapterhub.bench.common import Recorder, publish_random_adapters
from adapterhub.bench.concurrency import load
from adapterhub.hub import Hub
from adapterhub.lora import LoraLinear

REPO = Path(__file__).resolve().parents[2]
CELLS = "8x60,32x60,8x400,32x400"
SHIPPED = ("music", "news", "video", "ecommerce")
PAIRS = 8
CELL_S = 300.0      # a speed cell stops adding turns past this (at least 3 turns)
SHUFFLES = 3
WAYS = ("mixed", "mixed_segments", "mixed_stacked")


def make_prompts(hub, n: int, tokens: int, seed: int) -> list[list[int]]:
    """n prompts (token ids), each of tokens * U(0.85, 1.15) tokens, history items added until it is."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        want, items = round(tokens * rng.uniform(0.85, 1.15)), []
        while True:
            text = (f"The user liked these items, oldest first: {', '.join(items)}. Will the user like "
                    f'"Item number {rng.randrange(10_000)}"? Answer:')
            ids = hub.encode(text)
            if len(ids) >= want:
                out.append(ids)
                break
            items.append(f'"Item number {rng.randrange(10_000)} ({rng.randrange(1950, 2024)})"')
    return out


def rows_logits(hub, keys: list, rows: list[list[int]]) -> torch.Tensor:
    """Yes-No logits of plain prompts, one adapter per row, in the layout the hub used before: a padded
    row of the input per prompt, each adapter's rows one slice (lora.Route.groups)."""
    route, order = hub._route(keys)
    if order is None:
        return hub.packed_logits(keys, [([], [r]) for r in rows])
    packed = packing.pack([([], [rows[i]]) for i in order], hub.device, one_row=False)
    with hub.routing.routed(route):
        logits = hub.yes_logit(packing.last_hidden(hub.decoder, packed))
    return logits[torch.tensor(sorted(range(len(order)), key=order.__getitem__))]  # back in the rows' order


SEGMENTS = LoraLinear.mixed


def gathered(self, x, y, route):
    """LoraLinear.mixed by gathered stacks: A (rows, r, in) and B (rows, out, r), each row its adapter's,
    then two bmm in the pairs' dtype. Needs row groups covering every row with one rank; else segments."""
    ps = [pairs[self.index] for pairs, _, _ in route.groups or ()]
    if route.spans is not None or not route.full or None in ps or len({p[0].shape for p in ps}) > 1:
        return SEGMENTS(self, x, y, route)
    A = torch.cat([p[0].expand(b - a, -1, -1) for p, (_, a, b) in zip(ps, route.groups)])
    B = torch.cat([p[1].expand(b - a, -1, -1) for p, (_, a, b) in zip(ps, route.groups)])
    delta = torch.bmm(torch.bmm(x.to(A.dtype), A.transpose(1, 2)), B.transpose(1, 2))
    return y + delta.to(y.dtype) if torch.is_grad_enabled() else y.add_(delta)


@contextlib.contextmanager
def engine(mixed):
    """Every LoraLinear runs mixed batches with `mixed` for the body of the `with` (this process is
    single-threaded)."""
    LoraLinear.mixed = mixed
    try:
        yield
    finally:
        LoraLinear.mixed = SEGMENTS


@contextlib.contextmanager
def stack_tokens(n: int):
    """lora.STACK_TOKENS is n for the body of the `with`."""
    kept, lora.STACK_TOKENS = lora.STACK_TOKENS, n
    try:
        yield
    finally:
        lora.STACK_TOKENS = kept


def ways(hub, keys, rows) -> dict:
    row_keys = [keys[i % len(keys)] for i in range(len(rows))]
    groups = [([], [r]) for r in rows]

    def with_gathered():
        with engine(gathered):
            return rows_logits(hub, row_keys, rows)

    def with_stack_tokens(n):
        def run():
            with stack_tokens(n):
                return hub.packed_logits(row_keys, groups)
        return run
    return {"single": lambda: hub.packed_logits(keys[0], groups),
            "mixed": lambda: hub.packed_logits(row_keys, groups),
            "mixed_segments": with_stack_tokens(0),
            "mixed_stacked": with_stack_tokens(10**9),
            "mixed_rows": lambda: rows_logits(hub, row_keys, rows),
            "mixed_gathered": with_gathered,
            "control": lambda: hub.packed_logits(keys[0], groups)}


@torch.inference_mode()  # as Hub.score, the batcher and the server run it (no autograd copies)
def bench_speed(rec, hub, keys, rows_n: int, tokens: int, pairs: int, cell_s: float, only=WAYS):
    rows = make_prompts(hub, rows_n, tokens, seed=rows_n * 1000 + tokens)
    runs = {name: fn for name, fn in ways(hub, keys, rows).items() if name == "single" or name in only}
    names = list(runs)
    for fn in runs.values():  # warm-up (oneDNN builds its kernels for these shapes)
        fn()
    ms = {name: [] for name in names}
    start = time.perf_counter()
    for p in range(pairs):
        if p >= 3 and time.perf_counter() - start > cell_s:
            break
        for name in names[p % len(names):] + names[:p % len(names)]:  # rotating: slow spells hit all alike
            t = time.perf_counter()
            runs[name]()
            ms[name].append(1000 * (time.perf_counter() - t))
    n = len(ms["single"])
    lengths = [len(r) for r in rows]
    for way in [w for w in names if w != "single"]:
        ratios = [s / m for s, m in zip(ms["single"], ms[way])]
        rec.record("mixed_vs_single", {"way": way, "rows": rows_n, "tokens": tokens, "adapters": len(keys), "pairs": n},
                   statistics.median(ratios), unit="x",
                   extra={"compute": hub.base.compute, "single_ms": statistics.median(ms["single"]),
                          "way_ms": statistics.median(ms[way]), "ratio_min": min(ratios), "ratio_max": max(ratios),
                          "prompt_tokens": [min(lengths), max(lengths)], **load()})


@torch.inference_mode()
def bench_dependence(rec, hub, keys, tag: str, rows_n: int, tokens: int):
    rows = make_prompts(hub, rows_n, tokens, seed=rows_n * 1000 + tokens + 1)
    row_keys = [keys[i % len(keys)] for i in range(rows_n)]
    alone = torch.cat([hub.packed_logits(row_keys[i], [([], [r])]) for i, r in enumerate(rows)])
    alone_one = torch.cat([hub.packed_logits(keys[0], [([], [r])]) for r in rows])
    rng = random.Random(rows_n + tokens)
    batches = {"mixed": (list(range(rows_n)), hub.packed_logits(row_keys, [([], [r]) for r in rows]), alone),
               "mixed_rows": (list(range(rows_n)), rows_logits(hub, row_keys, rows), alone),
               "one_adapter": (list(range(rows_n)), hub.packed_logits(keys[0], [([], [r]) for r in rows]), alone_one)}
    for s in range(SHUFFLES):
        pick = rng.sample(range(rows_n), rng.randint(2, rows_n))
        got = hub.packed_logits([row_keys[i] for i in pick], [([], [rows[i]]) for i in pick])
        batches[f"shuffled_{s}"] = (pick, got, alone)
    lengths = [len(r) for r in rows]
    for kind, (pick, got, ref) in batches.items():
        dp = (torch.sigmoid(got) - torch.sigmoid(ref[pick])).abs()
        rec.record("alone_vs_batch", {"batch": kind, "adapters": tag, "rows": len(pick), "of_rows": rows_n,
                                      "tokens": tokens}, float(dp.max()), unit="max |dP|",
                   extra={"compute": hub.base.compute, "bit_equal_rows": int((got == ref[pick]).sum()),
                          "mean_dp": float(dp.mean()), "prompt_tokens": [min(lengths), max(lengths)]})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("speed", "dependence"), default=None)
    ap.add_argument("--quants", default="nf4,fp32")
    ap.add_argument("--cells", default=CELLS, help="rows x tokens, comma-separated")
    ap.add_argument("--pairs", type=int, default=PAIRS, help="turns of every way per speed cell")
    ap.add_argument("--cell-s", type=float, default=CELL_S, help="a speed cell adds no turn past this (>= 3 turns)")
    ap.add_argument("--ways", default=",".join(WAYS), help="speed: the ways timed against single")
    ap.add_argument("--dep-quants", default="nf4", help="quant modes the dependence part runs (default: the default one)")
    ap.add_argument("--label", default="tree", help="recorded in every row: what code ran (e.g. a patch applied)")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args(argv)
    cells = [tuple(int(v) for v in c.split("x")) for c in args.cells.split(",")]
    rec = Recorder("mixed_batch", args.out, base=args.base, device="cpu", label=args.label)
    with tempfile.TemporaryDirectory() as tmp:
        for quant in args.quants.split(","):
            rec.context.update(quant=quant)
            hub = Hub(base=args.base, registry=Path(tmp) / quant, quant=quant, device="cpu")
            keys = [hub.load(n).key for n in publish_random_adapters(hub, 4)]
            if args.only in (None, "speed"):
                for rows_n, tokens in cells:
                    bench_speed(rec, hub, keys, rows_n, tokens, args.pairs, args.cell_s, args.ways.split(","))
            if args.only in (None, "dependence") and quant in args.dep_quants.split(","):
                # the shipped adapters were trained on SmolLM2 (over the same base object and wrappers)
                shipped = Hub(base=hub.base, registry=REPO / "adapters") if args.base == "smollm2-135m" else None
                shipped_keys = [shipped.load(n).key for n in SHIPPED] if shipped else []
                for rows_n, tokens in cells:
                    bench_dependence(rec, hub, keys, "random", rows_n, tokens)
                    if shipped:
                        bench_dependence(rec, shipped, shipped_keys, "shipped", rows_n, tokens)
            del hub
    rec.print_table()


if __name__ == "__main__":
    sys.exit(main())
