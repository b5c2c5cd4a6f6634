"""Training throughput (samples/s) and peak memory for LoRA and QLoRA (issue 5, item 6).

    python benchmarks/training.py --quick                             # CPU, SmolLM2-135M fp32 + NF4, ~1.5 min
    python benchmarks/training.py --base random:llama-1b --device cuda # bf16 (LoRA) + NF4 (QLoRA)

`Hub.train` (publish=False) on the built-in synthetic 'podcasts' scenario (adapterhub.demo), r=8
on q/k/v/o, one quant mode per fresh process so each peak is its own. A 16-bit/fp32 base is LoRA,
an NF4 base QLoRA. Rows (suite "train"):
  train_samples_per_s  max_steps * batch_size / train_s; train_s is the card's (the training loop,
                       including the one validation pass over n_valid examples at the last step)
  train_peak_bytes     peak process RSS (ru_maxrss) on CPU, torch.cuda.max_memory_allocated on CUDA;
                       before_bytes is the same measure after the base was loaded, before training
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import Budget, Recorder, add_args, quant_list

STEPS, STEPS_QUICK = 30, 6
BATCH, RANK, N_VALID = 8, 8, 16


def child(base: str, quant: str, device: str, steps: int, batch: int) -> dict:
    import torch
    from adapterhub import prompts
    from adapterhub.config import TrainConfig
    from adapterhub.demo import example_data
    from adapterhub.hub import Hub
    from common import peak_rss_bytes, rss_bytes
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(base=base, registry=Path(tmp) / "adapters", quant=quant, device=device)
        data = example_data()
        cuda = hub.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() if cuda else rss_bytes()
        cfg = TrainConfig(r=RANK, max_steps=steps, batch_size=batch, eval_every=steps, warmup_steps=1,
                          n_valid=N_VALID, n_test=N_VALID, patience=10)
        _, card = hub.train("bench", data, cfg, publish=False, progress=False)
        if cuda:
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
        tokens = [len(hub.encode("".join(prompts.render(data.scenario, ex, data.items)))) for ex in data.splits["train"]]
    log = card["train"]["log"]
    return {"train_s": card["train"]["train_s"], "peak_bytes": peak, "before_bytes": before,
            "memory": "cuda_max_allocated" if cuda else "ru_maxrss", "loss": log[-1]["loss"] if log else None,
            "tokens_per_sample": sum(tokens) / len(tokens)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap)
    ap.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {STEPS}, --quick {STEPS_QUICK})")
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    steps = args.steps or (STEPS_QUICK if args.quick else STEPS)
    if args.child:
        print(json.dumps(child(args.base, args.child, args.device, steps, args.batch)))
        return
    from common import run_child
    budget = Budget(args.budget_s)
    rec = Recorder("train", args.out, base=args.base, device=args.device)
    for quant in quant_list(args.quants, args.device):
        rec.context.update(quant=quant)
        params = {"method": "QLoRA" if quant in ("nf4", "int8") else "LoRA", "steps": steps, "batch_size": args.batch,
                  "rank": RANK}
        if budget.over():
            rec.record("skipped", params, None, unit="", extra={"reason": "time budget"})
            continue
        try:
            m = run_child([str(Path(__file__).resolve()), "--child", quant, "--base", args.base, "--device", args.device,
                           "--steps", str(steps), "--batch", str(args.batch)], timeout=budget.left() + 120)
        except RuntimeError as e:
            rec.record("skipped", params, None, unit="", extra={"reason": str(e)[:300]})
            continue
        rec.record("train_samples_per_s", params, steps * args.batch / m["train_s"], unit="samples/s",
                   extra={"train_s": m["train_s"], "loss": m["loss"], "tokens_per_sample": m["tokens_per_sample"],
                          "n_valid": N_VALID})
        rec.record("train_peak_bytes", params, m["peak_bytes"], unit="B",
                   extra={"before_bytes": m["before_bytes"], "memory": m["memory"]})
    rec.print_table()


if __name__ == "__main__":
    sys.exit(main())
