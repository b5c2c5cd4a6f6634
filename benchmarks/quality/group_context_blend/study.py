"""Would the fused blend hold under every candidate protocol if it saw what the candidate group looks
like? A study on valid only (README.md here): ecommerce@v4's valid examples redrawn under sampled,
catalog and popular, as `adapterhub reblend` does, scored once; then the blend cross-fitted over 5
folds of groups with its features alone and with group-context features added (the group's mean of
each fact feature, and the adapter's logit and each feature times the group's mean popularity), so
that one blend can weigh the rules differently when every candidate is popular.

    flock /tmp/adapterhub-heavy.lock python benchmarks/quality/group_context_blend/study.py   # ~7 min
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def group_context(X: list[list[float]], names: list[str], groups: list[str]) -> tuple[list[list[float]], list[str]]:
    """Each row's features, then its group's mean of each fact feature, then the logit and each fact
    feature times the group's mean popularity (the candidates' own statistics only: no label)."""
    sums, counts = defaultdict(lambda: [0.0] * len(names)), defaultdict(int)
    for x, g in zip(X, groups):
        counts[g] += 1
        sums[g] = [s + v for s, v in zip(sums[g], x)]
    pop = names.index("log1p_popularity")
    out = []
    for x, g in zip(X, groups):
        mean = [s / counts[g] for s in sums[g]]
        out.append(x + mean[1:] + [v * mean[pop] for v in x])
    extra = [f"group_mean_{n}" for n in names[1:]] + [f"{n}_x_group_popularity" for n in names]
    return out, names + extra


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="ecommerce@v4")
    ap.add_argument("--registry", default="adapters")
    ap.add_argument("--cache", default="/tmp/group_context_scores.json", help="valid scores kept between runs")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args(argv)
    from adapterhub import facts as facts_mod
    from adapterhub.baselines import for_scenario, popularity
    from adapterhub.hub import Hub
    from adapterhub.protocols import regroup, with_catalog
    from adapterhub.recommend import facts_of
    from adapterhub.scoring import blend_rows, encode_examples, score_examples
    from adapterhub.train import card_splits, load_card_data
    from adapterhub.fused import apply, fit, sigmoid
    from adapterhub.train.reblend import _group, cross_fitted, judge
    hub = Hub(registry=args.registry)
    key = hub.load(args.ref).key
    card = hub.registry.card(key)
    data = load_card_data(card, None)
    seed = card["train"]["seed"]
    _, valid, _ = card_splits(card, data)
    data = with_catalog(data)
    counts = popularity(data)
    protocols = ("sampled", "catalog", "popular")
    views = {p: regroup(data, valid, p, seed, counts) for p in protocols}
    pooled = [ex for p in protocols for ex in views[p]]
    facts = facts_of(hub.registry, key)
    cache = Path(args.cache)
    if cache.exists() and json.loads(cache.read_text())["key"] == key:
        probs = json.loads(cache.read_text())["probs"]
    else:
        probs = score_examples(hub, key, encode_examples(hub, data, pooled, facts), progress=True, desc="valid")
        cache.write_text(json.dumps({"key": key, "probs": probs}))
    X = blend_rows(probs, facts, data.scenario, pooled)
    names = ["llm_logit", *facts_mod.feature_names(data.scenario)]
    groups = [_group(ex, data.task) for ex in pooled]
    Xc, names_c = group_context(X, names, groups)
    scores = {"features alone, pointwise": cross_fitted(X, pooled, groups, names, within_groups=False),
              "features alone, within groups": cross_fitted(X, pooled, groups, names, within_groups=True),
              "with group context, pointwise": cross_fitted(Xc, pooled, groups, names_c, within_groups=False),
              "with group context, within groups": cross_fitted(Xc, pooled, groups, names_c, within_groups=True),
              "raw": probs}
    # a protocol the blend never saw: fit on the other protocols' groups, scored on this one's. A blend
    # that gains only when the protocol was in its fit has learnt how the negatives were drawn
    held_out = {}
    for label, rows_x, feature_names in (("features alone", X, names), ("with group context", Xc, names_c)):
        for within in (False, True):
            out = [0.0] * len(pooled)
            for p in protocols:
                start = sum(len(views[q]) for q in protocols[:protocols.index(p)])
                rows = range(start, start + len(views[p]))
                fit_rows = [i for i in range(len(pooled)) if i not in rows]
                model = fit([rows_x[i] for i in fit_rows], [pooled[i].label for i in fit_rows], names=feature_names,
                            groups=[groups[i] for i in fit_rows] if within else None)
                for i, z in zip(rows, apply(model, [rows_x[i] for i in rows])):
                    out[i] = sigmoid(z)
            held_out[f"{label}, {'within groups' if within else 'pointwise'}"] = judge(data.task, views, pooled, out)
    full = {label: fit(rows_x, [ex.label for ex in pooled], names=feature_names)
            for label, rows_x, feature_names in (("features alone", X, names), ("with group context", Xc, names_c))}
    rules = {name: fn(data, pooled, seed=seed) for name, fn in for_scenario(data).items() if name != "random"}
    table = {m: judge(data.task, views, pooled, s) for m, s in {**scores, **rules}.items()}
    result = {"ref": key, "n_valid_examples": len(pooled), "groups_per_protocol": {p: len({ex.group for ex in v})
              for p, v in views.items()}, "features": names_c, "cross_fitted": table,
              "protocol_held_out": held_out,
              "pointwise_fit_on_all": {k: dict(zip(m["features"], [round(w, 3) for w in m["weights"]]))
                                       for k, m in full.items()}}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for title, rows in (("cross-fitted over folds of groups", table), ("each protocol held out of the fit", held_out)):
        print(title)
        for m, row in rows.items():
            print(f"  {m:<36} " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()))
    for k, weights in result["pointwise_fit_on_all"].items():
        print(f"weights, {k}: " + ", ".join(f"{n} {w:+.3f}" for n, w in weights.items()))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
