"""Forward throughput, adapterhub and plain PEFT side by side, in the same run.

    python -m adapterhub.bench.forward --quick                              # CPU, SmolLM2-135M fp32 + NF4, ~2 min
    python -m adapterhub.bench.forward --base random:llama-1b --device cuda # bf16 + NF4

One batch of ROWS equal-length rows of SEQ random tokens, per quant mode. Modes (rows/s, higher is better):
  base     no adapter               hub: active=None        PEFT: disable_adapter()
  single   one adapter, all rows    hub: row_logits(hub, key, rows)             PEFT: set_adapter + forward
  mixed-k  k adapters among the rows (row i -> adapter i % k), one forward
                                    hub: per-row keys       PEFT: forward(adapter_names=[...])
  split-k  the same rows, one forward per adapter on its own rows, switching between them
                                    hub: row_logits(hub, key, subset)           PEFT: set_adapter + forward(subset)
  merged   adapter 0 folded into the base weights (fp32/bf16 bases only; merging into a 4-bit base
           re-quantizes, which is lossy, so NF4 rows say n/a)
                                    hub: W += B@A*scale in the hub's own (wrapped) Linear weights, routed to no adapter
                                    PEFT: merge_and_unload() on its non-quantized copy
The hub returns the answer logit of each row (its one forward, packed_logits); PEFT runs the model with logits_to_keep=1 (the
LM head on one position). Rows record max_abs_diff of the hub's answer logit against the
single-adapter (merged) or split (mixed) result. With --budget-s each measurement gets an equal
share of the time left: its repeats shrink to fit (params.repeat), and what does not fit is skipped.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from pathlib import Path

import torch

from .common import Budget, Recorder, add_args, row_logits, median_ms, publish_random_adapters, quant_list, timed_s

ROWS, SEQ, SEQ_QUICK = 16, 128, 32
MIXED, SPLIT = (1, 4, 16), (4, 16)
REPEAT, REPEAT_QUICK = 10, 3


@torch.no_grad()
def bench_quant(rec, args, quant, tmp, budget, seq, repeat):
    import peft
    from ..base import load_base
    from ..hub import Hub
    rec.context.update(quant=quant)
    if budget.over():
        rec.record("skipped", {"quant": quant}, None, unit="", extra={"reason": "time budget"})
        return
    hub = Hub(base=args.base, registry=Path(tmp) / quant, quant=quant, device=args.device)
    names = publish_random_adapters(hub, max(MIXED))
    folders = [str(hub.registry.resolve(n)) for n in names]
    keys = [hub.load(n).key for n in names]
    plain = load_base(args.base, quant=quant, device=args.device).model  # PEFT gets its own copy
    pm = peft.PeftModel.from_pretrained(plain, folders[0], adapter_name=names[0])
    for name, folder in zip(names[1:], folders[1:]):
        pm.load_adapter(folder, adapter_name=name)
    pm.eval()
    vocab = hub.model.config.vocab_size
    ids = torch.randint(3, min(1000, vocab), (ROWS, seq), generator=torch.Generator().manual_seed(0)).to(hub.device)
    rows = ids.tolist()
    base_params = {"rows": ROWS, "seq": seq}

    def measure(mode, k, ours, theirs, check=None):
        params = {"mode": mode, "adapters": k, **base_params}
        if budget.over():
            rec.record("skipped", params, None, unit="", extra={"reason": "time budget"})
            return
        r = budget.fit(repeat, timed_s(ours) + timed_s(theirs))  # the warm-up tells how many repeats fit
        params["repeat"] = r
        ours_ms, peft_ms = median_ms(ours, r), median_ms(theirs, r)
        extra = {"ours_ms": ours_ms, "peft_ms": peft_ms}
        if check is not None:
            extra["max_abs_diff"] = check
        rec.pair("forward_rows_per_s", params, ROWS / ours_ms * 1000, ROWS / peft_ms * 1000, unit="rows/s", extra=extra)

    def peft_base():
        with pm.disable_adapter():
            pm(input_ids=ids, logits_to_keep=1)

    def peft_single():
        pm.set_adapter(names[0])
        pm(input_ids=ids, logits_to_keep=1)

    measure("base", 0, lambda: row_logits(hub, None, rows), peft_base)
    measure("single", 1, lambda: row_logits(hub, keys[0], rows), peft_single)
    single_logit = row_logits(hub, keys[0], rows)
    for k in MIXED:
        row_keys = [keys[i % k] for i in range(ROWS)]
        row_names = [names[i % k] for i in range(ROWS)]
        mixed = row_logits(hub, row_keys, rows)
        split = torch.empty_like(mixed)
        for j in range(k):
            split[j::k] = row_logits(hub, keys[j], rows[j::k])
        measure("mixed", k, lambda: row_logits(hub, row_keys, rows),
                lambda: pm(input_ids=ids, adapter_names=row_names, logits_to_keep=1),
                float((mixed - split).abs().max()))
    for k in SPLIT:
        def ours_split(k=k):
            for j in range(k):
                row_logits(hub, keys[j], rows[j::k])

        def peft_split(k=k):
            for j in range(k):
                pm.set_adapter(names[j])
                pm(input_ids=ids[j::k], logits_to_keep=1)
        measure("split", k, ours_split, peft_split)

    params = {"mode": "merged", "adapters": 1, **base_params}
    if quant in ("nf4", "int8"):
        rec.record("forward_rows_per_s", params, None, unit="rows/s", extra={
            "peft": None, "note": "n/a: merging into a 4-bit/8-bit base re-quantizes (lossy); merge into a bf16/fp32 base"})
    elif budget.over():
        rec.record("skipped", params, None, unit="", extra={"reason": "time budget"})
    else:
        for m in hub.wrapped.values():  # fold adapter 0 into the hub's own base weights (the hub is dropped after)
            pair = m.adapters.get(hub._wkey(keys[0]))
            if pair is not None:
                m.base.weight += (pair[1] @ pair[0]).to(m.base.weight.dtype)
        merged_logit = row_logits(hub, None, rows)
        pm.set_adapter(names[0])
        merged = pm.merge_and_unload()
        measure("merged", 1, lambda: row_logits(hub, None, rows), lambda: merged(input_ids=ids, logits_to_keep=1),
                float((merged_logit - single_logit).abs().max()))
    del hub, pm, plain
    gc.collect()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap)
    args = ap.parse_args(argv)
    quants = quant_list(args.quants, args.device)
    # one budget share per measurement: base, single, mixed-k, split-k, merged, per quant mode
    budget = Budget(args.budget_s, parts=(3 + len(MIXED) + len(SPLIT)) * len(quants))
    seq, repeat = (SEQ_QUICK, REPEAT_QUICK) if args.quick else (SEQ, REPEAT)
    rec = Recorder("forward", args.out, base=args.base, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        for quant in quants:
            bench_quant(rec, args, quant, tmp, budget, seq, repeat)
    rec.print_table()


if __name__ == "__main__":
    sys.exit(main())
