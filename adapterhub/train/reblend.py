"""Refitting a published version's fused blend on valid groups drawn under several candidate
protocols (adapterhub reblend): the same weights and facts, a new blend, published as a new
version whose card says where it came from.

A blend fit on the loader's negatives only learns what holds there (popularity, mostly), which a
client's whole-catalog or popular candidates turn against it. Here the version's valid examples
are redrawn under each protocol and pooled; four recipes compete on them: the version's own (a
pointwise fit on the sampled groups only), a pointwise refit on all of them, one fit within groups
(fused.fit(groups=...)), and a pointwise refit on the LLM's logit and the rule's match feature only
(no popularity, no is-new: the sampler decides their sign, see SAMPLER_DEPENDENT). Each is judged
cross-fitted (fit on the other folds of valid groups, scored on the held-out fold), by the mean over
protocols of the primary metric, so none is judged on what it was fit on. With several protocols,
each refit is also fit with one protocol held out and scored on it (`protocol_held_out`, reported,
not used to choose): what it does under negatives drawn by a sampler it was not fit on. The version's
stored blend and the rules are in the table for reference (the stored blend saw some of these
groups). The new version is promoted only when another recipe beats the version's own (for a
reblended version, the one its reblend chose; else the first: pointwise, sampled groups). Test is not
touched; `adapterhub eval --update-card` measures it afterwards.
"""
from __future__ import annotations

import logging
import time

from .. import facts as facts_mod
from ..errors import ConfigError, DataError
from ..baselines import popularity
from ..protocols import RANKING_TASKS, check, regroup, with_catalog
from ..scoring import blend_rows, encode_examples, fused_scores, primary_metric, score_examples

log = logging.getLogger(__name__)

FOLDS = 5
OWN = "its own recipe"   # the version's blend refit as it was first fit (pointwise, sampled groups), cross-fitted
POINTWISE_VIEWS = ("auc", "user_auc")   # a pointwise scenario's blend is judged on both AUCs
# Features whose sign the candidate sampler decides: among the loader's negatives the more popular
# candidate tends to be the positive, among popularity-drawn ones the new or rarer one does. A blend
# fit on a mix of samplers trades one against the other, and does worse under a sampler it was not fit
# on (benchmarks/quality/group_context_blend). The LLM's logit and the rule's own feature (brand,
# category or tag overlap with the history; video's like-share + rate) do not flip that way.
SAMPLER_DEPENDENT = ("log1p_popularity", "is_new")
RULE_ONLY = "refit, logit and rule"
RECIPES = (OWN, "refit, pointwise", "refit, within groups", RULE_ONLY)


