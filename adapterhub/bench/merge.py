"""Quality kept by merges: each scenario's AUC with its own adapter vs an n-way merge (issue 5, item 7).

    python -m adapterhub.bench.merge --quick          # CPU, SmolLM2-135M NF4, 200 test examples each
    python -m adapterhub.bench.merge                  # 1000 test examples each

Needs the shipped adapters (./adapters/<scenario> or --adapters, trained on this base) and the real data
(../shared/data, or $ADAPTERHUB_DATA); skips with a 'skipped' row saying why when either is absent
or the base is random (quality never comes from a random base). The shipped adapters are copied
into a temporary registry and merged there with equal weights 1/n (the CLI's default):
  cat   exact: the sum of the weighted deltas (rank = sum of the ranks)
  ties  TIES on the full deltas, then SVD back to the parents' rank (lossy)
Rows (suite "merge"): merge_auc {scenario, method: own | cat | ties | base, n, adapters}; 'kept' is
(merged - base) / (own - base), the share of the adapter's AUC gain over the bare base that the
merge keeps. With --budget-s, the scenarios after the first get as many test examples as fit in
their share of the time left (params.n; fewer than N_LEAST: skipped).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .common import Budget, Recorder, add_args, quant_list

SCENARIOS = ("video", "ecommerce", "news", "music")
METHODS = ("cat", "ties")
N, N_QUICK = 1000, 200
N_LEAST = 50  # an AUC on fewer test examples is noise
SHIPPED = Path("adapters")  # the repo's shipped adapters, from a checkout's root


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap, quants="nf4")
    ap.add_argument("--adapters", default=str(SHIPPED), help="registry holding the shipped scenario adapters "
                                                             "(default ./adapters)")
    ap.add_argument("--data", default=None, help="folder holding video/, ecommerce/, news/, music/ (default ../shared/data)")
    ap.add_argument("--n", type=int, default=None, help=f"test examples per scenario (default {N}, --quick {N_QUICK})")
    args = ap.parse_args(argv)
    budget = Budget(args.budget_s)
    n = args.n or (N_QUICK if args.quick else N)
    quant = quant_list(args.quants, args.device)[0]
    rec = Recorder("merge", args.out, base=args.base, device=args.device, quant=quant)
    try:
        run(rec, args, quant, n, budget)
    finally:
        rec.print_table()


def skip(rec, why: str, **params) -> None:
    print(f"merge quality: skipped ({why})", file=sys.stderr)
    rec.record("skipped", params, None, unit="", extra={"reason": why})


def run(rec, args, quant, n, budget):
    if args.base.startswith("random:"):
        return skip(rec, f"base {args.base} is random: merge quality needs the real base the adapters were trained on")
    from ..datasets import default_data_dir, load
    from ..errors import AdapterHubError
    from ..hub import Hub
    from ..registry import Registry
    from ..scoring import cap_examples, evaluate_split
    shipped = Registry(args.adapters)
    present = [s for s in SCENARIOS if s in shipped.names()]
    if len(present) < 2:
        return skip(rec, f"a merge needs at least two shipped adapters in {args.adapters}/ (found: {present or 'none'})")
    data_root = Path(args.data) if args.data else default_data_dir()
    if data_root is None or not data_root.is_dir():
        return skip(rec, "no data folder (../shared/data or $ADAPTERHUB_DATA): merge quality needs the real data")
    with tempfile.TemporaryDirectory() as tmp:  # never write into the shipped registry
        for s in present:
            shutil.copytree(shipped.root / s, Path(tmp) / s, ignore=shutil.ignore_patterns("*.lock", ".*"))
        hub = Hub(base=args.base, registry=Path(tmp), quant=quant, device=args.device)
        present = [s for s in present if _compatible(hub, s)]
        if len(present) < 2:
            return skip(rec, f"fewer than two shipped adapters were trained on base {args.base}")
        weights = {s: 1.0 / len(present) for s in present}
        merged = {m: hub.merge(weights, method=m, name=f"bench-{m}").key for m in METHODS}
        budget.parts = len(present)
        per_example_s = None  # measured on the first scenario
        for s in present:
            share = budget.share()  # inf without a budget
            n_s = n if per_example_s is None else int(min(n, share / per_example_s))
            params = {"scenario": s, "n": n_s, "adapters": len(present)}
            if budget.over() or n_s < N_LEAST:
                skip(rec, "time budget", **params)
                continue
            t = time.monotonic()
            try:
                data = load(s, data_root / s, max_examples={"train": 8, "valid": 8, "test": n_s})
            except AdapterHubError as e:
                skip(rec, f"no {s} data: {e}", **params)
                continue
            examples = cap_examples(data.splits["test"], n_s, 0)
            own = evaluate_split(hub, data, examples, hub.load(s).key, with_baselines=False)
            aucs = {"own": own["adapter"]["auc"], "base": own["base"]["auc"]}
            for m, key in merged.items():
                aucs[m] = evaluate_split(hub, data, examples, key, with_base=False, with_baselines=False)["adapter"]["auc"]
            gain = aucs["own"] - aucs["base"]
            for method, value in aucs.items():
                extra = {"n_examples": len(examples), "task": data.task, "parents": sorted(weights)}
                if method in METHODS:
                    extra["kept"] = (value - aucs["base"]) / gain if abs(gain) > 1e-9 else None
                rec.record("merge_auc", {**params, "method": method}, value, unit="auc", extra=extra)
            per_example_s = (time.monotonic() - t) / max(1, len(examples))


def _compatible(hub, name: str) -> bool:
    fp = (hub.registry.card(name).get("base") or {}).get("fingerprint")
    return fp is None or fp == hub.fingerprint


if __name__ == "__main__":
    sys.exit(main())
