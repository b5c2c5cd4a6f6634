"""Compare ways of fitting the fused score on one published version, without retraining it.

    python benchmarks/quality/fused_compare.py news@v3 video@v3 [--cache /tmp/fused_compare_scores]

For each version: rebuild its valid and test examples exactly as training picked them (the card's
data load arguments and n_valid/n_test/seed), score both with the version's weights over the hub's
default base (cached per example in CACHE/<name>@<v>.jsonl, so a rerun or an interrupted run goes
on where it stopped), then fit each blend on valid and report test metrics with the bootstrap 95%
interval, beside the rules. Test only reports: nothing here is chosen on it.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from adapterhub import facts as facts_mod
from adapterhub.baselines import for_scenario
from adapterhub.evaluation import evaluate
from adapterhub.fused import apply, bootstrap_ci, fit
from adapterhub.hub import Hub
from adapterhub.registry import Registry
from adapterhub.scoring import blend_rows, encode_examples, primary_metric, score_examples
from adapterhub.train import card_splits, load_card_data


def cached_scores(hub_of, ref: str, data, facts, split: str, examples, cache: Path) -> list[float]:
    """The version's P(yes) per example, from CACHE when there, scored (in chunks, appended) when not."""
    done = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            row = json.loads(line)
            if row["split"] == split:
                done[row["i"]] = row["p"]
    todo = [i for i in range(len(examples)) if i not in done]
    hub = hub_of() if todo else None  # the base loads only when something is left to score
    key = hub.load(ref).key if todo else None
    for start in range(0, len(todo), 200):
        chunk = todo[start:start + 200]
        probs = score_examples(hub, key, encode_examples(hub, data, [examples[i] for i in chunk], facts))
        with cache.open("a") as f:
            for i, p in zip(chunk, probs):
                f.write(json.dumps({"split": split, "i": i, "p": p}) + "\n")
                done[i] = p
        print(f"  {ref} {split}: {len(done)}/{len(examples)} scored", file=sys.stderr, flush=True)
    return [done[i] for i in range(len(examples))]


FITS = {"pointwise LR": False, "listwise (by group)": True}


def blend_scores(data, facts, fit_ex, fit_p, score_ex, score_p, grouped: bool) -> list[float]:
    """Fit the blend on (fit_ex, fit_p) -> its logits on (score_ex, score_p)."""
    names = list(facts_mod.feature_names(data.scenario))
    groups = [e.group for e in fit_ex] if grouped else None
    model = fit(blend_rows(fit_p, facts, data.scenario, fit_ex, names), [e.label for e in fit_ex],
                ["llm_logit", *names], groups=groups)
    return apply(model, blend_rows(score_p, facts, data.scenario, score_ex, names))


def valid_cv(data, facts, valid, p_valid, grouped: bool, folds: int = 5) -> float:
    """Mean primary metric over folds of valid (whole groups): what chooses a fit without test."""
    keys = sorted({e.group or f"#{i}" for i, e in enumerate(valid)})
    random.Random(0).shuffle(keys)
    fold_of = {k: i % folds for i, k in enumerate(keys)}
    fold = [fold_of[e.group or f"#{i}"] for i, e in enumerate(valid)]
    metric, values = primary_metric(data.task), []
    for f in range(folds):
        tr = [i for i in range(len(valid)) if fold[i] != f]
        te = [i for i in range(len(valid)) if fold[i] == f]
        s = blend_scores(data, facts, [valid[i] for i in tr], [p_valid[i] for i in tr],
                         [valid[i] for i in te], [p_valid[i] for i in te], grouped)
        values.append(evaluate(data.task, [valid[i] for i in te], s)[metric])
    return sum(values) / folds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("refs", nargs="+", help="published versions, name@vN")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/fused_compare_scores"))
    args = ap.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    hubs = []
    hub_of = lambda: hubs[0] if hubs else hubs.append(Hub()) or hubs[0]  # noqa: E731
    registry = Registry()
    for ref in args.refs:
        card = registry.card(ref)
        data = load_card_data(card)
        _, valid, test = card_splits(card, data)
        facts = json.loads(registry.read_file(ref, facts_mod.FACTS_FILE))
        cache = args.cache / f"{ref}.jsonl"
        p_valid = cached_scores(hub_of, ref, data, facts, "valid", valid, cache)
        p_test = cached_scores(hub_of, ref, data, facts, "test", test, cache)
        metric = primary_metric(data.task)
        grouped_ok = any(e.group for e in valid)
        fits = {name: g for name, g in FITS.items() if grouped_ok or not g}
        rows = {"adapter (raw)": (None, p_test)}
        for name, grouped in fits.items():
            rows[name] = (valid_cv(data, facts, valid, p_valid, grouped),
                          blend_scores(data, facts, valid, p_valid, test, p_test, grouped))
        rows.update({name: (None, fn(data, test, seed=0)) for name, fn in for_scenario(data).items()})
        print(f"\n{ref}: {metric}; test {len(test)} examples ({len({e.group for e in test if e.group})} groups); "
              f"blends fit on {len(valid)} valid examples (valid cv: 5 folds of valid, what chooses)")
        print(f"  {'':<24} {'valid cv':>8}  test [95% interval]")
        for name, (cv, s) in rows.items():
            value = evaluate(data.task, test, s)[metric]
            lo, hi = bootstrap_ci(lambda ex, sc: evaluate(data.task, ex, sc)[metric], test, s, n=300)
            cv_text = f"{cv:.4f}" if cv is not None else ""
            print(f"  {name:<24} {cv_text:>8}  {value:.4f} [{lo:.3f}, {hi:.3f}]", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
