"""Multi-adapter runtime: adapterhub vs plain PEFT, measured in the same run.

    python -m adapterhub.bench.runtime --quick              # CPU, SmolLM2-135M fp32 + NF4
    python -m adapterhub.bench.runtime --base random:llama-1b --device cuda

Prints a Markdown table and appends one JSON line per measurement to <out>/runtime.jsonl.
Targets: cold load <= 30 ms and flat (1..64 resident, within 1.5x); switch <= 1 ms and
flat; mixed batch (8 rows, 4 adapters) >= 0.97x single-adapter throughput with equal outputs;
resident bytes per adapter <= 1.1x weight bytes and given back on unload; ranking 20 candidates
with prefix reuse >= 3x faster than 20 full prompts.
With --budget-s, repeats shrink to fit (params.repeat). The first quant mode's load/switch at every
level (adapterhub's side) and each mode's mixed batch always run (benchmarks/gpu.sh needs them; the
runner's kill bounds the time): at a level where loading PEFT up to it does not fit, PEFT's figure is
None (peft_skipped says why). Resident bytes and ranking run when they fit, else a `skipped` row.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

from .common import Budget, Recorder, add_args, row_logits, median_ms, publish_random_adapters, quant_list, timed_s, used_bytes

RESIDENT = (1, 4, 16, 64)
N_MEMORY = 16                           # adapters loaded together for resident bytes
BATCH, SEQ, SEQ_QUICK, N_ADAPTERS_MIXED = 8, 128, 32, 4
REPEAT, REPEAT_QUICK = 20, 5


def more_adapters(hub, names: list[str], folders: list[str], k: int) -> None:
    """Publish random adapters until there are k (a level the budget skips never pays for its own)."""
    if len(names) < k:
        new = publish_random_adapters(hub, k - len(names), start=len(names))
        names += new
        folders += [str(hub.registry.resolve(n)) for n in new]


def bench_load_switch(rec, hub, pm, names, folders, repeat, budget):
    """Cold load of one more adapter and switch latency with n already resident. Ours is measured at
    every level (its loads cost milliseconds); PEFT only where loading it up to n fits the budget
    (PEFT's load_adapter grows with n: ~0.85 s each at 32 on SmolLM2), else its figure is None."""
    peft_load_s = 0.0
    for n in RESIDENT:  # ours at every level, whatever the budget: the flat-latency claim is about 64
        more_adapters(hub, names, folders, n + 1)
        for name in names[:n]:
            hub.load(name)
        # PEFT has to load the adapters up to n first: most of a level's cost, and the part to leave out
        with_peft = len(pm.peft_config) >= n or budget.fits((n - len(pm.peft_config) + 2) * peft_load_s * 1.5)
        while with_peft and len(pm.peft_config) < n:
            k = len(pm.peft_config)
            pm.load_adapter(folders[k], adapter_name=names[k])
        probe = names[n]

        def ours_load():
            hub.load(probe)
            hub.unload(probe)

        def peft_load():
            pm.load_adapter(folders[n], adapter_name=probe)
            pm.delete_adapter(probe)
        keys = [hub._wkey(hub.load(x).key) for x in names[:n]]  # the keys the wrappers hold
        it = iter(range(10**9))

        def ours_switch():
            hub.routing.active = keys[next(it) % n]

        def peft_switch():
            pm.set_adapter(names[next(it) % n])
        if with_peft:
            peft_load_s = timed_s(peft_load)  # also the warm-up
            r = budget.fit(repeat, timed_s(ours_load) + peft_load_s / 3 + timed_s(peft_switch), least=3)
            peft = median_ms(peft_load, max(3, r // 3)), median_ms(peft_switch, r)
            extra = None
        else:
            r = budget.fit(repeat, timed_s(ours_load), least=3)
            peft, extra = (None, None), {"peft_skipped": "time budget: loading PEFT up to this many adapters"}
        rec.pair("cold_load_ms", {"resident": n, "repeat": r}, median_ms(ours_load, r), peft[0], extra=extra)
        rec.pair("switch_ms", {"resident": n, "repeat": r}, median_ms(ours_switch, r * 10), peft[1], extra=extra)
    for name in names:
        hub.unload(name)


@torch.no_grad()
def bench_mixed(rec, hub, pm, names, folders, quant, seq, repeat, budget):
    params = {"quant": quant, "rows": BATCH, "adapters": N_ADAPTERS_MIXED, "seq": seq}
    more_adapters(hub, names, folders, N_ADAPTERS_MIXED)
    vocab = hub.model.config.vocab_size
    ids = torch.randint(3, min(1000, vocab), (BATCH, seq), device=hub.device)
    keys = [hub.load(n).key for n in names[:N_ADAPTERS_MIXED]]
    for k in range(N_ADAPTERS_MIXED):
        if names[k] not in pm.peft_config:
            pm.load_adapter(folders[k], adapter_name=names[k])
    row_keys = [keys[i % N_ADAPTERS_MIXED] for i in range(BATCH)]
    row_names = [names[i % N_ADAPTERS_MIXED] for i in range(BATCH)]
    rows = [ids[i].tolist() for i in range(BATCH)]
    # equal outputs: the mixed batch vs each row alone with its own adapter (answer logit); also the warm-up
    mixed = row_logits(hub, row_keys, rows)
    alone = torch.cat([row_logits(hub, row_keys[i], [rows[i]]) for i in range(BATCH)])
    r = budget.fit(repeat, 4 * timed_s(lambda: row_logits(hub, keys[0], rows)))  # four ways, about as long
    ours_single = median_ms(lambda: row_logits(hub, keys[0], rows), r)
    ours_mixed = median_ms(lambda: row_logits(hub, row_keys, rows), r)
    pm.set_adapter(names[0])
    peft_single = median_ms(lambda: pm(input_ids=ids, logits_to_keep=1), r)
    peft_mixed = median_ms(lambda: pm(input_ids=ids, adapter_names=row_names, logits_to_keep=1), r)
    rec.pair("mixed_vs_single_throughput", {**params, "repeat": r}, ours_single / ours_mixed, peft_single / peft_mixed,
             unit="x", extra={"max_abs_logit_diff": float((mixed - alone).abs().max()), "ours_mixed_ms": ours_mixed,
                              "peft_mixed_ms": peft_mixed, "ours_single_ms": ours_single, "peft_single_ms": peft_single})


def bench_memory(rec, hub, pm, names, folders, budget):
    """RSS growth per resident adapter / its weight bytes; what unload gives back."""
    n = N_MEMORY
    if budget.over():
        return rec.record("skipped", {"metric": "resident_bytes_per_weight_byte", "adapters": n}, None, unit="",
                          extra={"reason": "time budget"})
    more_adapters(hub, names, folders, n + 1)
    gc.collect()
    before = used_bytes(hub.device)
    weights = sum(hub.load(x).weight_bytes for x in names[:n])
    loaded = used_bytes(hub.device)
    for x in names[:n]:
        hub.unload(x)
    gc.collect()
    after = used_bytes(hub.device)
    for name in list(pm.peft_config)[1:]:
        pm.delete_adapter(name)
    gc.collect()
    p_before = used_bytes(hub.device)
    for k in range(1, n + 1):
        pm.load_adapter(folders[k], adapter_name=f"m{k}")
    p_loaded = used_bytes(hub.device)
    rec.pair("resident_bytes_per_weight_byte", {"adapters": n}, (loaded - before) / weights,
             (p_loaded - p_before) / weights, unit="x",
             extra={"weight_bytes_per_adapter": weights / n, "ours_returned_on_unload": (loaded - after) / max(1, loaded - before)})


@torch.no_grad()
def bench_ranking(rec, hub, names, repeat, budget):
    if budget.over():
        return rec.record("skipped", {"metric": "ranking_prefix_reuse_speedup", "candidates": 20}, None, unit="",
                          extra={"reason": "time budget"})
    key = hub.load(names[0]).key
    prefix = "The user watched and liked these movies, oldest first: " + ", ".join(f'"Movie number {i} (199{i % 10})"' for i in range(10)) + "."
    suffixes = [f'\nWill the user like the movie "Candidate film {i} (1994)"? Answer:' for i in range(20)]
    t = time.perf_counter()
    a = hub.score_candidates(key, prefix, suffixes, batch_size=20)  # also the warm-up
    b = hub.score_candidates(key, prefix, suffixes, batch_size=20, reuse_prefix=False)
    r = budget.fit(repeat, time.perf_counter() - t)  # repeats of both that fit
    reuse = median_ms(lambda: hub.score_candidates(key, prefix, suffixes, batch_size=20), r)
    full = median_ms(lambda: hub.score_candidates(key, prefix, suffixes, batch_size=20, reuse_prefix=False), r)
    rec.record("ranking_prefix_reuse_speedup", {"candidates": 20, "repeat": r}, full / reuse, unit="x",
               extra={"reuse_ms": reuse, "full_ms": full, "max_abs_p_diff": max(abs(x - y) for x, y in zip(a, b))})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap)
    args = ap.parse_args(argv)
    import peft
    from ..base import load_base
    from ..hub import Hub
    quants = quant_list(args.quants, args.device)
    repeat, seq = (REPEAT_QUICK, SEQ_QUICK) if args.quick else (REPEAT, SEQ)
    budget = Budget(args.budget_s, parts=len(RESIDENT) + 2 + len(quants))
    rec = Recorder("runtime", args.out, base=args.base, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        for i, quant in enumerate(quants):
            rec.context.update(quant=quant)
            if budget.over():
                rec.record("skipped", {"quant": quant}, None, unit="", extra={"reason": "time budget"})
                continue
            hub = Hub(base=args.base, registry=Path(tmp) / "adapters", quant=quant, device=args.device)
            names = sorted(hub.registry.names())  # the first quant mode's adapters serve the next ones
            folders = [str(hub.registry.resolve(n)) for n in names]
            more_adapters(hub, names, folders, 1)
            plain = load_base(args.base, quant=quant, device=args.device).model  # PEFT gets its own copy
            pm = peft.PeftModel.from_pretrained(plain, folders[0], adapter_name=names[0])
            pm.eval()
            if i == 0:  # load/switch/memory/ranking do not depend on the quant mode
                bench_load_switch(rec, hub, pm, names, folders, repeat, budget)
            bench_mixed(rec, hub, pm, names, folders, quant, seq, repeat, budget)
            if i == 0:
                # PEFT's figure here is a floor: its adapters loaded and deleted above left freed pages
                # that malloc reuses (measured alone, DESIGN.md: 4.6 MiB RSS per 3.5 MiB adapter)
                bench_memory(rec, hub, pm, names, folders, budget)
                bench_ranking(rec, hub, names, repeat, budget)
            del hub, pm, plain
            gc.collect()
    rec.print_table()


if __name__ == "__main__":
    sys.exit(main())
