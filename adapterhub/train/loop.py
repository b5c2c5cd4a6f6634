"""The training loop: the loss over packed candidate groups, the learning-rate schedule, the Loop
(one optimizer step, one validation check, and run() until the step, time or patience budget is
spent), the order groups are visited in, and gradient checkpointing."""
from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..datasets.common import Example
from ..lora import TRAIN
from .evaluate import validate, worst_kept
from .examples import Part, visit
from .resume import Checkpoints, RunState, StopOnInterrupt, human_duration

log = logging.getLogger(__name__)
LOG_EVERY_S = 30.0  # without a progress bar, a log line at least this often


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
    positives = [int(sum(g)) for g in torch.split(labels.detach().cpu(), sizes)]   # one host copy, not one per group
    terms = []
    for z, y, wg, n_pos in zip(torch.split(logits, sizes), torch.split(labels, sizes), w, positives):
        if wg and 0 < n_pos < len(y):
            terms.append(wg * -(torch.log_softmax(z, 0) * y).sum() / y.sum())
    if not terms:
        return bce.mean()
    per_candidate = torch.repeat_interleave(1 - torch.tensor(w, dtype=bce.dtype), torch.tensor(sizes)).to(bce.device)
    return (per_candidate * bce).mean() + torch.stack(terms).mean()


