"""Scoring examples: tokenize them (encode_examples), cap a split (cap_examples), score them with
shared prefixes (score_examples), and score a whole split with an adapter, the bare base and the
baselines on the same examples (evaluate_split). Metrics from scores are adapterhub.evaluation's."""
from __future__ import annotations

import math
import random
from dataclasses import replace

import torch

from tqdm.auto import tqdm

from . import prompts
from .datasets.common import cap_groups
from .errors import DataError


def cap_examples(examples: list, n: int | None, seed: int) -> list:
    """At most n examples, whole ranking groups only, as a seeded sample (order kept)."""
    return cap_groups(examples, n, random.Random(seed))


def encode_examples(hub, data, examples, facts: dict | None = None) -> list[tuple[list[int], list[int]]]:
    """-> [(prefix ids, suffix ids)]; prompt ids = prefix + suffix (the hub's ranking path splits there).
    facts: the adapter's scenario facts (adapterhub.facts), rendered in the prompts."""
    cache: dict[str, list[int]] = {}
    out = []
    for ex in examples:
        prefix, suffix = prompts.render(data.scenario, ex, data.items, facts=facts)
        if prefix not in cache:
            cache[prefix] = hub.encode(prefix)
        out.append((cache[prefix], hub.encode(suffix, special=False)))
    return out


def score_examples(hub, key: str | None, encoded, batch_size: int | None = None, progress: bool = False,
                   desc: str = "scoring") -> list[float]:
    """P(yes) per example under adapter `key` (None = the base, or lora.TRAIN while training).

    Examples sharing a history prefix (one user's candidates) run it once (Hub.packed_logits);
    packed rows of similar length go through the model together, up to a token budget.
    """
    bs = batch_size or hub.batch_size
    by_prefix: dict[tuple, list[int]] = {}
    for i, (prefix, _) in enumerate(encoded):
        by_prefix.setdefault(tuple(prefix), []).append(i)
    rows = [idx[j:j + bs] for idx in by_prefix.values() for j in range(0, len(idx), bs)]
    rows.sort(key=lambda r: len(encoded[r[0]][0]) + sum(len(encoded[i][1]) for i in r))
    batches, cur, tokens = [], [], 0
    for r in rows:  # ~ bs full prompts' worth of tokens per forward
        cur.append(r)
        tokens += len(encoded[r[0]][0]) + sum(len(encoded[i][1]) for i in r)
        if tokens >= bs * 256:
            batches.append(cur)
            cur, tokens = [], 0
    batches += [cur] if cur else []
    out = [0.0] * len(encoded)
    was = [m.training for m in hub.wrapped.values()]
    for m in hub.wrapped.values():
        m.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
                groups = [(encoded[r[0]][0], [encoded[i][1] for i in r]) for r in batch]
                probs = torch.sigmoid(hub.packed_logits(key, groups)).tolist()
                for i, p in zip((i for r in batch for i in r), probs):
                    out[i] = p
    finally:
        for m, w in zip(hub.wrapped.values(), was):
            m.train(w)
    return out


