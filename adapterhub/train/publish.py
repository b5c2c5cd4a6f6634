"""Publishing a trained version: the gate against the base, promotion against the current version
(rescored on this run's valid examples), the card with its lineage, and the facts files (rebuilt
from the data a version was trained on, checked against its card)."""
from __future__ import annotations

import logging
import random
import time

from .. import __version__
from .. import facts as facts_mod
from ..config import TrainConfig
from ..errors import AdapterHubError, ConfigError, DataError
from ..files import atomic_write
from ..lora import adapter_config
from ..scoring import encode_examples, score_examples
from .evaluate import card_part, worst_kept
from .examples import Part, facts_file, pick_examples, train_only

log = logging.getLogger(__name__)


def peft_adapter_config(cfg: TrainConfig, base_spec: str) -> dict:
    """The adapter_config.json PEFT, vLLM and LoRAX read."""
    return adapter_config(cfg.r, cfg.alpha, cfg.targets, base_spec, cfg.dropout)


# ---------------------------------------------------------------- 7. publish

def publish_version(hub, name: str, parts: list[Part], cfg: TrainConfig, card: dict, tensors: dict, promote, force: bool,
             metric: str):
    """Publish the trained pair with its card and facts -> (the resident Adapter, the stored card)."""
    check_beats_base(card, name, force)
    if promote is None:  # promote only if valid improves, judged on this run's valid examples
        promote = _compare_with_current(hub, name, parts, card)
    files = {facts_file(p.data.scenario, len(parts) > 1): facts_mod.dumps(p.facts) for p in parts
             if p.facts is not None} or None
    version = hub.registry.publish(name, tensors, peft_adapter_config(cfg, hub.base.spec), card,
                                   promote=promote, metric=metric, files=files)
    return hub.load(f"{name}@{version}"), hub.registry.card(f"{name}@{version}")


def rebuild_facts(registry, ref: str, data) -> str:
    """Recompute a version's facts from the data it was trained on (its train split, as training
    picked it) and write them to its folder, checked against the sha256 in its card -> the path(s).
    data: the ScenarioData, or for a jointly trained version one per scenario, in its card's order.
    The shipped adapters' facts hold dataset text (titles, categories), so they are not committed."""
    import hashlib
    card = registry.card(ref)
    joint = card.get("scenarios") or {}
    datas = list(data) if isinstance(data, (list, tuple)) else [data]
    order = card["scenario"].split("+") if joint else [card.get("scenario")]  # training's order
    parts = [joint[s] for s in order] if joint else [card]
    names = [facts_file(s, True) for s in order] if joint else [facts_mod.FACTS_FILE]
    files = card.get("files") or {}
    if any(n not in files for n in names):
        raise ConfigError(f"{ref} has no facts file to rebuild (trained without facts: its card lists "
                          f"{sorted(files) or 'none'})")
    if len(datas) != len(parts):
        raise ConfigError(f"{ref} was trained on {len(parts)} scenario(s) ({', '.join(order)}); "
                          f"got data for {len(datas)}")
    if joint:  # each scenario's data, whatever order they came in
        by_name = {d.scenario: d for d in datas}
        if set(by_name) != set(order):
            raise ConfigError(f"{ref} was trained on {', '.join(order)}; got data for {', '.join(by_name)}")
        datas = [by_name[s] for s in order]
    bodies = []
    rng = random.Random(card["train"]["seed"])  # one rng through the scenarios, as training used it
    for part, d, name in zip(parts, datas, names):
        if d.sha256 != part["data"]["sha256"]:
            raise DataError(f"{ref} was trained on data with sha256 {part['data']['sha256'][:12]}... ({d.scenario}), "
                            f"this data has {d.sha256[:12]}...: load the data it was trained on (the same folder, "
                            "--seed and --data-option values; see adapters/README.md)")
        train, _, _ = card_splits(card, d, rng)
        fmt = (part.get("facts") or {}).get("format", 1)   # the format it was trained with (1 before it was recorded)
        body = facts_mod.dumps(facts_mod.compute(train_only(d, train), fmt))
        if hashlib.sha256(body).hexdigest() != files[name]:
            raise DataError(f"the facts rebuilt for {ref} ({name}) do not match the sha256 in its card; not written")
        bodies.append((name, body))
    folder = registry.resolve(ref)
    return ", ".join(str(atomic_write(folder / name, body)) for name, body in bodies)


def card_splits(card: dict, data, rng: random.Random | None = None) -> tuple[list, list, list]:
    """(train, valid, test) examples of `data` exactly as the version with this card picked them
    (its n_train, n_valid, n_test and seed): its valid and test metrics were measured on these.
    rng: for the later scenarios of a joint card, the rng the earlier ones went through."""
    import dataclasses
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig.from_dict({k: v for k, v in card["train"].items() if k in names})
    return pick_examples(data, cfg, rng or random.Random(cfg.seed))  # training's first use of its rng


