"""Base memory per quant mode: parameter bytes, what a load leaves resident and what it peaks at,
forward and training-step peaks, load time.

    python -m adapterhub.bench.memory --quick                          # CPU, SmolLM2-135M, ~1 min
    python -m adapterhub.bench.memory --base random:llama-1b --device cuda

Rows (suite "base"), per quant mode, NF4 first:
  param_bytes      parameters + buffers as stored (4-bit weights count their packed bytes + absmax);
                   linear_bytes = the decoder Linears' share (what quantization shrinks: embeddings,
                   head and norms stay in the compute dtype)
  load_s           spec -> frozen, quantized model (the SmolLM2 GGUF conversion is cached, not counted)
CUDA (all modes in one process: the allocator counts each tensor exactly, and every peak is reset
before the work it measures, adapterhub.memory.gpu_peak):
  steady_gpu_bytes            allocated after the load minus before it: the base as it stays resident
  load_peak_gpu_bytes         the allocator's peak during the load (the model being built + one tensor)
  forward_peak_gpu_bytes      peak of a no-grad forward of FWD_ROWS x FWD_SEQ tokens (answer position only)
  train_step_peak_gpu_bytes   peak of one LoRA (r=8, q/k/v/o) forward + backward of TRAIN_ROWS x TRAIN_SEQ tokens
CPU (each mode in a fresh process, so the peak is that load's own): peak_rss_bytes, rss_delta_bytes.
With --budget-s a quant mode after the first two is skipped when the slowest one so far would not
fit in what is left (the first two always run; the runner's kill bounds the time).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from ..memory import free_gpu, gpu_allocated_bytes, gpu_peak, is_cuda
from .common import Budget, Recorder, add_args, attempt, child_lines, peak_rss_bytes, quant_list, rss_bytes

QUANTS = "nf4,bf16,int8,fp32"  # NF4 first: the mode this project is about is never the one left out
ALWAYS = 2  # the first modes run whatever the soft budget (NF4 against bf16: the GPU table's ratio)
FWD_ROWS, FWD_SEQ = 8, 512
TRAIN_ROWS, TRAIN_SEQ, RANK = 4, 256, 8
GPU_ROWS = ("steady_gpu_bytes", "load_peak_gpu_bytes", "forward_peak_gpu_bytes", "train_step_peak_gpu_bytes")


def _tokens(b, rows: int, seq: int):
    import torch
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, min(1000, b.model.config.vocab_size), (rows, seq), generator=g).to(b.device)


def _train_step(b, rows: int, seq: int) -> None:
    """One LoRA step as a QLoRA user runs it: PEFT pairs on q/k/v/o, loss on the last position."""
    import peft
    import torch
    model = peft.get_peft_model(b.model, peft.LoraConfig(r=RANK, lora_alpha=2 * RANK, task_type="CAUSAL_LM",
                                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.train()
    logits = model(input_ids=_tokens(b, rows, seq), logits_to_keep=1).logits[:, -1].float()
    torch.nn.functional.cross_entropy(logits, torch.zeros(rows, dtype=torch.long, device=b.device)).backward()


def measure_gpu(base: str, quant: str, device: str) -> dict:
    """One quant mode on CUDA: load, then each peak over its own reset (see the module docstring)."""
    import torch
    from ..base import load_base, param_bytes
    free_gpu(device)
    before = gpu_allocated_bytes(device)
    with gpu_peak(device) as load:
        b = load_base(base, quant=quant, device=device)
    out = {"load_s": b.load_s, "param_bytes": param_bytes(b.model), "linear_bytes": param_bytes(b.model, "linear"),
           "gpu_before_bytes": before, "steady_gpu_bytes": gpu_allocated_bytes(device) - before,
           "load_peak_gpu_bytes": load["peak_bytes"] - before}
    with torch.no_grad(), gpu_peak(device) as fwd:
        b.model(input_ids=_tokens(b, FWD_ROWS, FWD_SEQ), logits_to_keep=1)
    out["forward_peak_gpu_bytes"] = fwd["peak_bytes"] - before
    with gpu_peak(device) as step:
        _train_step(b, TRAIN_ROWS, TRAIN_SEQ)
    out["train_step_peak_gpu_bytes"] = step["peak_bytes"] - before
    del b
    free_gpu(device)
    return out


def measure_cpu(base: str, quant: str, device: str) -> dict:
    """One quant mode in this (fresh) process: RSS before and after, and the process peak."""
    import torch
    from ..base import load_base, param_bytes
    load_base("random:tiny", quant="fp32", device="cpu")  # imports and lazy inits are not the model's memory
    if quant in ("nf4", "int8"):
        import bitsandbytes  # noqa: F401
    rss0 = rss_bytes()
    b = load_base(base, quant=quant, device=device)
    with torch.no_grad():
        b.model(input_ids=_tokens(b, 1, 16))  # the first forward allocates (and for nf4 on CPU may repack) too
    return {"load_s": b.load_s, "param_bytes": param_bytes(b.model), "linear_bytes": param_bytes(b.model, "linear"),
            "rss_before_bytes": rss0, "rss_after_bytes": rss_bytes(), "peak_rss_bytes": peak_rss_bytes()}


def child(base: str, quants: list[str], device: str, budget_s: float | None) -> None:
    """Print one JSON line per quant mode as it is done (a killed child keeps the modes it finished; a
    mode that fails is a 'skipped' line saying why, and the next one runs)."""
    budget = Budget(budget_s)
    for i, quant in enumerate(quants):
        if i >= ALWAYS and budget.over():
            print(json.dumps({"quant": quant, "skipped": "time budget"}), flush=True)
            continue
        m = attempt(measure_gpu if is_cuda(device) else measure_cpu, base, quant, device)
        print(json.dumps({"quant": quant, **m}), flush=True)


def record(rec: Recorder, quant: str, m: dict) -> None:
    p = {"quant": quant}
    rec.context.update(quant=quant)
    rec.record("param_bytes", p, m["param_bytes"], unit="B", extra={"linear_bytes": m.get("linear_bytes")})
    rec.record("load_s", p, m["load_s"], unit="s")
    if "steady_gpu_bytes" in m:
        for metric in GPU_ROWS:
            extra = {"gpu_before_bytes": m["gpu_before_bytes"], "memory": "cuda_allocated"}
            if metric == "forward_peak_gpu_bytes":
                extra.update(rows=FWD_ROWS, seq=FWD_SEQ)
            elif metric == "train_step_peak_gpu_bytes":
                extra.update(rows=TRAIN_ROWS, seq=TRAIN_SEQ, rank=RANK)
            rec.record(metric, p, m[metric], unit="B", extra=extra)
    else:
        rec.record("peak_rss_bytes", p, m["peak_rss_bytes"], unit="B")
        rec.record("rss_delta_bytes", p, m["rss_after_bytes"] - m["rss_before_bytes"], unit="B")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap, quants=QUANTS)
    ap.add_argument("--one-process", action="store_true", help="every mode in one child process, as on CUDA (on "
                    "CPU the RSS figures are then not each mode's own: for dry runs of the GPU path)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.base, args.child.split(","), args.device, args.budget_s)
        return
    budget = Budget(args.budget_s)
    rec = Recorder("base", args.out, base=args.base, device=args.device)
    quants = quant_list(args.quants, args.device)
    # CUDA: one process for every mode (the allocator's figures are exact per tensor); CPU: one each (RSS)
    batches = [quants] if is_cuda(args.device) or args.one_process else [[q] for q in quants]
    slowest = 0.0
    for i, batch in enumerate(batches):
        if i >= ALWAYS and (budget.over() or not budget.fits(slowest)):
            for quant in batch:
                rec.context.update(quant=quant)
                rec.record("skipped", {"quant": quant}, None, unit="", extra={"reason": "time budget"})
            continue
        t = time.monotonic()
        argv = ["--child", ",".join(batch), "--base", args.base, "--device", args.device]
        if args.budget_s is not None:
            argv += ["--budget-s", f"{budget.left():.0f}"]
        done, error = set(), None
        try:  # the runner's kill bounds the time; this timeout is only a safety net when run alone
            for m in child_lines("adapterhub.bench.memory", argv, timeout=2 * budget.left() + 120):
                done.add(m["quant"])
                if "skipped" in m:
                    rec.context.update(quant=m["quant"])
                    rec.record("skipped", {"quant": m["quant"]}, None, unit="", extra={"reason": m["skipped"]})
                else:
                    record(rec, m["quant"], m)
        except RuntimeError as e:
            error = str(e)[:300]
        slowest = max(slowest, (time.monotonic() - t) / len(batch))
        for quant in [q for q in batch if q not in done]:
            rec.context.update(quant=quant)
            rec.record("skipped", {"quant": quant}, None, unit="", extra={"reason": error or "no result"})
    rec.print_table()


if __name__ == "__main__":
    sys.exit(main())