def reblend(hub, ref: str, data, protocols=("sampled", "catalog", "popular"), promote: bool | None = None,
            progress: bool = False, n_valid: int | None = None) -> tuple[object, dict]:
    """Refit `ref`'s fused blend on its valid examples under `protocols` (pooled) and publish the
    same weights and facts with the winning blend as a new version -> (its Adapter, its card).
    data: what `ref` was trained on (train.load_card_data). promote=None: promoted only if a refit
    blend beats the version's own recipe, both cross-fitted on valid. n_valid: valid examples to redraw
    (whole groups; default the version's own), so two versions can be judged on the same ones."""
    from ..recommend import facts_of
    from .publish import card_splits, lineage
    adapter = hub.load(ref)
    key, card, reg = adapter.key, adapter.card, hub.registry
    if card.get("scenarios"):
        raise ConfigError(f"{key} was trained on several scenarios: reblend a one-scenario version")
    if (card.get("data") or {}).get("sha256") != data.sha256:
        raise DataError(f"{key} was trained on other data (sha256 {card['data']['sha256'][:12]}...): load the "
                        "data it was trained on (the same --data-option values; see adapters/README.md)")
    facts = facts_of(reg, key)
    if facts is None or not card.get("fused"):
        raise ConfigError(f"{key} has no facts here or no fused blend: rebuild its facts first "
                          f"(adapterhub facts {key}), or it was trained without them")
    protocols = [check(p) for p in protocols]
    if "sampled" not in protocols:
        raise ConfigError(f"valid protocols {protocols}: include sampled, the groups {key}'s own blend was fit on "
                          "(its recipe is judged beside the refits)")
    if data.task not in RANKING_TASKS and protocols != ["sampled"]:
        raise ConfigError(f"scenario '{data.scenario}' is {data.task}: its candidates are not groups to redraw; "
                          "give --valid-protocols sampled (the blend is judged on pooled and per-user AUC)")
    t0 = time.perf_counter()
    seed = card["train"]["seed"]
    if n_valid is not None and n_valid < 1:
        raise ConfigError(f"n_valid={n_valid} must be >= 1")
    _, valid, _ = card_splits(card if n_valid is None else {**card, "train": {**card["train"], "n_valid": n_valid}}, data)
    data = with_catalog(data) if protocols != ["sampled"] else data
    counts = popularity(data) if data.task in RANKING_TASKS else None
    views = {p: regroup(data, valid, p, seed, counts) for p in protocols}
    pooled = [ex for p in protocols for ex in views[p]]
    probs = score_examples(hub, key, encode_examples(hub, data, pooled, facts), progress=progress,
                           desc=f"scoring {key} on valid ({', '.join(protocols)})")
    X = blend_rows(probs, facts, data.scenario, pooled)
    names = ["llm_logit", *facts_mod.feature_names(data.scenario)]
    groups = [_group(ex, data.task) for ex in pooled]
    sampled = [flag for p in protocols for flag in [p == "sampled"] * len(views[p])]
    recipes = {recipe: _recipe(recipe, X, names, sampled) for recipe in RECIPES}
    scores = {"its own blend": fused_scores(card["fused"], facts, data.scenario, pooled, probs),
              **{recipe: cross_fitted(x, pooled, groups, n, within, fit_rows=rows)
                 for recipe, (x, n, within, rows) in recipes.items()},
              "raw": probs}
    from ..baselines import for_scenario
    rules = {name: fn(data, pooled, seed=seed) for name, fn in for_scenario(data).items() if name != "random"}
    table = {method: judge(data.task, views, pooled, s) for method, s in {**scores, **rules}.items()}
    # its own recipe is fit on sampled rows only: under catalog and popular it is already held out
    held = ({recipe: judge(data.task, views, pooled, held_out(x, pooled, groups, n, within, views))
             for recipe, (x, n, within, _) in recipes.items() if recipe != OWN} if len(protocols) > 1 else None)
    best = max(RECIPES, key=lambda m: table[m]["mean"])
    # what a refit must beat: the recipe the version's blend came from (a reblended version's chosen one)
    before = (card.get("reblend") or {}).get("chosen")
    own = before if before in RECIPES else OWN
    won = best != own
    from ..fused import fit
    chosen = best if won else "refit, pointwise"
    x, n, within, _ = recipes[chosen]
    fused = fit(x, [ex.label for ex in pooled], names=n, groups=groups if within else None)
    if not won:
        log.info("%s: its own recipe (%s) stays best on cross-fitted valid; the new version gets the pointwise "
                 "refit, not promoted", key, own)
    record = {"from": key, "valid_protocols": protocols, "n_valid": n_valid or card["train"].get("n_valid"),
              "n_valid_examples": len(pooled), "folds": FOLDS,
              "cross_fitted": table, "chosen": chosen, "compared_with": own,
              "promoted_because": "beats its own recipe" if won else None, "s": round(time.perf_counter() - t0, 1),
              **({"protocol_held_out": held} if held else {})}
    metric = primary_metric(data.task)
    new = {k: v for k, v in card.items() if k not in _NOT_INHERITED}
    new["parents"] = [{**lineage(reg, key), "role": "blend refit (same weights and facts)"}]
    new["description"] = f"{card.get('description', '')} | blend refit on valid under {', '.join(protocols)}".strip(" |")
    new["fused"] = {**fused, "fit_on": "valid", "valid_protocols": protocols,
                    "note": "valid metrics of the fused score are cross-fitted (reblend)"}
    new["reblend"] = record
    # metrics.valid: the pooled valid groups (the refit judged cross-fitted); test is measured by eval --update-card
    new["metrics"] = {"valid": {"adapter": _flat(table["raw"], metric),
                                "adapter (fused)": _flat(table[record["chosen"]], metric),
                                "adapter (fused, its own blend)": _flat(table["its own blend"], metric)}}
    config, tensors, _, _ = reg.load(key)
    files = {facts_mod.FACTS_FILE: facts_mod.dumps(facts)}
    promote = (won if promote is None else promote)
    version = reg.publish(card["name"], tensors, config, new, promote=promote, metric=metric, files=files)
    log.info("published %s@%s (%s): %s", card["name"], version, "current" if promote else "not promoted",
             "; ".join(f"{m} {t['mean']:.4f}" for m, t in table.items()))
    return hub.load(f"{card['name']}@{version}"), reg.card(f"{card['name']}@{version}")