def load_card_data(card: dict, path=None):
    """The scenario data a (single-scenario) version was trained on, loaded with its recorded loader
    arguments (card["data"]["load"]); checked against the card's sha256."""
    from ..datasets import SOURCES, load
    if card.get("scenario") not in SOURCES:
        raise DataError(f"{card.get('name')}@{card.get('version')} was trained on data of your own (scenario "
                        f"{card.get('scenario')!r}, source {(card.get('data') or {}).get('source')!r}), whose folder "
                        "is not recorded: load it yourself (adapterhub.datasets.load('jsonl', PATH))")
    args = dict((card.get("data") or {}).get("load") or {"seed": card["train"]["seed"]})
    data = load(card["scenario"], path, **args)
    if data.sha256 != card["data"]["sha256"]:
        raise DataError(f"{card.get('name')}@{card.get('version')} was trained on data with sha256 "
                        f"{card['data']['sha256'][:12]}..., the data loaded now has {data.sha256[:12]}...: "
                        "point to the data it was trained on")
    return data


def check_beats_base(card: dict, name: str, force: bool) -> None:
    """A version whose raw adapter loses to the bare base on valid is published only with force."""
    valid = (card.get("metrics") or {}).get("valid") or {}
    metric = card["primary_metric"]
    if force or "adapter" not in valid or "base" not in valid:
        return
    ours, base = valid["adapter"][metric], valid["base"][metric]
    if ours < base:
        raise AdapterHubError(f"'{name}' loses to the bare base on valid ({metric} {ours:.4f} < {base:.4f}): not "
                              "published. Train longer or with another --lr, or publish it anyway with --force")


def _compare_with_current(hub, name: str, parts: list[Part], card: dict) -> bool | None:
    """Score the current version of `name` on this run's valid examples (its own facts in its
    prompts; a joint run: each scenario's, by the mean of their primary metrics), record both raw
    figures in card["promotion"], and -> whether the new one is at least as good. None (the
    registry decides) when there is no current version or it cannot run here."""
    from ..evaluation import evaluate
    from ..recommend import facts_of
    reg, metric = hub.registry, card["primary_metric"]
    cur = reg.current(name) if name in reg.names() else None
    if cur is None or "adapter" not in (card.get("metrics") or {}).get("valid", {}):
        return None
    key = f"{name}@{cur}"
    joint = len(parts) > 1
    scenarios = [p.data.scenario for p in parts]
    current_scenarios = set(reg.card(key).get("scenarios") or [])  # empty for a one-scenario adapter
    if current_scenarios != (set(scenarios) if joint else set()):
        log.warning("%s covers other scenarios than this run: promotion compares the cards", key)
        return None
    try:
        _facts_here(reg, key, [p.data for p in parts] if joint else parts[0].data)
        adapter = hub.load(key)
    except AdapterHubError as e:  # e.g. trained over another base: the card-vs-card rule applies
        log.warning("could not score %s on this valid split (%s): promotion compares the cards", key, e)
        return None
    t0 = time.perf_counter()
    values, own_facts = [], []
    for p in parts:
        facts = facts_of(reg, key, p.data.scenario if joint else None)
        own_facts.append(facts is None or p.facts is None or facts_mod.dumps(facts) == facts_mod.dumps(p.facts))
        if not own_facts[-1]:
            # Its facts come from other data (another split or data option), which may count this
            # run's valid users: video@v7's like-rates held the ratings of more_users' valid users,
            # and flattered the like-rate's valid AUC by 0.04. This run's facts see its train split only.
            log.warning("%s: its facts were built from other data than this run's; it is rescored with "
                        "this run's facts (train split only), so no valid label reaches its prompts", key)
            facts = p.facts
        values.append(evaluate(p.data.task, p.valid, score_examples(hub, adapter.key, encode_examples(
            hub, p.data, p.valid, facts)))[p.metric])
    old = sum(values) / len(values)
    new = card["metrics"]["valid"]["adapter"][metric]
    refs = card["train"].get("kept_reference")
    if joint and refs:  # select=worst_kept: both versions judged by the worst scenario's kept share
        metric = "worst_kept"
        refs = [(refs[s]["base"], refs[s]["teacher"]) for s in scenarios]
        old = worst_kept(values, refs)
        new = worst_kept([card["scenarios"][p.data.scenario]["metrics"]["valid"]["adapter"][p.metric] for p in parts],
                         refs)
    card["promotion"] = {"current": key, "split": "valid", "metric": metric, "n": sum(len(p.valid) for p in parts),
                         "current_value": round(old, 4), "new_value": round(new, 4), "promoted": new >= old,
                         "current_facts": "its own" if all(own_facts) else "this run's",
                         "eval_s": round(time.perf_counter() - t0, 1)}
    log.info("valid %s: new %.4f vs current %s %.4f on the same %d examples -> %s", metric, new, key, old,
             card["promotion"]["n"], "promoted" if new >= old else "not promoted")
    return new >= old


