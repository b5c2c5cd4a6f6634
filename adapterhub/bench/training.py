"""Training and ranking throughput: adapterhub's loop against a plain PEFT + transformers loop,
on the same examples, in the same run.

    python -m adapterhub.bench.training --quick                                 # synthetic data, ~2 min
    python -m adapterhub.bench.training --scenarios music,news,video --steps 6  # real prompts (../shared/data)

Scenarios: music,news,video when ../shared/data is here and the base is real; else (--quick, a
random: base, or no data, as on a fresh GPU machine) the built-in synthetic one, and the rows say so.
Per scenario, r=8 on q/k/v/o, on CPU each mode in a fresh process (so each peak RSS is its own); on
CUDA every mode in one process, one after the other, each peak its own (the allocator's peak is reset
before each mode's timed steps; `gpu_start_bytes` shows what was alive then):
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
Rows (suite "train"): train_candidates_per_s (ours_over_this: ours / this mode; prompt_tokens_per_s =
candidates/s x the mean tokens of a candidate's full prompt, what a one-prompt-per-candidate loop
computes to judge as many), train_peak_bytes (CPU: ru_maxrss), train_peak_gpu_bytes (CUDA:
max_memory_allocated over the timed steps, the base included), rank_candidates_per_s (peft: the PEFT
figure beside ours). Timers wait for the GPU (synchronize) before they are read. The modes run ours,
peft, score (always: the main ratios; the runner's kill bounds the time), then the rest, each
skipped when the slowest one so far would not fit in what --budget-s leaves.
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

from ..memory import free_gpu, gpu_peak, is_cuda
from .common import Budget, Recorder, add_args, attempt, child_lines, peak_rss_bytes, publish_random_adapters, sync

STEPS, STEPS_QUICK = 8, 3
BATCH, RANK = 8, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
MODES = ("ours", "peft", "ours-nockpt", "peft-bf16")
FIRST = ("ours", "peft", "score")  # what runs first: the ratios the report leads with
REAL_SCENARIOS = "music,news,video"


def default_scenarios(quick: bool, base: str) -> str:
    """Real prompts where they mean something and the data is here; else the synthetic scenario."""
    from ..datasets import default_data_dir
    if quick or base.startswith("random:") or default_data_dir() is None:
        return "synthetic"
    return REAL_SCENARIOS


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
        with gpu_peak(device) as gpu:
            sync()
            t0 = time.perf_counter()
            _, card = hub.train("bench", data, cfg, publish=False, progress=False)
            sync()
            wall_s = time.perf_counter() - t0  # steps + the one validation check, synchronised: a cross-check
        compute, tokenizer = hub.base.compute, hub.tokenizer
        del hub
    t = card["train"]
    return {"candidates_per_s": t["candidates_per_s"], "candidates": t["candidates"], "train_s": t["train_s"],
            "peak_bytes": peak_rss_bytes(), "compute": compute, "loss": t["log"][-1]["loss"], "wall_s": wall_s,
            "tokens_per_candidate": prompt_tokens(data, tokenizer, (steps + 1) * batch), **_gpu(gpu)}


def prompt_tokens(data, tokenizer, n: int) -> float:
    """Mean tokens of a candidate's full prompt over the n candidates the PEFT loop draws (the same
    draw): what a loop running one prompt per candidate computes to judge each."""
    from .. import prompts
    enc = [tokenizer.encode("".join(prompts.render(data.scenario, ex, data.items))) for ex in candidates(data, n)]
    return sum(map(len, enc)) / len(enc)


def _gpu(m: dict) -> dict:
    """gpu_peak's figures as a child reports them (none off CUDA)."""
    return {"peak_gpu_bytes": m["peak_bytes"], "gpu_start_bytes": m["start_bytes"]} if m else {}


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
    with gpu_peak(device) as gpu:
        for step in range(steps + 1):  # step 0 warms up
            rows = slice(step * batch, (step + 1) * batch)
            sync()
            t = time.perf_counter()
            z = peft_logits(model, enc[rows], yes, no, b.device)
            labels = torch.tensor([float(ex.label) for ex in cands[rows]], device=z.device)
            F.binary_cross_entropy_with_logits(z, labels).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()  # the step's GPU work, not its launch
            if step:
                elapsed += time.perf_counter() - t
    compute = b.compute
    del b, model, opt
    return {"candidates_per_s": steps * batch / elapsed, "candidates": steps * batch, "train_s": elapsed,
            "peak_bytes": peak_rss_bytes(), "compute": compute, "tokens_per_candidate": sum(map(len, enc)) / len(enc),
            **_gpu(gpu)}


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
    compute=auto) vs PEFT with the same adapter folder loaded, the 20 full prompts in one batch."""
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
                a = hub.score_candidates(key, prefix, suffixes, batch_size=20)  # .tolist(): synchronised
                ours_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                p = torch.sigmoid(peft_logits(model, full, yes, no, b.device)).tolist()
                peft_s.append(time.perf_counter() - t)
        compute = hub.base.compute
        del hub, b, model
    ours, theirs = sorted(ours_s[1:])[len(ours_s[1:]) // 2], sorted(peft_s[1:])[len(peft_s[1:]) // 2]
    return {"ours_per_s": len(suffixes) / ours, "peft_per_s": len(suffixes) / theirs, "candidates": len(suffixes),
            "max_abs_p_diff": max(abs(x - y) for x, y in zip(a, p)), "compute": compute}


def run_mode(mode: str, args, quant: str, scenario: str, steps: int) -> dict:
    if mode.startswith("ours"):
        return child_ours(args.base, quant, args.device, scenario, steps, args.batch, mode == "ours")
    if mode == "score":
        return child_score(args.base, quant, args.device, scenario, args.repeat or (2 if args.quick else 5))
    return child_peft(args.base, quant, args.device, scenario, steps, args.batch, "native" if mode == "peft" else "bf16")


def child(args, quant: str, steps: int) -> None:
    """--child MODE[,MODE...]:SCENARIO: one JSON line per mode as it finishes (a child killed at its
    deadline keeps the modes it finished); the modes after the budget are 'skipped' lines."""
    modes, scenario = args.child.split(":")
    budget = Budget(args.budget_s)
    for mode in modes.split(","):
        if mode not in FIRST and budget.over():
            print(json.dumps({"mode": mode, "skipped": "time budget"}), flush=True)
            continue
        out = attempt(run_mode, mode, args, quant, scenario, steps)  # a failed mode: a 'skipped' line, why
        free_gpu(args.device)  # the next mode starts from what is really alive
        print(json.dumps({"mode": mode, **out}), flush=True)


def record(rec: Recorder, params: dict, mode: str, m: dict, got: dict) -> None:
    if mode == "score":
        rec.pair("rank_candidates_per_s", params, m["ours_per_s"], m["peft_per_s"], unit="candidates/s",
                 extra={"ratio": m["ours_per_s"] / m["peft_per_s"], "max_abs_p_diff": m["max_abs_p_diff"],
                        "compute": m["compute"], "candidates": m["candidates"]})
        return
    extra = {k: v for k, v in m.items() if k not in ("mode", "candidates_per_s", "peak_bytes", "peak_gpu_bytes",
                                                     "gpu_start_bytes")}
    tokens = m.get("tokens_per_candidate")
    if tokens:
        extra.update(tokens_per_candidate=tokens, prompt_tokens_per_s=m["candidates_per_s"] * tokens)
    if mode != "ours" and "ours" in got:
        extra["ours_over_this"] = got["ours"]["candidates_per_s"] / m["candidates_per_s"]
    rec.record("train_candidates_per_s", params, m["candidates_per_s"], unit="candidates/s", extra=extra)
    if "peak_gpu_bytes" in m:
        rec.record("train_peak_gpu_bytes", params, m["peak_gpu_bytes"], unit="B",
                   extra={"memory": "cuda_max_allocated", "gpu_start_bytes": m["gpu_start_bytes"]})
    else:
        rec.record("train_peak_bytes", params, m["peak_bytes"], unit="B", extra={"memory": "ru_maxrss"})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap, quants="nf4")
    ap.add_argument("--steps", type=int, default=None, help=f"timed steps per mode (default {STEPS}, --quick {STEPS_QUICK})")
    ap.add_argument("--batch", type=int, default=BATCH, help="candidates per step")
    ap.add_argument("--scenarios", default=None, help=f"comma list of music,news,video,ecommerce (real data) or "
                                                      f"synthetic; default: {REAL_SCENARIOS} where ../shared/data is "
                                                      "and the base is real, else synthetic")
    ap.add_argument("--modes", default=",".join(MODES), help="comma list of " + ", ".join(MODES))
    ap.add_argument("--repeat", type=int, default=None, help="ranking repeats (default 5, --quick 2)")
    ap.add_argument("--one-process", action="store_true", help="every mode in one child process, as on CUDA (on "
                    "CPU the RSS peaks are then not each mode's own: for dry runs of the GPU path)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    steps = args.steps or (STEPS_QUICK if args.quick else STEPS)
    quant = args.quants.split(",")[0]
    if args.child:
        return child(args, quant, steps)
    scenarios = (args.scenarios or default_scenarios(args.quick, args.base)).split(",")
    asked = [m for m in args.modes.split(",") if m] + ["score"]
    order = [m for m in FIRST if m in asked] + [m for m in asked if m not in FIRST]
    budget = Budget(args.budget_s)
    rec = Recorder("train", args.out, base=args.base, device=args.device, quant=quant)
    common = ["--base", args.base, "--device", args.device, "--quants", quant, "--steps", str(steps),
              "--batch", str(args.batch)] + (["--quick"] if args.quick else [])
    common += ["--repeat", str(args.repeat)] if args.repeat else []
    # CUDA: every mode in one process (peaks from the allocator, reset per mode); CPU: one each (RSS)
    batches = [order] if is_cuda(args.device) or args.one_process else [[m] for m in order]
    slowest = 0.0
    for scenario in scenarios:
        rec.context["data"] = "synthetic" if scenario == "synthetic" else "real"
        got: dict[str, dict] = {}
        for batch in batches:
            if not set(batch) & set(FIRST) and (budget.over() or not budget.fits(slowest)):
                for mode in batch:
                    rec.record("skipped", _params(scenario, mode, steps, args), None, unit="",
                               extra={"reason": "time budget"})
                continue
            t = time.monotonic()
            argv_child = ["--child", f"{','.join(batch)}:{scenario}", *common]
            if args.budget_s is not None:
                argv_child += ["--budget-s", f"{budget.left():.0f}"]
            done, error = set(), None
            try:  # each mode recorded as it finishes; the runner's kill bounds the time, this is a safety net
                for m in child_lines("adapterhub.bench.training", argv_child, timeout=2 * budget.left() + 120):
                    mode, params = m["mode"], _params(scenario, m["mode"], steps, args)
                    done.add(mode)
                    if "skipped" in m:
                        rec.record("skipped", params, None, unit="", extra={"reason": m["skipped"]})
                        continue
                    got[mode] = m
                    record(rec, params, mode, m, got)
            except RuntimeError as e:
                error = str(e)[:300]
            slowest = max(slowest, (time.monotonic() - t) / len(batch))
            for mode in [m for m in batch if m not in done]:
                rec.record("skipped", _params(scenario, mode, steps, args), None, unit="",
                           extra={"reason": error or "no result"})
    rec.print_table()


def _params(scenario: str, mode: str, steps: int, args) -> dict:
    return {"scenario": scenario, "mode": mode, "steps": steps, "batch_size": args.batch, "rank": RANK}


if __name__ == "__main__":
    sys.exit(main())