def evaluate_split(hub, data, examples, adapter_key: str | None, *, with_base: bool = True,
                   with_baselines: bool = True, seed: int = 0, progress: bool = False, encoded=None,
                   facts: dict | None = None, fused_model: dict | None = None, ci: bool = True,
                   adapter_scores: list[float] | None = None, without_facts: bool = False,
                   base_scores: list[float] | None = None) -> dict:
    """-> {method: metrics} for 'adapter', 'adapter (fused)' (with fused_model), 'base' and each
    baseline, all on the same examples; with ci, each row's primary metric gets a bootstrap 95%
    interval ("<metric>_ci95") over whole groups. Prompts carry `facts` when given (the base then
    sees the same facts-bearing prompts as the adapter). adapter_scores: the adapter's P(yes) on
    these examples when already computed (training's best validation check); base_scores likewise
    for the base (training's start-up summary). without_facts: also
    'adapter (no facts)' (and its fused score): the adapter scored on prompts without facts."""
    from .baselines import for_scenario
    if not examples:
        raise DataError(f"no examples to evaluate for scenario '{data.scenario}'")
    if adapter_scores is not None and len(adapter_scores) != len(examples):
        raise ValueError(f"adapter_scores has {len(adapter_scores)} scores for {len(examples)} examples")
    encoded = encoded or encode_examples(hub, data, examples, facts)
    scores: dict[str, list[float]] = {}
    if adapter_key is not None:
        scores["adapter"] = (list(adapter_scores) if adapter_scores is not None
                             else score_examples(hub, adapter_key, encoded, progress=progress, desc="adapter"))
        if fused_model is not None:
            scores["adapter (fused)"] = fused_scores(fused_model, facts, data.scenario, examples, scores["adapter"])
    if with_base:
        scores["base"] = (list(base_scores) if base_scores is not None
                          else score_examples(hub, None, encoded, progress=progress, desc="base"))
    if with_baselines:
        for name, fn in for_scenario(data).items():
            scores[name] = fn(data, examples, seed=seed)
    if without_facts and adapter_key is not None and facts is not None:
        # what the adapter gives when no catalog is at hand: prompts without facts; the fused blend
        # then sees every rule feature at its neutral value
        bare = score_examples(hub, adapter_key, encode_examples(hub, data, examples, None), progress=progress,
                              desc="adapter, no facts")
        scores["adapter (no facts)"] = bare
        if fused_model is not None:
            scores["adapter (fused, no facts)"] = fused_scores(fused_model, None, data.scenario, examples, bare)
    return metrics_with_ci(data.task, examples, scores, seed, ci)


def metrics_with_ci(task: str, examples, scores: dict[str, list[float]], seed: int = 0, ci: bool = True) -> dict:
    """{method: metrics} of each method's scores; with ci, the primary metric (and a pointwise
    split's per-user AUC) get a bootstrap 95% interval ("<metric>_ci95") over whole groups (users)."""
    from .evaluation import evaluate
    rows = {name: evaluate(task, examples, s) for name, s in scores.items()}
    if ci:
        from .fused import bootstrap_ci
        metric = primary_metric(task)
        by_user = [replace(ex, group=ex.user) for ex in examples]   # user_auc resamples users
        for name, s in scores.items():
            lo, hi = bootstrap_ci(lambda ex, sc: _one_metric(task, metric, ex, sc), examples, s, n=300, seed=seed)
            rows[name][f"{metric}_ci95"] = [round(lo, 4), round(hi, 4)]
            if "user_auc" in rows[name]:
                lo, hi = bootstrap_ci(lambda ex, sc: _one_metric(task, "user_auc", ex, sc), by_user, s, n=300, seed=seed)
                rows[name]["user_auc_ci95"] = [round(lo, 4), round(hi, 4)]
    return rows


def _one_metric(task: str, metric: str, examples, scores) -> float:
    """evaluate(task, examples, scores)[metric] of one resample, computing only that metric where the
    task is pointwise (the bootstrap asks 300 times per method: the others were most of a toy
    training's time). Undefined (DataError: the resample is skipped) where evaluate would raise, or,
    for user_auc, where no drawn user has both labels. user_auc averages over the resample's groups,
    the users renamed per draw: a user drawn twice counts twice, as bootstrap_ci resamples them
    (evaluate's own per-user AUC, over `user`, would merge the two draws into one)."""
    from .evaluation import evaluate
    from .metrics import auc, group_auc
    if task != "pointwise" or metric not in ("auc", "user_auc"):
        out = evaluate(task, examples, scores)
        if metric not in out:
            raise DataError(f"{metric} is undefined on this resample")
        return out[metric]
    labels, scores = [ex.label for ex in examples], [float(s) for s in scores]
    if metric == "auc":
        return auc(labels, scores)
    # one class in the whole resample: no drawn user has both labels either (DataError, skipped)
    return group_auc(labels, scores, [ex.group or ex.user for ex in examples])


