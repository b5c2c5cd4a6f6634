"""train_adapter: a LoRA loop you can read top to bottom, in its steps:

    pick examples -> build groups -> loss -> loop -> evaluate -> card -> publish

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
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import __version__
from . import facts as facts_mod
from . import memory
from .config import TrainConfig
from .datasets.common import Example
from .errors import AdapterHubError, ConfigError, DataError, IncompatibleAdapterError
from .files import atomic_write
from .lora import TRAIN, adapter_config, check_same_base, group_pairs, scale_of
from .scoring import (blend_rows, cap_examples, encode_examples, evaluate_split, primary_metric, score_examples,
                      yes_no_logit)

log = logging.getLogger(__name__)
LOG_EVERY_S = 30.0  # without a progress bar, a log line at least this often


def peft_adapter_config(cfg: TrainConfig, base_spec: str) -> dict:
    """The adapter_config.json PEFT, vLLM and LoRAX read."""
    return adapter_config(cfg.r, cfg.alpha, cfg.targets, base_spec, cfg.dropout)


# ---------------------------------------------------------------- 1. pick examples

def pick_examples(data, cfg: TrainConfig, rng: random.Random) -> tuple[list, list, list]:
    """-> (train, valid, test) examples: train optionally sampled, valid/test capped by whole groups."""
    train = list(data.splits.get("train", []))
    if cfg.n_train is not None:
        train = rng.sample(train, min(cfg.n_train, len(train)))
    valid = cap_examples(data.splits.get("valid", []), cfg.n_valid, cfg.seed)
    test = cap_examples(data.splits.get("test", []), cfg.n_test, cfg.seed)
    if not train or not valid:
        raise DataError(f"scenario '{data.scenario}' needs non-empty train and valid splits (sizes: {data.sizes()})")
    for what, examples in (("train", train), ("valid", valid)):
        labels = {ex.label for ex in examples}
        if labels != {0, 1}:
            raise DataError(f"the {what} split has only label(s) {sorted(labels)}: training needs both positives and negatives")
    return train, valid, test


# ---------------------------------------------------------------- 2. build groups

def build_groups(train: list[Example]) -> list[list[Example]]:
    """Examples sharing a ranking group (or, for pointwise data, one history prefix) form a group."""
    groups: dict[object, list[Example]] = {}
    for ex in train:
        groups.setdefault(ex.group or (ex.user, ex.history, ex.disliked), []).append(ex)
    return list(groups.values())


class NegativeSampler:
    """Negatives for rows that share no prefix: train items the user never interacted with."""

    def __init__(self, train: list[Example]):
        seen: dict[str, set] = {}
        for ex in train:
            seen.setdefault(ex.user, set()).update(ex.history, ex.disliked, (ex.candidate,))
        self.seen = seen
        self.pool = sorted(set().union(*seen.values())) if seen else []

    def sample(self, ex: Example, k: int, rng: random.Random) -> list[Example]:
        seen = self.seen.get(ex.user, set())
        out: list[Example] = []
        for _ in range(20 * k):  # rejection sampling; the pool is much larger than a user's items
            if len(out) == k:
                break
            item = self.pool[rng.randrange(len(self.pool))]
            if item not in seen and all(o.candidate != item for o in out):
                out.append(Example(ex.user, ex.history, item, 0, ex.disliked, ex.group))
        return out


def visit(group: list[Example], cfg: TrainConfig, sampler: NegativeSampler, rng: random.Random) -> list[Example]:
    """The candidates one step sees of a group: at most group_size, a positive first when there is
    one. A group with a positive but fewer than group_size candidates (a pointwise row, a train
    pair) is topped up with sampled negatives: at most `negatives` per positive."""
    pos = [ex for ex in group if ex.label]
    if len(group) > cfg.group_size:
        first = [rng.choice(pos)] if pos else []
        rest = [ex for ex in group if not (first and ex is first[0])]
        return first + rng.sample(rest, cfg.group_size - len(first))
    room = min(cfg.group_size - len(group), cfg.negatives * len(pos))
    return list(group) + (sampler.sample(pos[0], room, rng) if room > 0 else [])


class Encoder:
    """Token ids of train prefixes and candidate suffixes, each text encoded once. own_out
    (facts.OwnLabelOut): show each candidate without its example's own label in the facts."""

    def __init__(self, hub, data, facts: dict | None, own_out: facts_mod.OwnLabelOut | None = None):
        self.hub, self.data, self.facts, self.own_out, self.cache = hub, data, facts, own_out, {}

    def __call__(self, group: list[Example]) -> tuple[list[int], list[list[int]]]:
        from . import prompts
        suffixes = []
        for ex in group:
            shown = self.own_out.candidate(ex) if self.own_out is not None else None
            prefix, suffix = prompts.render(self.data.scenario, ex, self.data.items, facts=self.facts,
                                            candidate_facts=shown)
            suffixes.append(self._ids(suffix, special=False))
        return self._ids(prefix, special=True), suffixes

    def _ids(self, text: str, special: bool) -> list[int]:
        if text not in self.cache:
            self.cache[text] = self.hub.encode(text, special=special)
        return self.cache[text]