def cap_points(hub) -> list:
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
                 accelerator, ckpt: Checkpointing | None = None, refs: list | None = None):
        self.hub, self.parts, self.groups, self.params, self.cfg, self.ckpt = hub, parts, groups, params, cfg, ckpt
        self.refs = refs  # select='worst_kept': (base, teacher) valid metric per part
        self.teachers, self.rng, self.accelerator = teachers, rng, accelerator  # a resident key (or None) per part
        self.rank, self.world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
        self.order: dict = {}  # next_groups' place in the epoch order(s)
        # CUDA runs ahead of the host: a step's time is only known once the device has done it
        self.device_sync = torch.cuda.synchronize if hub.device.type == "cuda" else None

    def step(self, opt, sched) -> tuple[torch.Tensor | float, int, int]:
        """One optimizer update over batch_size candidates (x grad_accum) -> (summed loss, losses, candidates)."""
        cfg, hub = self.cfg, self.hub
        loss_sum, n_loss, n_candidates = 0.0, 0, 0
        for _ in range(cfg.grad_accum):
            batch, self.order = next_groups(self.groups, self.order, cfg.batch_size, self.world, self.rank,
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

    def check(self, progress: bool = False) -> tuple[float, list[tuple[float, list[float]]]]:
        """Validate every part -> (the mean of their primary metrics, or with refs the worst kept
        share, [(metric, scores)] per part)."""
        checks = [validate(self.hub, p, progress=progress) for p in self.parts]
        values = [v for v, _ in checks]
        return (sum(values) / len(values) if self.refs is None else worst_kept(values, self.refs)), checks

    def run(self, name: str, total: int, eval_every: int, metric: str, bar_on: bool, is_main: bool,
            saver: Checkpoints | None = None, resume: bool = False):
        """-> (best, history, speed, state). best = (valid metric, weights, step, valid scores per
        part). saver: the run's checkpoints, saved after every check (resume: start from the last);
        Ctrl-C stops after the current step and the run ends as if its budget were spent."""
        cfg = self.cfg
        opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        spent = [0.0]  # the share of max_minutes used so far
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg.warmup_steps, spent[0]))
        st, best_weights = RunState(), None
        if resume:
            st, best_weights, self.order = saver.restore(self.params, opt, sched, self.rng)
            log.info("resumed %s at step %d/%d (best val_%s %.4f at step %d)", name, st.step, total, metric,
                     st.best_value, st.best_step)
        if cfg.max_minutes is not None:
            spent[0] = st.step_s / (60 * cfg.max_minutes)
        loss_sum, loss_n = 0.0, 0
        bar = tqdm(total=total, initial=st.step, desc=f"train {name}", disable=not bar_on)
        last_log = time.perf_counter()
        with StopOnInterrupt() as stop:
            while st.step < total and st.interrupted is None and not (resume and st.history and st.bad_checks >= cfg.patience):
                t_step = time.perf_counter()
                loss, n_loss, n_cand = self.step(opt, sched)
                loss_sum, loss_n, st.n_candidates = loss_sum + loss, loss_n + n_loss, st.n_candidates + n_cand
                st.step += 1
                if self.device_sync is not None:   # CUDA runs ahead of the host: time what it did
                    self.device_sync()
                st.step_s += time.perf_counter() - t_step
                if self.world > 1:  # every process takes the slowest one's clock: same rate, same last step
                    clock = torch.tensor([st.step_s], dtype=torch.float64)
                    torch.distributed.all_reduce(clock, op=torch.distributed.ReduceOp.MAX)
                    st.step_s = float(clock)
                bar.update(1)
                if cfg.max_minutes is not None:
                    spent[0] = st.step_s / (60 * cfg.max_minutes)
                out_of_time = spent[0] >= 1
                if stop.requested:
                    st.interrupted = {"at_step": st.step, "reason": "Ctrl-C"}
                if not bar_on and is_main and time.perf_counter() - last_log >= LOG_EVERY_S:
                    last_log = time.perf_counter()
                    left = min(st.step_s / st.step * (total - st.step),
                               math.inf if cfg.max_minutes is None else 60 * cfg.max_minutes - st.step_s)
                    log.info("step %d/%d | loss %.3f | %.0f ms/step | ETA %s (checks excluded)", st.step, total,
                             float(loss_sum) / max(1, loss_n), 1000 * st.step_s / st.step, human_duration(left))
                if st.step % eval_every == 0 or st.step == total or out_of_time or st.interrupted:
                    t_check = time.perf_counter()
                    if not bar_on and is_main:
                        log.info("step %d/%d | validating %d examples ...", st.step, total,
                                 sum(len(p.valid) for p in self.parts))
                    val, checks = self.check(progress=bar_on)
                    entry = {"step": st.step, "loss": round(float(loss_sum) / max(1, loss_n), 4),
                             f"val_{metric}": round(val, 4), "ms_per_step": round(1000 * st.step_s / st.step, 1),
                             "check_s": round(time.perf_counter() - t_check, 1)}
                    if len(self.parts) > 1:
                        entry.update({f"val_{p.data.scenario}_{p.metric}": round(v, 4)
                                      for p, (v, _) in zip(self.parts, checks)})
                    if self.refs is not None:
                        entry["val_mean_primary"] = round(sum(v for v, _ in checks) / len(checks), 4)
                    st.history.append(entry)
                    loss_sum, loss_n = 0.0, 0
                    if is_main:  # a joint run also names each scenario's value, so a log shows the trade-offs
                        each = ", ".join(f"{p.data.scenario} {v:.4f}" for p, (v, _) in zip(self.parts, checks))
                        each = f" ({each})" if len(self.parts) > 1 else ""
                        log.info("step %d/%d | loss %.3f | val_%s %.4f%s | %.0f ms/step | check %s", st.step, total,
                                 entry["loss"], metric, val, each, entry["ms_per_step"], human_duration(entry["check_s"]))
                    bar.set_postfix(loss=entry["loss"], **{f"val_{metric}": round(val, 3)})
                    if val > st.best_value:
                        st.best_value, st.best_step, st.best_scores = val, st.step, [s for _, s in checks]
                        best_weights, st.bad_checks = [p.detach().clone() for p in self.params], 0
                    else:
                        st.bad_checks += 1
                    if saver is not None and is_main:
                        saver.save(st, self.params, best_weights, opt, sched, self.rng, self.order)
                    if st.bad_checks >= cfg.patience:
                        log.info("early stop at step %d (best val_%s %.4f at step %d)", st.step, metric,
                                 st.best_value, st.best_step)
                        break
                if out_of_time:
                    log.info("max_minutes=%s reached at step %d/%d", cfg.max_minutes, st.step, total)
                    break
        bar.close()
        if st.interrupted:
            log.warning("interrupted at step %d/%d: evaluating and publishing the best check (step %d)",
                        st.step, total, st.best_step)
        world = self.world
        speed = {"train_s": round(st.step_s, 3), "steps": st.step, "candidates": st.n_candidates * world,
                 "candidates_per_s": round(st.n_candidates * world / max(st.step_s, 1e-9), 3)}
        best = (st.best_value, best_weights, st.best_step, st.best_scores)
        return best, st.history, speed, st


def next_groups(groups, order: dict, batch_size, world, rank, rng, cfg, parts):
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


class Checkpointing:
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