def evaluate_protocol(hub, data, examples, adapter_key: str | None, protocol: str, **kwargs) -> dict | None:
    """evaluate_split on `examples` with their negatives redrawn under a candidate protocol
    (adapterhub.protocols), items drawn from the source's whole catalog -> {method: metrics}, or
    None when the protocol keeps no group ('new' on a split whose positives all have train
    interactions). The rows' "n_groups" say how many groups it kept."""
    from .protocols import regroup, with_catalog
    redrawn = regroup(data, examples, protocol, kwargs.get("seed", 0))
    if not redrawn:
        return None
    return evaluate_split(hub, with_catalog(data), redrawn, adapter_key, **kwargs)


def fused_scores(model: dict, facts: dict, scenario: str, examples, probs) -> list[float]:
    """The fused score: the blend (adapterhub.fused) of the adapter's Yes-No logit and the rules' features."""
    from .fused import apply, sigmoid
    names = model["features"][1:]  # the features it was fit with (the first is the LLM's logit)
    return [sigmoid(z) for z in apply(model, blend_rows(probs, facts, scenario, examples, names))]


def blend_rows(probs, facts: dict, scenario: str, examples, names=None) -> list[list[float]]:
    """The fused blend's input per example: the adapter's Yes-No logit, then the rules' features."""
    from . import facts as facts_mod
    return [[yes_no_logit(p)] + f for p, f in zip(probs, facts_mod.feature_matrix(facts, scenario, examples, names))]


def yes_no_logit(p: float) -> float:
    """P(yes) back to the Yes-No logit it came from (clamped away from 0 and 1)."""
    p = min(max(p, 1e-7), 1 - 1e-7)
    return math.log(p / (1 - p))


def primary_metric(task: str) -> str:
    return {"pointwise": "auc", "ranking": "ndcg@10", "impression": "auc"}.get(task, "auc")


# the protocols under which a card also scores the adapter on prompts without facts: what a user gets
# with no catalog at hand, on the loader's candidates and on a whole catalog's
WITHOUT_FACTS = ("sampled", "catalog")


def evaluate_version(hub, ref: str, data, split: str = "test", protocols=("sampled",), n: int | None = None,
                     seed: int = 0, progress: bool = False, without_facts=WITHOUT_FACTS, catalog=None) -> dict:
    """Score a published version as a client calls it: its own facts (or `catalog`'s) in the prompts
    and its fused blend, on the examples its card was measured on (when `data` is the data it was
    trained on; else a seeded sample of n), under each candidate protocol.
    -> {"ref", "split", "n_examples", "protocols": {protocol: {method: metrics} or None}}."""
    from .recommend import catalog_facts, facts_of
    from .train import card_splits
    adapter = hub.load(ref)
    card = adapter.card
    if card.get("scenarios"):
        raise DataError(f"{adapter.key} was trained on several scenarios: evaluate each scenario's own version")
    facts = facts_of(hub.registry, adapter.key) if catalog is None else catalog_facts(catalog)
    if (card.get("data") or {}).get("sha256") == data.sha256:
        examples = dict(zip(("train", "valid", "test"), card_splits(card, data)))[split]
        if not examples:   # trained with n_test=0: the examples a default run would have measured
            from .config import TrainConfig
            examples = cap_examples(data.splits[split], getattr(TrainConfig(), f"n_{split}", None),
                                    card["train"]["seed"])
        examples = cap_examples(examples, n, seed) if n is not None else examples
    else:
        examples = cap_examples(data.splits[split], n or 512, seed)
    out = {}
    for protocol in protocols:
        out[protocol] = evaluate_protocol(hub, data, examples, adapter.key, protocol, seed=seed, progress=progress,
                                          facts=facts, fused_model=card.get("fused") if facts is not None else None,
                                          without_facts=protocol in without_facts)
    return {"ref": adapter.key, "split": split, "n_examples": len(examples), "protocols": out}