@dataclass
class Part:
    """One scenario of a training run (a joint run has several): its examples, facts and encoders."""
    data: object
    train: list
    valid: list
    test: list
    facts: dict | None
    groups: list
    sampler: NegativeSampler
    encode: Encoder
    enc_valid: list
    metric: str
    cfg: TrainConfig  # the run's config with this scenario's per_scenario options
    fused: dict | None = field(default=None)
    prior: dict | None = field(default=None)  # with cfg.rule_prior: the rules' blend fit on train
    own_out: facts_mod.OwnLabelOut | None = field(default=None)  # with cfg.own_label_out

    def prior_logits(self, examples, train: bool) -> list[float]:
        """cfg.rule_prior x the rules' blend logit of each candidate (0 without a prior): what the
        loss adds to the adapter's logit, so the adapter learns what the rules miss. train: the
        examples are from the train split (their own interactions are left out of the facts)."""
        if self.prior is None:
            return [0.0] * len(examples)
        from .fused import apply
        rows = [prior_features(self.facts, self.data.scenario, ex, self.own_out if train else None)
                for ex in examples]
        return [self.cfg.rule_prior * z for z in apply(self.prior, rows)]


def prepare(hub, data, cfg: TrainConfig, rng: random.Random) -> Part:
    """Steps 1-2 for one scenario: examples, facts (train split only), groups, encoders."""
    if data.extra.get("templates"):  # a custom scenario's own prompt sentences (meta.json)
        from .prompts import register_templates
        register_templates(data.scenario, **data.extra["templates"])
    train, valid, test = pick_examples(data, cfg, rng)
    facts = facts_mod.compute(_train_only(data, train)) if cfg.facts else None
    own = cfg.for_scenario(data.scenario)
    own_out = (facts_mod.OwnLabelOut(facts, train, data.extra.get("like_count"))
               if facts is not None and cfg.own_label_out else None)
    part = Part(data, train, valid, test, facts, build_groups(train), NegativeSampler(train),
                Encoder(hub, data, facts, own_out), encode_examples(hub, data, valid, facts), primary_metric(data.task),
                own, own_out=own_out)
    if own.rule_prior:
        part.prior = fit_prior(part)
    return part


# ---------------------------------------------------------------- 2b. the rules' prior (rule_prior)

def prior_features(facts: dict, scenario: str, ex: Example, own_out: facts_mod.OwnLabelOut | None) -> list[float]:
    """The fused score's rule features of one candidate; of a train candidate, pass own_out so that
    its own label is left out of its popularity and like-rate, as in its prompt (facts.OwnLabelOut)."""
    entry = own_out.candidate(ex) if own_out is not None else None
    return facts_mod.features(facts, scenario, ex.history, ex.disliked, ex.candidate, candidate_entry=entry)


def fit_prior(part: Part) -> dict:
    """The rules' blend (adapterhub.fused, without the LLM) fit on what training sees: each train
    group as a step visits it, sampled negatives included, drawn from their own seeded stream."""
    from .fused import fit
    rng = random.Random(f"{part.cfg.seed}:prior")
    rows = [ex for g in part.groups for ex in visit(g, part.cfg, part.sampler, rng)]
    X = [prior_features(part.facts, part.data.scenario, ex, part.own_out) for ex in rows]
    return {**fit(X, [ex.label for ex in rows], names=list(facts_mod.feature_names(part.data.scenario))), "fit_on": "train",
            "rows": len(rows), "weight": part.cfg.rule_prior}


