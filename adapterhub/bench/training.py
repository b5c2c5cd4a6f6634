"""Training and ranking throughput: adapterhub's loop against a plain PEFT + transformers loop,
on the same examples, in the same run (issue 11).

    python -m adapterhub.bench.training --quick                                 # synthetic data, ~2 min
    python -m adapterhub.bench.training --scenarios music,news,video --steps 6  # real prompts (../shared/data)

Per scenario, each mode in a fresh process (so each peak RSS is its own), r=8 on q/k/v/o:
  ours          Hub.train (publish=False): packed shared-prefix groups, listwise+BCE loss, the base
                dequantized once (compute=auto: bf16 matmuls on CPUs with AVX512-BF16/AMX), gradient
                checkpointing (the default). candidates/s is the card's: candidates judged per second
                of training steps, evaluation excluded, after an untimed 1-step run in the same process
                (the PEFT loop also leaves its first step out).
  ours-nockpt   the same without gradient checkpointing (faster, more memory)
  peft          what one writes by hand for QLoRA: PeftModel over the bitsandbytes NF4 base, one full
                prompt per candidate, batch of --batch prompts, BCE on the Yes-No logit
  peft-bf16     the same PEFT loop over the base dequantized once to bf16: isolates what packing buys
The candidates PEFT sees are drawn by the same grouping and negative sampling, with the same seed.
A `score` row compares ranking 20 candidates: Hub.score_candidates (packed) vs PEFT over NF4
scoring the 20 full prompts in one batch, alternated in one process.
Rows (suite "train"): train_candidates_per_s (ours_over_this: ours / this mode), train_peak_bytes,
rank_candidates_per_s (peft: the PEFT figure beside ours). The modes run in the order given (ours
and peft first by default, so a short budget keeps the main ratio); with --budget-s a mode is skipped
when the slowest child so far would not fit in what is left.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from .common import Budget, Recorder, add_args, peak_rss_bytes, publish_random_adapters, run_child

STEPS, STEPS_QUICK = 8, 3
BATCH, RANK = 8, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
MODES = ("ours", "peft", "ours-nockpt", "peft-bf16")  # the order they run in: the main ratio first


def load_data(scenario: str):
    if scenario == "synthetic":
        from ..demo import example_data
        return example_data()
    from .. import datasets
    return datasets.load(scenario)


def candidates(data, n: int, seed: int = 0) -> list[list]:
    """n candidates as adapterhub's loop draws them: groups, sampled down or topped up with negatives."""
    from ..config import TrainConfig
    from ..train import NegativeSampler, build_groups, visit
    rng = random.Random(seed)
    train = data.splits["train"]
    groups, sampler, cfg = build_groups(train), NegativeSampler(train), TrainConfig()
    out = []
    while len(out) < n:
        out += visit(groups[rng.randrange(len(groups))], cfg, sampler, rng)
    return out[:n]


def child_ours(base: str, quant: str, device: str, scenario: str, steps: int, batch: int, ckpt: bool) -> dict:
    from ..config import TrainConfig
    from ..hub import Hub
    data = load_data(scenario)
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(base=base, registry=Path(tmp) / "adapters", quant=quant, device=device)
        # facts off: the PEFT loop reads the plain prompts, and this compares loops, not prompts
        cfg = TrainConfig(r=RANK, max_steps=steps, batch_size=batch, eval_every=steps, warmup_steps=1, n_valid=20,
                          n_test=0, grad_checkpointing=ckpt, facts=False)
        # one untimed step first, as the PEFT loop has: oneDNN builds its kernels on a shape's first use
        hub.train("bench", data, dataclasses.replace(cfg, max_steps=1, eval_every=1, n_valid=4, seed=cfg.seed + 1),
                  publish=False, progress=False)
        _, card = hub.train("bench", data, cfg, publish=False, progress=False)
    t = card["train"]
    return {"candidates_per_s": t["candidates_per_s"], "candidates": t["candidates"], "train_s": t["train_s"],
            "peak_bytes": peak_rss_bytes(), "compute": hub.base.compute, "loss": t["log"][-1]["loss"]}


