"""Scenario transfer with few examples: cold LoRA vs warm start vs distillation.

The "new scenario" is built from MovieLens/TALLRec (the movie -> TV idea of the source material):
  target genres  T = {Comedy, Romance}; an example belongs to the target scenario when its
                 candidate movie has a genre in T, to the source scenario otherwise.
  source adapter trained on source-scenario TRAIN examples only (never a target-genre candidate).
  target few-shot n examples (16, 64, 256) sampled per seed from target-scenario TRAIN examples.
  evaluation     target-scenario examples of the TEST split (users disjoint from train), same for
                 every run. No test example is used for training or model selection (early stopping
                 is off: a fixed number of steps).
Methods: cold (fresh LoRA), warm (init from the source adapter), distilled (fresh LoRA, loss mixes
the hard labels with the source adapter's P(yes) as teacher, weight 0.5).

    python benchmarks/transfer/transfer.py            # 3 seeds x n in (16, 64, 256), SmolLM2 NF4 (CPU: ~75 min)
    python benchmarks/transfer/transfer.py --quick    # 3 seeds x n in (16, 64), fewer test examples

Results go beside this script (--out): transfer.jsonl, transfer_summary.json, transfer_auc_vs_n.png.
The run resumes: the source adapter and every finished (method, n, seed) AUC are kept in --work
(default $ADAPTERHUB_CACHE/transfer-work/<settings hash>/, outside the repo), one folder per
settings, so a killed run picks up where it stopped. Delete that folder to start over.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import statistics
import time
from pathlib import Path

from adapterhub.bench.common import Recorder

TARGET_GENRES = {"Comedy", "Romance"}


def split_by_genre(data):
    """-> (source ScenarioData, target ScenarioData): the same items, examples split by candidate genre."""
    def is_target(ex):
        return bool(set(data.items[ex.candidate].category.split("|")) & TARGET_GENRES)
    src = {s: [e for e in ex if not is_target(e)] for s, ex in data.splits.items()}
    tgt = {s: [e for e in ex if is_target(e)] for s, ex in data.splits.items()}
    return (dataclasses.replace(data, scenario="video", splits=src, sha256=data.sha256 + ":source"),
            dataclasses.replace(data, scenario="video", splits=tgt, sha256=data.sha256 + ":target"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--quant", default="nf4")
    ap.add_argument("--data", default=None, help="video data folder (default ../shared/data/video)")
    ap.add_argument("--ns", default="16,64,256")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--source-steps", type=int, default=60)
    ap.add_argument("--quick", action="store_true", help="n in (16, 64), 150 test examples")
    ap.add_argument("--out", default=str(Path(__file__).parent), help="folder for the results (default: beside this script)")
    ap.add_argument("--work", default=None, help="registry + finished runs, so a killed run resumes "
                    "(default $ADAPTERHUB_CACHE/transfer-work)")
    args = ap.parse_args()
    if args.quick:
        args.ns, args.n_test = "16,64", 150
    from adapterhub.config import TrainConfig
    from adapterhub.datasets import load
    from adapterhub.evaluation import evaluate
    from adapterhub.hub import Hub
    from adapterhub.scoring import cap_examples, encode_examples, score_examples

    data = load("video", args.data)
    source, target = split_by_genre(data)
    test = cap_examples(target.splits["test"], args.n_test, 0)
    rec = Recorder("transfer", args.out, base=args.base, quant=args.quant, device="cpu")
    print(f"source train {len(source.splits['train'])}, target train pool {len(target.splits['train'])}, "
          f"target test {len(test)} (genres {sorted(TARGET_GENRES)})", flush=True)
    # One folder per settings: a different base, data, test set or source is a fresh run, never a reuse.
    settings = f"{args.base}/{args.quant}/test{len(test)}/src{args.source_steps}/{data.sha256[:12]}"
    from adapterhub.base import cache_dir
    work = Path(args.work or cache_dir() / "transfer-work") / hashlib.sha256(settings.encode()).hexdigest()[:12]
    work.mkdir(parents=True, exist_ok=True)
    done_path = work / "runs.json"
    done = json.loads(done_path.read_text()) if done_path.exists() else {"settings": settings}

    def remember(key, value):
        done[key] = value
        tmp = done_path.with_suffix(".tmp")  # then os.replace: a kill never leaves half a file
        tmp.write_text(json.dumps(done, indent=1))
        os.replace(tmp, done_path)

    hub = Hub(base=args.base, registry=work / "adapters", quant=args.quant)
    enc_test = encode_examples(hub, target, test)
    source_name = "source"
    if source_name not in hub.registry.names():
        t = time.perf_counter()
        hub.train(source_name, source, TrainConfig(max_steps=args.source_steps, eval_every=args.source_steps,
                                                   n_valid=64, n_test=0), progress=False)
        print(f"source adapter trained in {time.perf_counter() - t:.0f} s", flush=True)
    else:
        print(f"source adapter {source_name} reused from {work}", flush=True)
    for key, adapter_key in (("base", None), ("source", source_name)):
        if key not in done:
            key_loaded = adapter_key and hub.load(adapter_key).key
            remember(key, evaluate("pointwise", test, score_examples(hub, key_loaded, enc_test))["auc"])
    base_auc, src_auc = done["base"], done["source"]
    rec.record("target_test_auc", {"method": "base (no adapter)", "n": 0}, base_auc, unit="auc")
    rec.record("target_test_auc", {"method": "source adapter as is", "n": 0}, src_auc, unit="auc")
    results: dict[tuple[str, int], list[float]] = {}
    for n in [int(x) for x in args.ns.split(",")]:
        for seed in range(args.seeds):
            pool = random.Random(seed).sample(target.splits["train"], n)
            few = dataclasses.replace(target, splits={"train": pool, "valid": pool, "test": []})
            steps = max(8, math.ceil(n / 8))  # one epoch, at least 8 updates
            for method, extra in (("cold", {}), ("warm", {"init_from": source_name}),
                                  ("distilled", {"teacher": source_name, "distill_weight": 0.5})):
                name = f"{method}-{n}-{seed}"
                if name in done:
                    results.setdefault((method, n), []).append(done[name])
                    print(f"n={n} seed={seed} {method}: auc {done[name]:.4f} (earlier run)", flush=True)
                    continue
                cfg = TrainConfig(max_steps=steps, eval_every=steps, seed=seed, n_valid=16, n_test=0,
                                  batch_size=8, lr=1e-3, warmup_steps=2, **extra)
                t = time.perf_counter()
                adapter, _ = hub.train(name, few, cfg, progress=False)
                auc = evaluate("pointwise", test, score_examples(hub, adapter.key, enc_test))["auc"]
                hub.unload(adapter.key)
                remember(name, auc)
                results.setdefault((method, n), []).append(auc)
                rec.record("target_test_auc", {"method": method, "n": n, "seed": seed}, auc, unit="auc",
                           extra={"train_s": time.perf_counter() - t, "steps": steps})
                print(f"n={n} seed={seed} {method}: auc {auc:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
    print(f"\nTarget test AUC (n_test={len(test)}); base {base_auc:.4f}; source adapter as is {src_auc:.4f}\n")
    print("| n | cold | warm start | distilled |\n|---|---|---|---|")
    for n in sorted({n for _, n in results}):
        cells = []
        for method in ("cold", "warm", "distilled"):
            v = results[(method, n)]
            cells.append(f"{statistics.mean(v):.4f} ± {statistics.pstdev(v):.4f} (min {min(v):.3f}, max {max(v):.3f})")
        print(f"| {n} | " + " | ".join(cells) + " |")
    summary = {f"{m}@{n}": v for (m, n), v in results.items()}
    (Path(args.out) / "transfer_summary.json").write_text(json.dumps(
        {"base_auc": base_auc, "source_auc": src_auc, "n_test": len(test), "runs": summary}, indent=2))
    plot(results, base_auc, src_auc, Path(args.out) / "transfer_auc_vs_n.png")


def plot(results, base_auc, src_auc, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install -e '.[bench]'): no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = sorted({n for _, n in results})
    for method in ("cold", "warm", "distilled"):
        means = [statistics.mean(results[(method, n)]) for n in ns]
        errs = [statistics.pstdev(results[(method, n)]) for n in ns]
        ax.errorbar(ns, means, yerr=errs, marker="o", capsize=3, label=method)
    ax.axhline(base_auc, ls=":", c="gray", label="base, no adapter")
    ax.axhline(src_auc, ls="--", c="black", label="source adapter as is")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("target examples (n)")
    ax.set_ylabel("target test AUC")
    ax.set_title("Movies: other genres -> Comedy/Romance")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