_NOT_INHERITED = {"name", "version", "weights_sha256", "files", "created", "adapterhub_version", "promotion",
                  "refreshed", "protocols", "verdict", "metrics", "eval_s", "weights_dtype", "fused", "reblend"}


def _group(ex, task: str) -> str:
    """What a blend is ranked within: the candidate group, or a pointwise scenario's user."""
    return ex.user if task not in RANKING_TASKS else (ex.group or ex.user)


def _recipe(recipe: str, X, names: list[str], sampled: list[bool]) -> tuple:
    """A recipe as (rows, feature names, within groups, which rows it is fit on: None for all)."""
    if recipe == RULE_ONLY:
        keep = [i for i, name in enumerate(names) if name not in SAMPLER_DEPENDENT]
        return [[row[i] for i in keep] for row in X], [names[i] for i in keep], False, None
    return X, names, recipe == "refit, within groups", sampled if recipe == OWN else None


def folds_of(groups: list[str], k: int = FOLDS) -> list[int]:
    """Each row's fold: whole groups, dealt round-robin in order of first appearance (deterministic)."""
    index: dict[str, int] = {}
    for g in groups:
        index.setdefault(g, len(index) % k)
    return [index[g] for g in groups]


def cross_fitted(X, examples, groups: list[str], names, within_groups: bool, k: int = FOLDS,
                 fit_rows: list[bool] | None = None) -> list[float]:
    """Each row's fused P(yes) from a blend fit on the other folds' groups (of those, only the rows
    where fit_rows is true, when given)."""
    from ..fused import apply, fit, sigmoid
    fold = folds_of(groups, k)
    out = [0.0] * len(X)
    for f in range(k):
        fit_rows_f = [i for i, g in enumerate(fold) if g != f and (fit_rows is None or fit_rows[i])]
        rows = [i for i, g in enumerate(fold) if g == f]
        if not rows:
            continue
        model = fit([X[i] for i in fit_rows_f], [examples[i].label for i in fit_rows_f], names=names,
                    groups=[groups[i] for i in fit_rows_f] if within_groups else None)
        for i, z in zip(rows, apply(model, [X[i] for i in rows])):
            out[i] = sigmoid(z)
    return out


def held_out(X, examples, groups: list[str], names, within_groups: bool, views: dict) -> list[float]:
    """Each row's fused P(yes) from a blend fit only on the other protocols' rows (the pooled rows are
    views' examples in order): how a recipe does under negatives drawn by a sampler it never saw (the
    positives, each user's true item, recur under every protocol)."""
    from ..fused import apply, fit, sigmoid
    out, start = [0.0] * len(X), 0
    for examples_p in views.values():
        rows = range(start, start + len(examples_p))
        start += len(examples_p)
        fit_rows_p = [i for i in range(len(X)) if i not in rows]
        model = fit([X[i] for i in fit_rows_p], [examples[i].label for i in fit_rows_p], names=names,
                    groups=[groups[i] for i in fit_rows_p] if within_groups else None)
        for i, z in zip(rows, apply(model, [X[i] for i in rows])):
            out[i] = sigmoid(z)
    return out


def judge(task: str, views: dict, pooled: list, scores: list[float]) -> dict:
    """One method's primary metric under each protocol (a pointwise scenario: pooled and per-user
    AUC) and their mean."""
    from ..evaluation import evaluate
    metric, out, at = primary_metric(task), {}, 0
    for protocol, examples in views.items():
        m = evaluate(task, examples, scores[at:at + len(examples)])
        at += len(examples)
        if task in RANKING_TASKS:
            out[protocol] = round(m[metric], 4)
        else:
            out.update({view: round(m[view], 4) for view in POINTWISE_VIEWS if view in m})
    out["mean"] = round(sum(out.values()) / len(out), 4)
    return out


def _flat(row: dict, metric: str) -> dict:
    """A judged row as a card metrics row: a pointwise scenario's AUCs as they are; a ranking
    scenario's mean over protocols as its primary metric, each protocol's beside it."""
    if metric in row:
        return {k: v for k, v in row.items() if k != "mean"}
    return {metric: row["mean"], **{f"{metric} ({k})": v for k, v in row.items() if k != "mean"}}
