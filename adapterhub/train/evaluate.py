"""Judging a training run: the valid metric of a check, the references of a joint run, the fused
blend fit on valid, each scenario's metrics beside the base and the rules, and the verdict."""
from __future__ import annotations

import logging
import time

from .. import facts as facts_mod
from ..config import TrainConfig
from ..errors import ConfigError
from ..lora import TRAIN
from ..protocols import PROTOCOLS, RANKING_TASKS
from ..scoring import WITHOUT_FACTS
from ..scoring import blend_rows, evaluate_protocol, evaluate_split, score_examples, yes_no_logit
from .examples import Part, facts_file

log = logging.getLogger(__name__)


def to_beat(hub, p: Part, progress: bool = False) -> dict[str, float]:
    """The valid figures a run has to beat, for its start-up summary: the bare base (its scores are
    kept in p.base_valid for the card) and the no-learning rules, on the run's valid examples."""
    from ..baselines import for_scenario
    from ..evaluation import evaluate
    value, p.base_valid = validate(hub, p, key=None, progress=progress)
    out = {"base": value}
    for name, fn in for_scenario(p.data).items():
        if name != "random":
            out[name] = evaluate(p.data.task, p.valid, fn(p.data, p.valid, seed=p.cfg.seed))[p.metric]
    return out


def validate(hub, p: Part, key=TRAIN, progress: bool = False) -> tuple[float, list[float]]:
    """-> (the valid metric, P(yes) per valid example): the scores are kept for the best check, so
    the fused fit and the card reuse them instead of scoring valid again. With a rule prior, the
    metric is of what the loss trained (the adapter's logit + the prior); the scores stay the
    adapter's own."""
    from ..evaluation import evaluate
    scores = score_examples(hub, key, p.enc_valid, progress=progress, desc=f"validating {p.data.scenario}")
    judged = scores
    if p.prior is not None:
        from ..fused import sigmoid
        judged = [sigmoid(yes_no_logit(s) + z) for s, z in zip(scores, p.prior_logits(p.valid, train=False))]
    return evaluate(p.data.task, p.valid, judged)[p.metric], scores


def worst_kept(values: list[float], refs: list[tuple[float, float]]) -> float:
    """The smallest share of its own adapter's gain over the base that any scenario keeps:
    min over scenarios of (value - base) / (teacher - base)."""
    return min((v - b) / (t - b) for v, (b, t) in zip(values, refs))


def kept_references(hub, parts: list[Part], teachers: list) -> list[tuple[float, float]]:
    """select='worst_kept': each scenario's (base, teacher) valid metric, scored once before training."""
    if len(parts) < 2:
        raise ConfigError("select=worst_kept is for a joint run (several scenarios); one scenario's run picks "
                          "its check by its own metric")
    missing = [p.data.scenario for p, t in zip(parts, teachers) if t is None]
    if missing:
        raise ConfigError(f"select=worst_kept measures each scenario against its own adapter: give {', '.join(missing)} "
                          "a teacher in per_scenario (e.g. 'news:teacher=news'), or use select=mean")
    refs = []
    for p, t in zip(parts, teachers):
        base, teacher = (validate(hub, p, key)[0] for key in (None, t))
        if teacher <= base:
            raise ConfigError(f"select=worst_kept: {p.data.scenario}'s teacher does not beat the base on valid "
                              f"({p.metric} {teacher:.4f} vs {base:.4f}), so its kept share means nothing; "
                              "use select=mean")
        log.info("%s valid %s: base %.4f, teacher %.4f (the worst_kept references)", p.data.scenario, p.metric,
                 base, teacher)
        refs.append((base, teacher))
    return refs


def fit_fused(data, valid, probs: list[float], facts) -> dict:
    """The blend of the adapter's Yes-No logit (P(yes) per valid example: the best check's
    scores) with the rules' features, fit on valid."""
    from ..fused import fit
    X = blend_rows(probs, facts, data.scenario, valid)
    return fit(X, [ex.label for ex in valid], names=["llm_logit", *facts_mod.feature_names(data.scenario)])


def verdict(card: dict) -> list[dict]:
    """One row per baseline (and the base): the adapter, raw and fused, against it on the primary
    metric of the test split (valid when there is no test)."""
    metric, metrics = card["primary_metric"], card.get("metrics") or {}
    split = "test" if "test" in metrics else "valid"
    rows = metrics.get(split) or {}
    out = []
    for other, m in rows.items():
        if other.startswith("adapter") or not isinstance(m, dict) or metric not in m:
            continue
        for mine in ("adapter", "adapter (fused)"):
            if mine in rows:
                diff = rows[mine][metric] - m[metric]
                out.append({"split": split, "metric": metric, "model": mine, "vs": other,
                            "model_value": round(rows[mine][metric], 4), "vs_value": round(m[metric], 4),
                            "diff": round(diff, 4), "wins": diff > 0})
    return out


# ---------------------------------------------------------------- 6. card

def card_part(hub, p: Part, cfg: TrainConfig, valid_scores: list[float], joint: bool) -> dict:
    """One scenario's share of the card: data, metrics of the trained pair (still resident as TRAIN)
    beside the base and baselines on valid and test, facts, fused blend, verdict."""
    from ..prompts import registered_templates
    metrics, eval_s = {}, {}
    for split, examples in (("valid", p.valid), ("test", p.test)):
        if len({ex.label for ex in examples}) == 2:  # AUC needs both classes
            t0 = time.perf_counter()
            known = valid_scores if split == "valid" else None  # the best check already scored valid
            metrics[split] = evaluate_split(hub, p.data, examples, TRAIN, seed=cfg.seed, facts=p.facts,
                                            fused_model=p.fused, adapter_scores=known, without_facts=split == "test",
                                            base_scores=p.base_valid if split == "valid" else None)
            eval_s[split] = round(time.perf_counter() - t0, 1)
        elif examples:
            log.warning("%s split of %s has one label only: no metrics for it in the card", split, p.data.scenario)
    protocols = {}
    if p.data.task in RANKING_TASKS and "test" in metrics:   # the test split under the other candidate protocols
        t0 = time.perf_counter()
        for protocol in PROTOCOLS[1:]:
            protocols[protocol] = evaluate_protocol(hub, p.data, p.test, TRAIN, protocol, seed=cfg.seed, facts=p.facts,
                                                    fused_model=p.fused, without_facts=protocol in WITHOUT_FACTS)
        eval_s["test_protocols"] = round(time.perf_counter() - t0, 1)
    d = p.data
    out = {"data": {"source": d.source, "sha256": d.sha256, "sizes": d.sizes(), "task": d.task,
                    "used": {"train": len(p.train), "valid": len(p.valid), "test": len(p.test)},
                    **({"load": d.load_args} if d.load_args else {})},
           "primary_metric": p.metric, "metrics": metrics, "eval_s": eval_s}
    if protocols:   # metrics["test"] is the 'sampled' protocol; docs/DATA.md states each protocol's rule
        out["protocols"] = {"test": protocols}
    if registered_templates(d.scenario):
        out["templates"] = registered_templates(d.scenario)
    if p.facts is not None:
        out["facts"] = {"file": facts_file(d.scenario, joint), "format": p.facts["format"], "items": len(p.facts["items"]),
                        "bytes": len(facts_mod.dumps(p.facts)), "from": "train split"}
        out["fused"] = {**p.fused, "fit_on": "valid", "note": "valid metrics of the fused score are in-sample"}
    if p.prior is not None:
        out["rule_prior"] = p.prior
    out["verdict"] = verdict(out)
    return out
