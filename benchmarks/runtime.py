"""Multi-adapter runtime: adapterhub vs plain PEFT, measured in the same run.

    python benchmarks/runtime.py --quick              # CPU, SmolLM2-135M NF4/fp32, ~5 min
    python benchmarks/runtime.py --base random:llama-1b --device cuda

Prints a Markdown table and appends one JSON line per measurement to benchmarks/results/.
Targets (issue 4): cold load <= 30 ms and flat (1..64 resident, within 1.5x); switch <= 1 ms and
flat; mixed batch (8 rows, 4 adapters) >= 0.97x single-adapter throughput with equal outputs;
resident bytes per adapter <= 1.1x weight bytes and given back on unload; ranking 20 candidates
with prefix reuse >= 3x faster than 20 full prompts.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import Recorder, sync, used_bytes

RESIDENT = (1, 4, 16, 64)
RANK, TARGETS = 8, ("q_proj", "k_proj", "v_proj", "o_proj")
BATCH, SEQ, N_ADAPTERS_MIXED = 8, 128, 4


def publish_random_adapters(hub, n: int, r: int = RANK, seed: int = 0) -> list[str]:
    from adapterhub.lora import peft_key
    g = torch.Generator().manual_seed(seed)
    names = []
    for i in range(n):
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


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def bench_load_switch(rec, hub, pm, names, folders, repeat):
    """Cold load of one more adapter and switch latency with n already resident."""
    for n in RESIDENT:
        for name in names[:n]:
            hub.load(name)
        while len(pm.peft_config) < n:
            k = len(pm.peft_config)
            pm.load_adapter(folders[k], adapter_name=names[k])
        probe = names[n]

        def ours_load():
            hub.load(probe)
            hub.unload(probe)

        def peft_load():
            pm.load_adapter(folders[n], adapter_name=probe)
            pm.delete_adapter(probe)
        rec.pair("cold_load_ms", {"resident": n}, median_ms(ours_load, repeat), median_ms(peft_load, max(3, repeat // 3)))
        keys = [hub._wkey(hub.load(x).key) for x in names[:n]]  # the keys the wrappers hold
        it = iter(range(10**9))

        def ours_switch():
            hub.routing.active = keys[next(it) % n]

        def peft_switch():
            pm.set_adapter(names[next(it) % n])
        rec.pair("switch_ms", {"resident": n}, median_ms(ours_switch, repeat * 10), median_ms(peft_switch, repeat))
    for name in names:
        hub.unload(name)


@torch.no_grad()
def bench_mixed(rec, hub, pm, names, folders, quant, repeat):
    vocab = hub.model.config.vocab_size
    ids = torch.randint(3, min(1000, vocab), (BATCH, SEQ), device=hub.device)
    keys = [hub.load(n).key for n in names[:N_ADAPTERS_MIXED]]
    for k in range(N_ADAPTERS_MIXED):
        if names[k] not in pm.peft_config:
            pm.load_adapter(folders[k], adapter_name=names[k])
    row_keys = [keys[i % N_ADAPTERS_MIXED] for i in range(BATCH)]
    row_names = [names[i % N_ADAPTERS_MIXED] for i in range(BATCH)]
    rows = [ids[i].tolist() for i in range(BATCH)]
    ours_single = median_ms(lambda: hub.last_hidden(rows, keys[0]), repeat)
    ours_mixed = median_ms(lambda: hub.last_hidden(rows, row_keys), repeat)
    pm.set_adapter(names[0])
    peft_single = median_ms(lambda: pm(input_ids=ids, logits_to_keep=1), repeat)
    peft_mixed = median_ms(lambda: pm(input_ids=ids, adapter_names=row_names, logits_to_keep=1), repeat)
    # equal outputs: the mixed batch vs each row alone with its own adapter (answer logit)
    mixed = hub.yes_logit(hub.last_hidden(rows, row_keys))
    alone = torch.stack([hub.yes_logit(hub.last_hidden([rows[i]], row_keys[i]))[0] for i in range(BATCH)])
    rec.pair("mixed_vs_single_throughput", {"quant": quant, "rows": BATCH, "adapters": N_ADAPTERS_MIXED, "seq": SEQ},
             ours_single / ours_mixed, peft_single / peft_mixed, unit="x",
             extra={"max_abs_logit_diff": float((mixed - alone).abs().max()), "ours_mixed_ms": ours_mixed,
                    "peft_mixed_ms": peft_mixed, "ours_single_ms": ours_single, "peft_single_ms": peft_single})


def bench_memory(rec, hub, pm, names, folders):
    """RSS growth per resident adapter / its weight bytes; what unload gives back."""
    n = 16
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
def bench_ranking(rec, hub, names, repeat):
    key = hub.load(names[0]).key
    prefix = "The user watched and liked these movies, oldest first: " + ", ".join(f'"Movie number {i} (199{i % 10})"' for i in range(10)) + "."
    suffixes = [f'\nWill the user like the movie "Candidate film {i} (1994)"? Answer:' for i in range(20)]
    reuse = median_ms(lambda: hub.score_candidates(key, prefix, suffixes, batch_size=20), repeat)
    full = median_ms(lambda: hub.score_candidates(key, prefix, suffixes, batch_size=20, reuse_prefix=False), repeat)
    a = hub.score_candidates(key, prefix, suffixes, batch_size=20)
    b = hub.score_candidates(key, prefix, suffixes, batch_size=20, reuse_prefix=False)
    rec.record("ranking_prefix_reuse_speedup", {"candidates": 20}, full / reuse, unit="x",
               extra={"reuse_ms": reuse, "full_ms": full, "max_abs_p_diff": max(abs(x - y) for x, y in zip(a, b))})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (CPU)")
    ap.add_argument("--quants", default="fp32,nf4", help="quant modes for the mixed-batch check")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    import peft
    from adapterhub.base import load_base
    from adapterhub.hub import Hub
    repeat = 5 if args.quick else 20
    rec = Recorder("runtime", args.out, base=args.base, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        for i, quant in enumerate(args.quants.split(",")):
            hub = Hub(base=args.base, registry=Path(tmp) / "adapters", quant=quant, device=args.device)
            names = hub.registry.names() or publish_random_adapters(hub, max(RESIDENT) + 2)
            folders = [str(hub.registry.resolve(n)) for n in names]
            plain = load_base(args.base, quant=quant, device=args.device).model  # PEFT gets its own copy
            pm = peft.PeftModel.from_pretrained(plain, folders[0], adapter_name=names[0])
            pm.eval()
            rec.context.update(quant=quant)
            if i == 0:  # load/switch/memory/ranking do not depend on the quant mode
                bench_load_switch(rec, hub, pm, names, folders, repeat)
                # PEFT's figure here is a floor: its adapters loaded and deleted above left freed pages
                # that malloc reuses (measured alone, DESIGN.md: 4.6 MiB RSS per 3.5 MiB adapter)
                bench_memory(rec, hub, pm, names, folders)
                bench_ranking(rec, hub, names, repeat)
            bench_mixed(rec, hub, pm, names, folders, quant, repeat)
            del hub, pm, plain
            gc.collect()
    rec.print_table()


if __name__ == "__main__":
    main()