def _facts_here(reg, key: str, data) -> None:
    """Make sure the current version's facts files are in its folder before it is rescored: facts
    are data, not committed, and scored without them it would lose for the wrong reason (joint4@v2
    scored 0.52 instead of 0.62 that way). Rebuilt from this run's data, checked against its card's
    sha256; a DataError or ConfigError when that data is not what it was trained on."""
    files = [n for n in reg.card(key).get("files") or {} if n.startswith("facts")]
    missing = [n for n in files if reg.read_file(key, n, missing_ok=True) is None]
    if missing:
        log.info("%s: %s not here; rebuilding from this run's data to rescore it", key, ", ".join(missing))
        rebuild_facts(reg, key, data)


def lineage(registry, ref: str, depth: int = 8) -> dict:
    """{"ref": "name@vN", "parents": [...]}: a version and, recursively, the parents its card names
    (a merge's parents, a warm start's parent), so a card shows where its weights came from."""
    name, version = ref.split("@", 1) if "@" in ref else (ref, registry.current(ref))
    key = f"{name}@{version}"
    out = {"ref": key}
    try:
        card = registry.card(key)
    except AdapterHubError:
        return out
    if card.get("scenario"):
        out["scenario"] = card["scenario"]
    up = []
    for parent in card.get("parents") or []:
        if depth > 0 and parent.get("ref"):
            up.append({**lineage(registry, parent["ref"], depth - 1),
                       **{k: v for k, v in parent.items() if k not in ("ref", "parents", "scenario")}})
    if up:
        out["parents"] = up
    return out


def build_card(hub, name, parts: list[Part], cfg, description, history, best, speed, world=1) -> dict:
    """Evaluate the trained pair on every scenario of the run; build the card. A joint card keeps
    each scenario's share under "scenarios" and the mean primary metric of adapter and base on top."""
    joint = len(parts) > 1
    evals = {p.data.scenario: card_part(hub, p, cfg, scores, joint) for p, scores in zip(parts, best[3])}
    parents = []
    if cfg.init_from:
        parents.append({**lineage(hub.registry, cfg.init_from), "role": "warm start"})
    teachers: dict[str, list[str]] = {}  # teacher -> the scenarios it teaches (a joint run may distil per scenario)
    for p in parts:
        if p.cfg.teacher:
            teachers.setdefault(p.cfg.teacher, []).append(p.data.scenario)
    for ref, taught in teachers.items():
        parents.append({**lineage(hub.registry, ref), "role": "teacher", "distill_weight": cfg.distill_weight,
                        **({"teaches": taught} if joint else {})})
    loss = {"bce": round(1 - cfg.listwise_weight, 4), "listwise_softmax": cfg.listwise_weight,
            "group_size": cfg.group_size, "sampled_negatives": cfg.negatives, "rule_prior": cfg.rule_prior}
    if cfg.per_scenario:  # a joint run's scenarios with their own loss options
        loss["per_scenario"] = cfg.scenario_options()
    scenario = "+".join(evals)
    sources = ", ".join(p.data.source for p in parts)
    card = {
        "scenario": scenario,
        "description": description or f"{scenario} recommendation adapter ({sources})",
        "base": {"spec": hub.base.spec, "fingerprint": hub.fingerprint, "quant": hub.base.quant,
                 "compute": hub.base.compute},
        "lora": {"r": cfg.r, "alpha": cfg.alpha, "targets": sorted(cfg.targets), "dropout": cfg.dropout},
        "train": {**cfg.to_dict(), "world_size": world, "best_step": best[2], **speed, "loss": loss,
                  "lr_schedule": "warm-up, then linear decay to 0 at max_steps or max_minutes, whichever is nearer",
                  "log": history},
        "parents": parents,
        "adapterhub_version": __version__,
    }
    if not joint:
        card.update(next(iter(evals.values())))
        return card
    card["scenarios"] = evals
    card["primary_metric"] = "mean_primary"
    card["metrics"] = {}
    for split in ("valid", "test"):
        rows = [e["metrics"].get(split, {}) for e in evals.values()]
        means = {who: {"mean_primary": sum(r[who][e["primary_metric"]] for r, e in zip(rows, evals.values())) / len(rows)}
                 for who in ("adapter", "adapter (fused)", "base") if all(who in r for r in rows)}
        if means:
            card["metrics"][split] = means
    card["verdict"] = [{**v, "scenario": sc} for sc, e in evals.items() for v in e["verdict"]]
    return card