# ---------------------------------------------------------------- 3. loss

def group_loss(logits: torch.Tensor, labels: torch.Tensor, sizes: list[int], listwise_weight,
               soft: torch.Tensor | None = None, distill_weight: float = 0.0) -> torch.Tensor:
    """(1 - w) * BCE + w * mean over groups with a positive and a negative of
    -mean_{positives} log softmax(group logits). logits/labels: (candidates,), groups in order.
    listwise_weight: one w, or one per group (a joint run's scenarios may differ): then each
    candidate's BCE is weighted by its group's 1 - w and each group's softmax term by its w."""
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if soft is not None:  # distillation: the teacher's P(yes) as soft labels
        bce = (1 - distill_weight) * bce + distill_weight * F.binary_cross_entropy_with_logits(logits, soft, reduction="none")
    w = listwise_weight if isinstance(listwise_weight, (list, tuple)) else [listwise_weight] * len(sizes)
    terms = []
    for z, y, wg in zip(torch.split(logits, sizes), torch.split(labels, sizes), w):
        if wg and 0 < y.sum() < len(y):
            terms.append(wg * -(torch.log_softmax(z, 0) * y).sum() / y.sum())
    if not terms:
        return bce.mean()
    per_candidate = torch.repeat_interleave(1 - torch.tensor(w, dtype=bce.dtype), torch.tensor(sizes)).to(bce.device)
    return (per_candidate * bce).mean() + torch.stack(terms).mean()


# ---------------------------------------------------------------- train_adapter: the steps in order

def train_adapter(hub, name: str, data, config: TrainConfig | None = None, *, promote: bool | None = None,
                  description: str = "", progress: bool | None = None, publish: bool = True,
                  accelerator=None, force: bool = False) -> tuple[object, dict]:
    """Train a LoRA adapter for `data.scenario` on the hub's base; publish it as `name`.

    data: one ScenarioData, or a list of them for one adapter trained jointly on several scenarios
    (batches mixed across them, each scenario's prompts and facts unchanged; validation by the mean
    of their primary metrics; the card has per-scenario metrics under "scenarios").
    -> (the resident Adapter, the card). With publish=False, returns (None, card) and nothing is written.
    A version whose raw adapter scores below the bare base on valid is published only with force=True.
    """
    from .registry import check_name
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
    init = _init_pairs(hub, cfg.init_from, cfg) if cfg.init_from else {}
    per_step = max(1, round(sum(len(g) for _, g in groups) / len(groups)))  # candidates per group, roughly
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(groups) * per_step / (cfg.batch_size * cfg.grad_accum)))
    eval_every = cfg.eval_every
    if eval_every > total:
        log.info("eval_every=%d > max_steps=%d: validating every %d steps instead", eval_every, total, total)
        eval_every = total
    metric = parts[0].metric if len(parts) == 1 else "mean_primary"
    refs = _kept_references(hub, parts, teachers) if cfg.select == "worst_kept" else None

    # hub.use(TRAIN) for the whole loop: a checkpointed backward re-runs the forward, and must see
    # the same routing as the forward did
    memory.release_freed_memory()  # what loading the data and encoding prompts freed (~100 MB on music)
    headroom = None if cfg.rss_headroom_gb is None else int(cfg.rss_headroom_gb * 1e9)
    with hub.trainable(cfg.r, cfg.alpha, cfg.dropout, cfg.targets, init) as pairs, hub.use(TRAIN), \
            _checkpointing(hub, cfg) as ckpt, memory.rss_cap(_cap_points(hub), headroom):
        domain_log = _domain_adapt(hub, datas[0], pairs.params, cfg, rng, rank, world) if cfg.domain_steps else []
        loop = Loop(hub, parts, groups, pairs.params, cfg, teachers, rng, accelerator, ckpt, refs)
        best, history, speed = loop.run(name, total, eval_every, "worst_kept" if refs else metric, progress and is_main,
                                        is_main)
        with torch.no_grad():  # the best validation check's weights
            for p, b in zip(pairs.params, best[1]):
                p.copy_(b)
        card = None
        if is_main:  # 5. evaluate and 6. card, with the trained pair still resident
            for p, scores in zip(parts, best[3]):
                p.fused = _fit_fused(p.data, p.valid, scores, p.facts) if p.facts is not None else None
            card = _card(hub, name, parts, cfg, description, history, best, speed, world)
            card["train"]["domain_log"] = domain_log
            if refs is not None:
                card["train"]["kept_reference"] = {p.data.scenario: {"base": round(b, 4), "teacher": round(t, 4)}
                                                   for p, (b, t) in zip(parts, refs)}
        tensors = pairs.tensors()
    if not (publish and is_main):
        return None, card
    return _publish(hub, name, parts, cfg, card, tensors, promote, force, metric)  # 7. publish