def peft_model(base: str, quant: str, device: str, compute: str, adapter_dir: str | None = None):
    """PEFT over the base: a fresh LoRA to train, or (adapter_dir) a published adapter's folder."""
    import peft
    from ..base import load_base
    from ..config import TrainConfig
    b = load_base(base, quant=quant, device=device, compute=compute)
    if adapter_dir is not None:
        model = peft.PeftModel.from_pretrained(b.model, adapter_dir)
    else:  # the same LoRA as ours: rank, alpha and dropout as TrainConfig's defaults
        model = peft.get_peft_model(b.model, peft.LoraConfig(r=RANK, lora_alpha=2 * RANK,
                                                             lora_dropout=TrainConfig().dropout,
                                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    yes, no = (b.tokenizer.encode(a, add_special_tokens=False)[0] for a in (" Yes", " No"))
    return b, model, yes, no


def peft_logits(model, tok_ids: list[list[int]], yes: int, no: int, device):
    """Left-padded batch of full prompts -> the Yes-No logit at each last token."""
    import torch
    width = max(map(len, tok_ids))
    ids = torch.zeros(len(tok_ids), width, dtype=torch.long)
    mask = torch.zeros(len(tok_ids), width, dtype=torch.long)
    for i, x in enumerate(tok_ids):
        ids[i, width - len(x):] = torch.tensor(x)
        mask[i, width - len(x):] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1).logits[:, -1].float()
    return logits[:, yes] - logits[:, no]


def child_peft(base: str, quant: str, device: str, scenario: str, steps: int, batch: int, compute: str) -> dict:
    import torch
    import torch.nn.functional as F
    from .. import prompts
    data = load_data(scenario)
    b, model, yes, no = peft_model(base, quant, device, compute)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    cands = candidates(data, (steps + 1) * batch)
    enc = [b.tokenizer.encode("".join(prompts.render(data.scenario, ex, data.items))) for ex in cands]
    elapsed = 0.0
    for step in range(steps + 1):  # step 0 warms up
        rows = slice(step * batch, (step + 1) * batch)
        t = time.perf_counter()
        z = peft_logits(model, enc[rows], yes, no, b.device)
        labels = torch.tensor([float(ex.label) for ex in cands[rows]], device=z.device)
        F.binary_cross_entropy_with_logits(z, labels).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:
            elapsed += time.perf_counter() - t
    return {"candidates_per_s": steps * batch / elapsed, "candidates": steps * batch, "train_s": elapsed,
            "peak_bytes": peak_rss_bytes(), "compute": b.compute,
            "tokens_per_candidate": sum(map(len, enc)) / len(enc)}


def ranking_case(data, n: int = 20) -> tuple[str, list[str]]:
    """The first test user's prompt prefix and n candidate suffixes: that user's test candidates,
    topped up with candidates drawn as training draws them."""
    from .. import prompts
    ex = data.splits["test"][0]
    group = [e for e in data.splits["test"] if (e.group or e.user) == (ex.group or ex.user)][:n]
    cands = group + candidates(data, n - len(group)) if len(group) < n else group
    prefix, _ = prompts.render(data.scenario, ex, data.items)
    return prefix, [prompts.render(data.scenario, c, data.items)[1] for c in cands]


def child_score(base: str, quant: str, device: str, scenario: str, repeat: int) -> dict:
    """Rank one user's 20 candidates under one random r=8 adapter: Hub.score_candidates (packed,
    compute=auto) vs PEFT NF4 with the same adapter folder loaded, the 20 full prompts in one batch."""
    import torch
    from ..hub import Hub
    prefix, suffixes = ranking_case(load_data(scenario))
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(base=base, registry=Path(tmp) / "a", quant=quant, device=device)
        # both sides run the same LoRA: until 2026-11-29 ours scored the bare base (no LoRA work at all)
        name = publish_random_adapters(hub, 1, r=RANK)[0]
        key = hub.load(name).key
        b, model, yes, no = peft_model(base, quant, device, "native", str(hub.registry.root / name / "v1"))
        model.eval()
        full = [b.tokenizer.encode(prefix + s) for s in suffixes]
        ours_s, peft_s = [], []
        with torch.no_grad():
            for _ in range(repeat + 1):  # alternate; the first round warms up
                t = time.perf_counter()
                a = hub.score_candidates(key, prefix, suffixes, batch_size=20)
                ours_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                p = torch.sigmoid(peft_logits(model, full, yes, no, b.device)).tolist()
                peft_s.append(time.perf_counter() - t)
    ours, theirs = sorted(ours_s[1:])[len(ours_s[1:]) // 2], sorted(peft_s[1:])[len(peft_s[1:]) // 2]
    return {"ours_per_s": len(suffixes) / ours, "peft_per_s": len(suffixes) / theirs, "candidates": len(suffixes),
            "max_abs_p_diff": max(abs(x - y) for x, y in zip(a, p)), "compute": hub.base.compute}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap, quants="nf4")
    ap.add_argument("--steps", type=int, default=None, help=f"timed steps per mode (default {STEPS}, --quick {STEPS_QUICK})")
    ap.add_argument("--batch", type=int, default=BATCH, help="candidates per step")
    ap.add_argument("--scenarios", default=None, help="comma list of music,news,video,ecommerce (real data); "
                                                      "default: synthetic (--quick) or music,news,video")
    ap.add_argument("--modes", default=",".join(MODES), help="comma list of " + ", ".join(MODES))
    ap.add_argument("--repeat", type=int, default=None, help="ranking repeats (default 5, --quick 2)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    steps = args.steps or (STEPS_QUICK if args.quick else STEPS)
    quant = args.quants.split(",")[0]
    scenarios = (args.scenarios or ("synthetic" if args.quick else "music,news,video")).split(",")
    if args.child:
        mode, scenario = args.child.split(":")
        if mode.startswith("ours"):
            out = child_ours(args.base, quant, args.device, scenario, steps, args.batch, mode == "ours")
        elif mode == "score":
            out = child_score(args.base, quant, args.device, scenario, args.repeat or (2 if args.quick else 5))
        else:
            out = child_peft(args.base, quant, args.device, scenario, steps, args.batch,
                             "native" if mode == "peft" else "bf16")
        print(json.dumps(out))
        return
    budget = Budget(args.budget_s)
    rec = Recorder("train", args.out, base=args.base, device=args.device, quant=quant)
    common = ["--base", args.base, "--device", args.device, "--quants", quant, "--steps", str(steps),
              "--batch", str(args.batch)] + (["--quick"] if args.quick else [])
    slowest = 0.0
    for scenario in scenarios:
        got = {}
        for mode in [m for m in args.modes.split(",") if m] + ["score"]:
            params = {"scenario": scenario, "mode": mode, "steps": steps, "batch_size": args.batch, "rank": RANK}
            if budget.over() or not budget.fits(slowest):
                rec.record("skipped", params, None, unit="", extra={"reason": "time budget"})
                continue
            t = time.monotonic()
            try:
                got[mode] = m = run_child("adapterhub.bench.training", ["--child", f"{mode}:{scenario}", *common],
                                          timeout=budget.left() + 30)
            except RuntimeError as e:
                rec.record("skipped", params, None, unit="", extra={"reason": str(e)[:300]})
                continue
            slowest = max(slowest, time.monotonic() - t)
            if mode == "score":
                rec.pair("rank_candidates_per_s", params, m["ours_per_s"], m["peft_per_s"], unit="candidates/s",
                         extra={"ratio": m["ours_per_s"] / m["peft_per_s"], "max_abs_p_diff": m["max_abs_p_diff"],
                                "compute": m["compute"], "candidates": m["candidates"]})
                continue
            extra = {k: v for k, v in m.items() if k not in ("candidates_per_s", "peak_bytes")}
            if mode != "ours" and "ours" in got:
                extra["ours_over_this"] = got["ours"]["candidates_per_s"] / m["candidates_per_s"]
            rec.record("train_candidates_per_s", params, m["candidates_per_s"], unit="candidates/s", extra=extra)
            rec.record("train_peak_bytes", params, m["peak_bytes"], unit="B", extra={"memory": "ru_maxrss"})
    rec.print_table()


if __name__ == "__main__":
    sys.exit(main())
