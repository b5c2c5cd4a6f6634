"""train_adapter: a LoRA run in its steps, each in its own module:

    examples  pick examples -> build groups -> negatives -> encode (-> the rules' prior)
    loop      loss -> schedule -> the Loop (steps, checks, early stopping, checkpointing)
    evaluate  valid and test metrics beside the base and the rules -> fused blend -> verdict
    publish   card (lineage) -> promotion against the current version -> registry
    transfer  warm start, domain adaptation (distillation is the loss's teacher term)

A step takes whole groups: one user's history prefix and several candidates (the positive(s) and
negatives). The prefix runs once, with gradient, and every candidate runs after it in the same
packed row (adapterhub.packing), so a step judges many candidates for the price of one prompt.
The loss mixes a listwise softmax over each group's Yes-No logits (what ranking metrics reward)
with pointwise BCE (which keeps P(yes) calibrated), optionally with a teacher's P(yes).
"""
from __future__ import annotations

import logging
import math
import random
import sys

import torch

from .. import memory
from ..config import TrainConfig
from ..errors import ConfigError
from ..lora import TRAIN
from .evaluate import fit_fused, kept_references, to_beat, validate, verdict, worst_kept  # noqa: F401
from .examples import (Encoder, facts_file, NegativeSampler, Part, build_groups, fit_prior, pick_examples,  # noqa: F401
                       prepare, prior_features, train_only, visit)
from .loop import Checkpointing, Loop, cap_points, group_loss, lr_factor, next_groups  # noqa: F401
from .publish import (build_card, card_splits, check_beats_base, lineage, load_card_data,  # noqa: F401
                      peft_adapter_config, publish_version, rebuild_facts)
from .resume import Checkpoints, RunState, run_folder  # noqa: F401
from .transfer import domain_adapt, init_pairs  # noqa: F401

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- train_adapter: the steps in order