def _cap_points(hub) -> list:
    """Where rss_cap looks at RSS: each decoder layer and each of its parts (norms, attention,
    MLP). Checked once per layer, a 800-token step overshot the limit by ~60 MB."""
    return [m for layer in hub.decoder.layers for m in (layer, *layer.children())]


# ---------------------------------------------------------------- 4. the loop

def lr_factor(step: int, total: int, warmup: int, spent: float = 0.0) -> float:
    """The learning rate's multiplier: linear warm-up, then linear decay to 0 at the end of the run,
    after `total` steps or when max_minutes is used up (spent: the share used so far), whichever
    is nearer. Decaying by steps alone, a 20-minute news run stopped at step ~500 of 5,581 with the
    rate still at 91%, and its valid AUC moved by +-0.03 between checks to the end."""
    return min(1.0, (step + 1) / max(1, warmup)) * max(0.0, 1 - max(step / total, spent))


class Loop:
    """The training loop over packed groups: step() is one optimizer update, check() one validation
    pass, run() both until max_steps, max_minutes or early stopping."""

    def __init__(self, hub, parts: list[Part], groups: list, params: list, cfg: TrainConfig, teachers: list, rng,
                 accelerator, ckpt: _checkpointing | None = None, refs: list | None = None):
        self.hub, self.parts, self.groups, self.params, self.cfg, self.ckpt = hub, parts, groups, params, cfg, ckpt
        self.refs = refs  # select='worst_kept': (base, teacher) valid metric per part
        self.teachers, self.rng, self.accelerator = teachers, rng, accelerator  # a resident key (or None) per part
        self.rank, self.world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
        self.order: dict = {}  # _next_groups' place in the epoch order(s)

    def step(self, opt, sched) -> tuple[torch.Tensor | float, int, int]:
        """One optimizer update over batch_size candidates (x grad_accum) -> (summed loss, losses, candidates)."""
        cfg, hub = self.cfg, self.hub
        loss_sum, n_loss, n_candidates = 0.0, 0, 0
        for _ in range(cfg.grad_accum):
            batch, self.order = _next_groups(self.groups, self.order, cfg.batch_size, self.world, self.rank,
                                             self.rng, cfg, self.parts)
            encoded = [self.parts[i].encode(g) for i, g in batch]
            if self.ckpt is not None:
                self.ckpt.fit(sum(len(p) + sum(map(len, sufs)) for p, sufs in encoded))
            logits = hub.packed_logits(TRAIN, encoded)
            labels = torch.tensor([float(ex.label) for _, g in batch for ex in g], device=logits.device)
            if any(self.parts[i].prior is not None for i, _ in batch):  # the loss sees adapter + rules
                prior = [z for i, g in batch for z in self.parts[i].prior_logits(g, train=True)]
                logits = logits + torch.tensor(prior, dtype=logits.dtype, device=logits.device)
            soft = self._soft_labels(batch, encoded, labels)
            weights = [self.parts[i].cfg.listwise_weight for i, _ in batch]
            loss = group_loss(logits, labels, [len(g) for _, g in batch], weights, soft, cfg.distill_weight)
            (self.accelerator.backward(loss / cfg.grad_accum) if self.accelerator is not None
             else (loss / cfg.grad_accum).backward())
            loss_sum = loss_sum + loss.detach()  # stays on the device: no sync per step
            n_loss += 1
            n_candidates += len(labels)
        if self.world > 1:  # data parallel: every process applies the same averaged gradient
            for p in self.params:
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world
        torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss_sum, n_loss, n_candidates

    @torch.no_grad()
    def _soft_labels(self, batch, encoded, labels: torch.Tensor) -> torch.Tensor | None:
        """Each group's teacher's P(yes) (its scenario's teacher), or None when no group has one. A
        group without a teacher gets its own labels, so its distillation term is its plain BCE."""
        taught = [j for j, (i, _) in enumerate(batch) if self.teachers[i] is not None]
        if not taught:
            return None
        p = torch.sigmoid(self.hub.packed_logits([self.teachers[batch[j][0]] for j in taught],
                                                 [encoded[j] for j in taught]))
        soft, starts, at = labels.clone(), [], 0
        for _, g in batch:
            starts.append(at)
            at += len(g)
        at = 0
        for j in taught:
            n = len(batch[j][1])
            soft[starts[j]:starts[j] + n] = p[at:at + n].to(soft.dtype)
            at += n
        return soft

    def check(self) -> tuple[float, list[tuple[float, list[float]]]]:
        """Validate every part -> (the mean of their primary metrics, or with refs the worst kept
        share, [(metric, scores)] per part)."""
        checks = [_evaluate(self.hub, p) for p in self.parts]
        values = [v for v, _ in checks]
        return (sum(values) / len(values) if self.refs is None else worst_kept(values, self.refs)), checks

    def run(self, name: str, total: int, eval_every: int, metric: str, bar_on: bool, is_main: bool):
        """-> (best, history, speed). best = (valid metric, weights, step, valid scores per part)."""
        cfg = self.cfg
        opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        spent = [0.0]  # the share of max_minutes used so far
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg.warmup_steps, spent[0]))
        best = (-math.inf, None, 0, None)
        history: list[dict] = []
        bad_checks, step_s, n_candidates, loss_sum, loss_n, step = 0, 0.0, 0, 0.0, 0, 0
        bar = tqdm(total=total, desc=f"train {name}", disable=not bar_on)
        last_log = time.perf_counter()
        while step < total:
            t_step = time.perf_counter()
            loss, n_loss, n_cand = self.step(opt, sched)
            loss_sum, loss_n, n_candidates = loss_sum + loss, loss_n + n_loss, n_candidates + n_cand
            step += 1
            step_s += time.perf_counter() - t_step
            if self.world > 1:  # every process takes the slowest one's clock: same rate, same last step
                clock = torch.tensor([step_s], dtype=torch.float64)
                torch.distributed.all_reduce(clock, op=torch.distributed.ReduceOp.MAX)
                step_s = float(clock)
            bar.update(1)
            if cfg.max_minutes is not None:
                spent[0] = step_s / (60 * cfg.max_minutes)
            out_of_time = spent[0] >= 1
            if not bar_on and is_main and time.perf_counter() - last_log >= LOG_EVERY_S:
                last_log = time.perf_counter()
                log.info("step %d/%d | loss %.3f | %.0f ms/step | ETA %.0f s", step, total, float(loss_sum) / max(1, loss_n),
                         1000 * step_s / step, min(step_s / step * (total - step),
                                                   math.inf if cfg.max_minutes is None else 60 * cfg.max_minutes - step_s))
            if step % eval_every == 0 or step == total or out_of_time:
                val, checks = self.check()
                entry = {"step": step, "loss": round(float(loss_sum) / max(1, loss_n), 4), f"val_{metric}": round(val, 4),
                         "ms_per_step": round(1000 * step_s / step, 1)}
                if len(self.parts) > 1:
                    entry.update({f"val_{p.data.scenario}_{p.metric}": round(v, 4) for p, (v, _) in zip(self.parts, checks)})
                if self.refs is not None:
                    entry["val_mean_primary"] = round(sum(v for v, _ in checks) / len(checks), 4)
                history.append(entry)
                loss_sum, loss_n = 0.0, 0
                if is_main:  # a joint run also names each scenario's value, so a log shows the trade-offs
                    each = ", ".join(f"{p.data.scenario} {v:.4f}" for p, (v, _) in zip(self.parts, checks))
                    each = f" ({each})" if len(self.parts) > 1 else ""
                    log.info("step %d/%d | loss %.3f | val_%s %.4f%s | %.0f ms/step", step, total, entry["loss"],
                             metric, val, each, entry["ms_per_step"])
                bar.set_postfix(loss=entry["loss"], **{f"val_{metric}": round(val, 3)})
                if val > best[0]:
                    best, bad_checks = (val, [p.detach().clone() for p in self.params], step, [s for _, s in checks]), 0
                else:
                    bad_checks += 1
                    if bad_checks >= cfg.patience:
                        log.info("early stop at step %d (best val_%s %.4f at step %d)", step, metric, best[0], best[2])
                        break
            if out_of_time:
                log.info("max_minutes=%s reached at step %d/%d", cfg.max_minutes, step, total)
                break
        bar.close()
        world = self.world
        speed = {"train_s": round(step_s, 3), "steps": step, "candidates": n_candidates * world,
                 "candidates_per_s": round(n_candidates * world / max(step_s, 1e-9), 3)}
        return best, history, speed


