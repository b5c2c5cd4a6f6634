"""Quality kept by merges: every merge recipe, scored on every scenario's test split.

    python -m adapterhub.bench.merge --quick          # CPU, SmolLM2-135M NF4, smaller test slices
    python -m adapterhub.bench.merge                  # the slices in CAPS
    python -m adapterhub.bench.merge --recipes cat-sum,ties-sum --also joint4@v1,joint4@v2

Needs the shipped adapters (./adapters/<scenario> or --adapters, trained on this base), their facts
(`adapterhub facts ...`) and the real data (../shared/data, or $ADAPTERHUB_DATA); skips with a
'skipped' row saying why when any is absent or the base is random. The shipped adapters' current
versions are copied into a temporary registry and merged there with each recipe of RECIPES:
a method (adapterhub.merge) and a weight rule, "mean" (1/n each: an average) or "sum" (1 each:
task arithmetic, the sum of the deltas). Each scenario is scored on a seeded slice of CAPS[scenario]
candidates of its test split (--split valid: its valid split, which is what chooses the default
recipe; whole groups, as its card picked them), with its own facts in the
prompt, under: its own adapter, the bare base, and each merge. Rows (suite "merge"): merge_quality
{scenario, recipe, n}; value = the scenario's primary metric; kept = (merged - base) / (own - base),
the share of the adapter's gain over the bare base that the merge keeps.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .common import Budget, Recorder, add_args, quant_list

SCENARIOS = ("video", "ecommerce", "news", "music")
RECIPES = {  # name -> (method, weight rule, density)
    "cat-mean": ("cat", "mean", 0.5),
    "cat-sum": ("cat", "sum", 0.5),
    "linear-mean": ("linear", "mean", 0.5),
    "svd-sum": ("svd", "sum", 0.5),
    "ties-sum": ("ties", "sum", 0.5),
    "dare_ties-sum": ("dare_ties", "sum", 0.5),
    "regmean-sum": ("regmean", "sum", 0.5),   # weights only weigh the parents' inputs: sum = mean
}
# test candidates per scenario: 75 groups (music, e-commerce), ~75 impressions (news), every video
# row. At 30 groups (600 candidates) music's slice alone moved kept by 0.3 between valid and test.
CAPS = {"music": 1500, "ecommerce": 1500, "news": 1000, "video": 600}
SHIPPED = Path("adapters")  # the repo's shipped adapters, from a checkout's root


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap, quants="nf4")
    ap.add_argument("--adapters", default=str(SHIPPED), help="registry holding the shipped scenario adapters "
                                                             "(default ./adapters)")
    ap.add_argument("--recipes", default=",".join(RECIPES),
                    help=f"comma-separated, of: {', '.join(RECIPES)}; a recipe may set some parents' weights, "
                         "e.g. cat-sum[ecommerce=1.5,video=0.8] (the others keep the recipe's rule)")
    ap.add_argument("--split", default="test", choices=("test", "valid"),
                    help="the split the slices come from: test for the table, valid to choose a default recipe")
    ap.add_argument("--also", default="", help="comma-separated adapters of the same registry to score beside the "
                                               "merges, e.g. a jointly trained one (with its own facts per scenario); "
                                               "NAME for its current version, NAME@vN for another")
    args = ap.parse_args(argv)
    try:
        args.recipes = {name: parse_recipe(name) for name in re.split(r",(?![^\[]*\])", args.recipes) if name}
    except ValueError as e:
        ap.error(str(e))
    quant = quant_list(args.quants, args.device)[0]
    rec = Recorder("merge", args.out, base=args.base, device=args.device, quant=quant)
    try:
        run(rec, args, quant, Budget(args.budget_s))
    finally:
        rec.print_table()


def parse_recipe(name: str) -> tuple[str, str, float, dict[str, float]]:
    """'cat-sum[ecommerce=1.5]' -> ("cat", "sum", density, {"ecommerce": 1.5})."""
    m = re.fullmatch(r"([\w-]+)(?:\[([^\]]*)\])?", name.strip())
    if not m or m.group(1) not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}, optionally with weights "
                         "in brackets: cat-sum[ecommerce=1.5]")
    overrides = {}
    for item in (m.group(2) or "").split(","):
        if item.strip():
            scenario, eq, weight = item.partition("=")
            try:
                overrides[scenario.strip()] = float(weight)
            except ValueError:
                raise ValueError(f"recipe {name!r}: {item!r} is not SCENARIO=WEIGHT") from None
            if not eq or scenario.strip() not in SCENARIOS:
                raise ValueError(f"recipe {name!r}: {item!r} is not SCENARIO=WEIGHT with SCENARIO one of "
                                 f"{', '.join(SCENARIOS)}")
    return (*RECIPES[m.group(1)], overrides)


def skip(rec, why: str, **params) -> None:
    print(f"merge quality: skipped ({why})", file=sys.stderr)
    rec.record("skipped", params, None, unit="", extra={"reason": why})


def run(rec, args, quant, budget):
    if args.base.startswith("random:"):
        return skip(rec, f"base {args.base} is random: merge quality needs the real base the adapters were trained on")
    from ..datasets import default_data_dir
    from ..errors import AdapterHubError
    from ..evaluation import evaluate
    from ..facts import FACTS_FILE
    from ..hub import Hub
    from ..merge import weights_for
    from ..registry import Registry
    from ..scoring import cap_examples, encode_examples, score_examples
    from ..train import card_splits, load_card_data
    shipped = Registry(args.adapters)
    present = [s for s in SCENARIOS if s in shipped.names()]
    if len(present) < 2:
        return skip(rec, f"a merge needs at least two shipped adapters in {args.adapters}/ (found: {present or 'none'})")
    if default_data_dir() is None:
        return skip(rec, "no data folder (../shared/data or $ADAPTERHUB_DATA): merge quality needs the real data")
    missing = [s for s in present if shipped.read_file(s, FACTS_FILE, missing_ok=True) is None]
    if missing:
        return skip(rec, f"{', '.join(missing)}: facts.json not here; rebuild with `adapterhub facts NAME` first")
    scale = 0.5 if args.quick else 1.0
    with tempfile.TemporaryDirectory() as tmp:  # never write into the shipped registry
        refs = []
        also = [a for a in args.also.split(",") if a]
        for ref in present + also:  # the current version (or the one named), under its own name and version
            s, _, version = ref.partition("@")
            version = version or shipped.current(s)
            shutil.copytree(shipped.root / s / version, Path(tmp) / s / version)
            (Path(tmp) / s / "current").write_text(version + "\n")
            refs.append(f"{s}@{version}")
        refs, also = refs[:len(present)], refs[len(present):]
        hub = Hub(base=args.base, registry=Path(tmp), quant=quant, device=args.device)
        merged = {}
        for i, (name, (method, rule, density, overrides)) in enumerate(args.recipes.items()):
            weights = {ref: overrides.get(ref.split("@")[0], w) for ref, w in weights_for(rule, refs).items()}
            merged[name] = hub.merge(weights, method=method, name=f"bench-{i}", density=density, measure=False).key
        budget.parts = len(present)
        for s, ref in zip(present, refs):
            params = {"scenario": s, "split": args.split}
            if budget.over():
                skip(rec, "time budget", **params)
                continue
            t = time.monotonic()
            card = hub.registry.card(ref)
            try:
                data = load_card_data(card)
            except AdapterHubError as e:
                skip(rec, f"no {s} data: {e}", **params)
                continue
            _, valid, test = card_splits(card, data)
            examples = cap_examples(test if args.split == "test" else valid, int(CAPS[s] * scale), 0)
            facts = json.loads(hub.registry.read_file(ref, FACTS_FILE))
            encoded = encode_examples(hub, data, examples, facts)
            metric = card["primary_metric"]
            runs = [(who, key, encoded) for who, key in [("own", hub.load(ref).key), ("base", None), *merged.items()]]
            for other in also:  # e.g. a joint adapter: its own facts for this scenario
                own_facts = hub.registry.read_file(other, f"facts.{s}.json", missing_ok=True)
                enc = encode_examples(hub, data, examples, json.loads(own_facts)) if own_facts else encoded
                runs.append((other, hub.load(other).key, enc))
            value = {}
            for who, key, enc in runs:
                value[who] = evaluate(data.task, examples, score_examples(hub, key, enc))[metric]
                print(f"  {s} {who}: {metric} {value[who]:.4f} ({time.monotonic() - t:.0f} s)", file=sys.stderr, flush=True)
            gain = value["own"] - value["base"]
            for who, v in value.items():
                extra = {"metric_name": metric, "n_examples": len(examples), "task": data.task, "parents": refs,
                         "s": round(time.monotonic() - t, 1)}
                if who not in ("own", "base"):
                    extra["kept"] = (v - value["base"]) / gain if abs(gain) > 1e-9 else None
                if who in args.recipes:
                    method, rule, density, overrides = args.recipes[who]
                    extra.update(method=method, weights=rule, density=density, **({"overrides": overrides}
                                                                                    if overrides else {}))
                rec.record("merge_quality", {**params, "recipe": who, "n": len(examples)}, v, unit=metric, extra=extra)


if __name__ == "__main__":
    sys.exit(main())