def train_adapter(hub, name: str, data, config: TrainConfig | None = None, *, promote: bool | None = None,
                  description: str = "", progress: bool | None = None, publish: bool = True,
                  accelerator=None, force: bool = False, resume: bool = False) -> tuple[object, dict]:
    """Train a LoRA adapter for `data.scenario` on the hub's base; publish it as `name`.

    data: one ScenarioData, or a list of them for one adapter trained jointly on several scenarios
    (batches mixed across them, each scenario's prompts and facts unchanged; validation by the mean
    of their primary metrics; the card has per-scenario metrics under "scenarios").
    -> (the resident Adapter, the card). With publish=False, returns (None, card) and nothing is written.
    A version whose raw adapter scores below the bare base on valid is published only with force=True.
    The run's state is saved after every check in <registry>/.runs/<name>/ (removed once published);
    resume=True continues from there. Ctrl-C stops after the current step and publishes the best
    check (its card says it was interrupted); a second Ctrl-C aborts.
    """
    from ..registry import check_name
    cfg = config or TrainConfig()
    check_name(name)
    progress = sys.stderr.isatty() if progress is None else progress
    is_main = accelerator is None or accelerator.is_main_process
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)

    datas = list(data) if isinstance(data, (list, tuple)) else [data]
    scenarios = [d.scenario for d in datas]
    if not datas or len(set(scenarios)) < len(scenarios):
        raise ConfigError(f"joint training needs distinct scenarios, got {scenarios}")
    if len(datas) > 1 and cfg.domain_steps:
        raise ConfigError("domain_steps is for one scenario; train the joint adapter without it")
    unknown = sorted(set(cfg.scenario_options()) - set(scenarios))
    if unknown:
        raise ConfigError(f"per_scenario names {unknown}, not scenarios of this run ({', '.join(scenarios)})")
    parts = [prepare(hub, d, cfg, rng) for d in datas]
    groups = [(i, g) for i, p in enumerate(parts) for g in p.groups]  # shuffled together: mixed batches
    teachers = [hub.load(p.cfg.teacher).key if p.cfg.teacher else None for p in parts]  # per scenario
    init = init_pairs(hub, cfg.init_from, cfg) if cfg.init_from else {}
    per_step = max(1, round(sum(len(g) for _, g in groups) / len(groups)))  # candidates per group, roughly
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(groups) * per_step / (cfg.batch_size * cfg.grad_accum)))
    eval_every = cfg.eval_every
    if eval_every > total:
        log.info("eval_every=%d > max_steps=%d: validating every %d steps instead", eval_every, total, total)
        eval_every = total
    metric = parts[0].metric if len(parts) == 1 else "mean_primary"
    refs = kept_references(hub, parts, teachers) if cfg.select == "worst_kept" else None
    identity = {"name": name, "base": hub.fingerprint, "data": [d.sha256 for d in datas],
                "config": {k: v for k, v in cfg.to_dict().items() if k != "max_minutes"}}  # the budget may change
    saver = Checkpoints(run_folder(hub.registry.root, name), identity)
    if resume and not saver.exists():
        raise ConfigError(f"--resume: no checkpoint of '{name}' in {saver.folder} (one is saved at every check); "
                          "start without --resume")
    if not resume and saver.exists() and is_main:
        log.warning("%s holds a checkpoint of an earlier run of '%s': it is replaced at this run's first check "
                    "(--resume continues it instead)", saver.folder, name)
    if is_main:
        summary(hub, name, parts, cfg, total, eval_every, metric, progress)

    # hub.use(TRAIN) for the whole loop: a checkpointed backward re-runs the forward, and must see
    # the same routing as the forward did
    memory.release_freed_memory()  # what loading the data and encoding prompts freed (~100 MB on music)
    headroom = None if cfg.rss_headroom_gb is None else int(cfg.rss_headroom_gb * 1e9)
    with hub.trainable(cfg.r, cfg.alpha, cfg.dropout, cfg.targets, init) as pairs, hub.use(TRAIN), \
            Checkpointing(hub, cfg) as ckpt, memory.rss_cap(cap_points(hub), headroom):
        domain_log = (domain_adapt(hub, datas[0], pairs.params, cfg, rng, rank, world)
                      if cfg.domain_steps and not resume else [])
        loop = Loop(hub, parts, groups, pairs.params, cfg, teachers, rng, accelerator, ckpt, refs)
        best, history, speed, state = loop.run(name, total, eval_every, "worst_kept" if refs else metric,
                                               progress and is_main, is_main, saver, resume)
        domain_log = state.domain_log = domain_log or state.domain_log
        with torch.no_grad():  # the best validation check's weights
            for p, b in zip(pairs.params, best[1]):
                p.copy_(b)
        card = None
        if is_main:  # 5. evaluate and 6. card, with the trained pair still resident
            for p, scores in zip(parts, best[3]):
                p.fused = fit_fused(p.data, p.valid, scores, p.facts) if p.facts is not None else None
            card = build_card(hub, name, parts, cfg, description, history, best, speed, world)
            card["train"]["domain_log"] = domain_log
            if state.interrupted:
                card["train"]["interrupted"] = state.interrupted
            if refs is not None:
                card["train"]["kept_reference"] = {p.data.scenario: {"base": round(b, 4), "teacher": round(t, 4)}
                                                   for p, (b, t) in zip(parts, refs)}
        tensors = pairs.tensors()
    if not (publish and is_main):
        return None, card
    published = publish_version(hub, name, parts, cfg, card, tensors, promote, force, metric)  # 7. publish
    saver.remove()   # published: nothing left to resume
    return published


def summary(hub, name: str, parts, cfg: TrainConfig, total: int, eval_every: int, metric: str, progress: bool) -> None:
    """The start-up summary: what the run holds, what it plans, and the valid figures to beat."""
    for p in parts:
        log.info("%s | %s: %d train examples in %d groups, %d valid examples (%s), %d test examples",
                 name, p.data.scenario, len(p.train), len(p.groups), len(p.valid), p.cfg.valid_protocols, len(p.test))
    budget = f"{cfg.max_minutes:g} min of training" if cfg.max_minutes is not None else "no time limit"
    log.info("%s | plan: %d steps of %d candidates, a check every %d steps (patience %d) | budget: %s | "
             "negatives: %s", name, total, cfg.batch_size * cfg.grad_accum, eval_every, cfg.patience, budget,
             cfg.negative_mix)
    for p in parts:
        figures = to_beat(hub, p, progress)
        log.info("%s | to beat on valid %s (%s): %s", name, p.metric, p.data.scenario,
                 ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