# ---------------------------------------------------------------- 7. publish

def _publish(hub, name: str, parts: list[Part], cfg: TrainConfig, card: dict, tensors: dict, promote, force: bool,
             metric: str):
    """Publish the trained pair with its card and facts -> (the resident Adapter, the stored card)."""
    _check_beats_base(card, name, force)
    if promote is None:  # promote only if valid improves, judged on this run's valid examples
        promote = _compare_with_current(hub, name, parts, card)
    files = {facts_file(p.data.scenario, len(parts) > 1): facts_mod.dumps(p.facts) for p in parts
             if p.facts is not None} or None
    version = hub.registry.publish(name, tensors, peft_adapter_config(cfg, hub.base.spec), card,
                                   promote=promote, metric=metric, files=files)
    return hub.load(f"{name}@{version}"), hub.registry.card(f"{name}@{version}")


def facts_file(scenario: str, joint: bool) -> str:
    """facts.json, or one facts.<scenario>.json per scenario of a jointly trained adapter."""
    return f"facts.{scenario}.json" if joint else facts_mod.FACTS_FILE


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
        body = facts_mod.dumps(facts_mod.compute(_train_only(d, train)))
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
    from .datasets import SOURCES, load
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


def _train_only(data, train: list[Example]):
    """data with its train split as actually used (n_train may sample it): facts see nothing else."""
    from dataclasses import replace
    return replace(data, splits={"train": train})


