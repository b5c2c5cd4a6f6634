"""Old loop vs new loop, same wall-clock training budget, same evaluation (issue 11).

    python benchmarks/loop_compare.py --minutes 5 --scenarios music,news      # ~30 min on 2 cores

old   the landed recipe: bitsandbytes NF4 kernels (compute=native), one full prompt per candidate
      (group_size 1, no sampled negatives), pointwise BCE only, no gradient checkpointing
new   the defaults: packed shared-prefix groups of 8, sampled negatives, listwise+BCE, the base
      dequantized once to bf16, gradient checkpointing
Both train for --minutes of training steps (evaluation excluded), batch 8, lr 1e-3, seed 0, one
validation pass at the end, and run at the same time with one thread each, so that they share the
machine equally. Then both adapters, the bare base and the baselines are scored on the same
valid and test examples by one bf16 hub. Results: <out>/loop_compare.jsonl, one line per
(scenario, split, method).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OLD = dict(group_size=1, negatives=0, listwise_weight=0.0, grad_checkpointing=False)


def child(scenario: str, loop: str, minutes: float, registry: str) -> None:
    import torch
    from adapterhub import datasets
    from adapterhub.config import TrainConfig
    from adapterhub.hub import Hub
    torch.set_num_threads(1)
    data = datasets.load(scenario)
    hub = Hub(base="smollm2-135m", registry=registry, compute="native" if loop == "old" else "auto")
    # facts off for both: this compares the loops (issue 11), not the prompts (issue 12)
    cfg = TrainConfig(max_steps=100_000, eval_every=100_000, max_minutes=minutes, batch_size=8, lr=1e-3,
                      n_valid=40, n_test=0, facts=False, **(OLD if loop == "old" else {}))
    _, card = hub.train(f"{scenario}-{loop}", data, cfg, progress=False, promote=True, force=True)
    t = card["train"]
    print(json.dumps({"scenario": scenario, "loop": loop, "steps": t["steps"], "candidates": t["candidates"],
                      "candidates_per_s": t["candidates_per_s"], "train_s": t["train_s"]}))


def evaluate(scenarios, registry: str, out: Path, n_valid: int, n_test: int, runs: dict) -> None:
    from adapterhub import datasets
    from adapterhub.hub import Hub
    from adapterhub.scoring import cap_examples, encode_examples, evaluate_split
    hub = Hub(base="smollm2-135m", registry=registry)
    done = {(r["scenario"], r["split"]) for r in map(json.loads, open(out))} if out.exists() else set()
    for scenario in scenarios:
        data = datasets.load(scenario)
        for split, n in (("valid", n_valid), ("test", n_test)):
            if (scenario, split) in done:  # resumable: a finished (scenario, split) is not redone
                continue
            examples = cap_examples(data.splits[split], n, 0)
            enc = encode_examples(hub, data, examples)
            t0 = time.perf_counter()
            rows = evaluate_split(hub, data, examples, None, encoded=enc)  # base + baselines, with 95% intervals
            for loop in ("old", "new"):
                key = hub.load(f"{scenario}-{loop}").key
                rows[f"adapter ({loop} loop)"] = evaluate_split(hub, data, examples, key, with_base=False,
                                                                with_baselines=False, encoded=enc, seed=0)["adapter"]
            for method, metrics in rows.items():
                line = {"scenario": scenario, "split": split, "method": method, **metrics,
                        "eval_s": round(time.perf_counter() - t0, 1)}
                if method.startswith("adapter ("):
                    line.update(runs.get((scenario, method[9:12]), {}))
                with open(out, "a") as fh:
                    fh.write(json.dumps(line) + "\n")
                print(json.dumps(line), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0, help="training-step budget per adapter")
    ap.add_argument("--scenarios", default="music,news")
    ap.add_argument("--n-valid", type=int, default=2000, help="valid examples (whole groups)")
    ap.add_argument("--n-test", type=int, default=6000, help="test examples (whole groups)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--work", default="/tmp/adapterhub-loop-compare", help="scratch registry")
    ap.add_argument("--eval-only", action="store_true", help="skip training: evaluate the adapters in --work")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        scenario, loop = args.child.split(":")
        return child(scenario, loop, args.minutes, args.work)
    scenarios = args.scenarios.split(",")
    runs = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for scenario in ([] if args.eval_only else scenarios):  # old and new at the same time, one thread each
        procs = {loop: subprocess.Popen([sys.executable, __file__, "--child", f"{scenario}:{loop}", "--minutes",
                                         str(args.minutes), "--work", args.work], stdout=subprocess.PIPE, env=env, text=True)
                 for loop in ("old", "new")}
        for loop, p in procs.items():
            stdout, _ = p.communicate()
            if p.returncode:
                sys.exit(f"{scenario} {loop} loop failed (exit {p.returncode})")
            runs[(scenario, loop)] = json.loads(stdout.strip().splitlines()[-1])
            print(runs[(scenario, loop)], flush=True)
    out = Path(args.out) / "loop_compare.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    evaluate(scenarios, args.work, out, args.n_valid, args.n_test, runs)


if __name__ == "__main__":
    sys.exit(main())