def _fit_fused(data, valid, probs: list[float], facts) -> dict:
    """The blend of the adapter's Yes-No logit (P(yes) per valid example: the best check's
    scores) with the rules' features, fit on valid."""
    from .fused import fit
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


def _check_beats_base(card: dict, name: str, force: bool) -> None:
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
    from .evaluation import evaluate
    from .recommend import facts_of
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


def _next_groups(groups, order: dict, batch_size, world, rank, rng, cfg, parts):
    """Whole groups until a step holds batch_size candidates, for each process; -> (this process's
    visits as (part index, candidates), the rest of the epoch order). order: the shuffled group
    indices left, under None (one order over all groups), or with scenario_mix='candidates' one
    per part, taken from the part that has trained on the fewest candidates so far ("seen")."""
    per_rank: list[list[list[Example]]] = [[] for _ in range(world)]
    by_candidates = cfg.scenario_mix == "candidates" and len(parts) > 1
    seen = order.setdefault("seen", [0] * len(parts))
    for r in range(world):
        count = 0
        while count < batch_size:
            key = min(range(len(parts)), key=lambda i: (seen[i], i)) if by_candidates else None
            if not order.get(key):
                order[key] = [j for j, (i, _) in enumerate(groups) if key is None or i == key]
                rng.shuffle(order[key])
            i, group = groups[order[key].pop()]
            chosen = visit(group, parts[i].cfg, parts[i].sampler, rng)
            per_rank[r].append((i, chosen))
            count += len(chosen)
            seen[i] += len(chosen)
    return per_rank[rank], order


class _checkpointing:
    """Gradient checkpointing for the body of a `with`, when the config asks for it. fit(tokens)
    before each step picks how many decoder layers keep their activations: memory then stays about
    the same whether a step packs one group (a prefix and 8 candidates, ~400 tokens) or several
    groups with a prefix each (pointwise data, ~1,000 tokens)."""

    def __init__(self, hub, cfg: TrainConfig):
        self.model, self.on, self.budget = hub.model, cfg.grad_checkpointing, cfg.checkpoint_tokens
        self.layers = list(self.model.get_decoder().layers)

    def __enter__(self):
        if self.on:  # transformers 5 name; gradient_checkpointing_enable is its deprecated alias
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            self.fit(None)
            self.model.get_decoder().train()  # the layers only checkpoint in training mode (no dropout: p = 0)
        return self

    def fit(self, tokens: int | None) -> int:
        """Checkpoint all but layers * budget / tokens layers, spread evenly (tokens None: all of them)
        -> how many keep their activations."""
        n = len(self.layers)
        if not self.on:
            return n
        keep = 0 if tokens is None else min(n, n * self.budget // max(1, tokens))
        for i, layer in enumerate(self.layers):  # GradientCheckpointingLayer's own switch
            layer.gradient_checkpointing = (i * keep) // n == ((i + 1) * keep) // n  # evenly spread
        return keep

    def __exit__(self, *exc):
        if self.on:
            self.model.activation_checkpointing_disable()
            self.model.eval()


def _evaluate(hub, p: Part, key=TRAIN) -> tuple[float, list[float]]:
    """-> (the valid metric, P(yes) per valid example): the scores are kept for the best check, so
    the fused fit and the card reuse them instead of scoring valid again. With a rule prior, the
    metric is of what the loss trained (the adapter's logit + the prior); the scores stay the
    adapter's own."""
    from .evaluation import evaluate
    scores = score_examples(hub, key, p.enc_valid)
    judged = scores
    if p.prior is not None:
        from .fused import sigmoid
        judged = [sigmoid(yes_no_logit(s) + z) for s, z in zip(scores, p.prior_logits(p.valid, train=False))]
    return evaluate(p.data.task, p.valid, judged)[p.metric], scores


def worst_kept(values: list[float], refs: list[tuple[float, float]]) -> float:
    """The smallest share of its own adapter's gain over the base that any scenario keeps:
    min over scenarios of (value - base) / (teacher - base)."""
    return min((v - b) / (t - b) for v, (b, t) in zip(values, refs))


def _kept_references(hub, parts: list[Part], teachers: list) -> list[tuple[float, float]]:
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
        base, teacher = (_evaluate(hub, p, key)[0] for key in (None, t))
        if teacher <= base:
            raise ConfigError(f"select=worst_kept: {p.data.scenario}'s teacher does not beat the base on valid "
                              f"({p.metric} {teacher:.4f} vs {base:.4f}), so its kept share means nothing; "
                              "use select=mean")
        log.info("%s valid %s: base %.4f, teacher %.4f (the worst_kept references)", p.data.scenario, p.metric,
                 base, teacher)
        refs.append((base, teacher))
    return refs


def _init_pairs(hub, ref: str, cfg: TrainConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Warm start: the parent adapter's unscaled A and B per module path."""
    config, tensors, card, _ = hub.registry.load(ref)
    check_same_base(card, hub.base, f"--init-from {ref}")
    if config.get("r") != cfg.r or sorted(config.get("target_modules") or []) != sorted(cfg.targets):
        raise IncompatibleAdapterError(
            f"--init-from {ref}: parent has r={config.get('r')}, targets={config.get('target_modules')}; "
            f"this run has r={cfg.r}, targets={list(cfg.targets)}. Pass --r {config.get('r')} --targets "
            f"{','.join(config.get('target_modules') or [])}")
    # the run's scale may differ from the parent's (a cat merge is stored with alpha = r): B is
    # rescaled so that training starts from exactly the parent's delta
    factor = scale_of(config) / (cfg.alpha / cfg.r)
    return {p: (ab["A"].clone(), ab["B"] * factor) for p, ab in group_pairs(tensors).items()}


def _domain_adapt(hub, data, params, cfg: TrainConfig, rng: random.Random, rank: int, world: int) -> list[dict]:
    """Causal-LM steps on the scenario's item texts (titles, headlines, artist names), with the
    trainable LoRA pair active, before the Yes/No task tuning."""
    texts = [item.text for item in data.items.values() if item.text]
    if not texts:
        raise DataError(f"--domain-steps: scenario '{data.scenario}' has no item text to adapt on")
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    log_rows = []
    with hub.use(TRAIN):
        for step in range(cfg.domain_steps):
            batch = [rng.choice(texts) for _ in range(cfg.batch_size * world)][rank::world]
            ids = [hub.encode(t)[:64] for t in batch]
            width = max(len(x) for x in ids)
            input_ids = torch.zeros(len(ids), width, dtype=torch.long)
            labels = torch.full((len(ids), width), -100, dtype=torch.long)  # padding is not predicted
            for i, x in enumerate(ids):
                input_ids[i, :len(x)] = labels[i, :len(x)] = torch.tensor(x)
            mask = (labels != -100).long()
            loss = hub.model(input_ids=input_ids.to(hub.device), attention_mask=mask.to(hub.device),
                             labels=labels.to(hub.device)).loss
            loss.backward()
            if world > 1:
                for p in params:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if (step + 1) % max(1, cfg.domain_steps // 5) == 0 or step + 1 == cfg.domain_steps:
                log_rows.append({"domain_step": step + 1, "lm_loss": round(loss.item(), 4)})
                log.info("domain step %d/%d | lm loss %.3f", step + 1, cfg.domain_steps, log_rows[-1]["lm_loss"])
    return log_rows


# ---------------------------------------------------------------- 6. card

def _evaluate_part(hub, p: Part, cfg: TrainConfig, valid_scores: list[float], joint: bool) -> dict:
    """One scenario's share of the card: data, metrics of the trained pair (still resident as TRAIN)
    beside the base and baselines on valid and test, facts, fused blend, verdict."""
    from .prompts import registered_templates
    metrics, eval_s = {}, {}
    for split, examples in (("valid", p.valid), ("test", p.test)):
        if len({ex.label for ex in examples}) == 2:  # AUC needs both classes
            t0 = time.perf_counter()
            known = valid_scores if split == "valid" else None  # the best check already scored valid
            metrics[split] = evaluate_split(hub, p.data, examples, TRAIN, seed=cfg.seed, facts=p.facts,
                                            fused_model=p.fused, adapter_scores=known)
            eval_s[split] = round(time.perf_counter() - t0, 1)
        elif examples:
            log.warning("%s split of %s has one label only: no metrics for it in the card", split, p.data.scenario)
    d = p.data
    out = {"data": {"source": d.source, "sha256": d.sha256, "sizes": d.sizes(), "task": d.task,
                    "used": {"train": len(p.train), "valid": len(p.valid), "test": len(p.test)},
                    **({"load": d.load_args} if d.load_args else {})},
           "primary_metric": p.metric, "metrics": metrics, "eval_s": eval_s}
    if registered_templates(d.scenario):
        out["templates"] = registered_templates(d.scenario)
    if p.facts is not None:
        out["facts"] = {"file": facts_file(d.scenario, joint), "items": len(p.facts["items"]),
                        "bytes": len(facts_mod.dumps(p.facts)), "from": "train split"}
        out["fused"] = {**p.fused, "fit_on": "valid", "note": "valid metrics of the fused score are in-sample"}
    if p.prior is not None:
        out["rule_prior"] = p.prior
    out["verdict"] = verdict(out)
    return out


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


def _card(hub, name, parts: list[Part], cfg, description, history, best, speed, world=1) -> dict:
    """Evaluate the trained pair on every scenario of the run; build the card. A joint card keeps
    each scenario's share under "scenarios" and the mean primary metric of adapter and base on top."""
    joint = len(parts) > 1
    evals = {p.data.scenario: _evaluate_part(hub, p, cfg, scores, joint) for p, scores in zip(parts, best[3])}
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
