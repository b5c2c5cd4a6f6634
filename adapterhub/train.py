"""train_adapter: a plain LoRA loop you can read top to bottom.

Loss on the answer token: the P(yes) logit (the Yes-vs-No logit difference at the last position)
against the label, optionally mixed with a teacher's P(yes). Validation AUC at intervals, early
stopping, the best weights published as a new registry version.
"""
from __future__ import annotations

import logging
import math
import random
import sys
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import __version__
from .config import TrainConfig
from .errors import ConfigError, DataError, IncompatibleAdapterError
from .lora import TRAIN, peft_key
from .report import cap_examples, encode_examples, evaluate_split, primary_metric, score_examples

log = logging.getLogger(__name__)


def peft_adapter_config(cfg: TrainConfig, base_spec: str) -> dict:
    """The adapter_config.json PEFT, vLLM and LoRAX read."""
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_spec,
            "r": cfg.r, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
            "target_modules": sorted(cfg.targets), "bias": "none", "fan_in_fan_out": False,
            "inference_mode": True, "use_rslora": False, "use_dora": False, "init_lora_weights": True}


def _check_labels(examples, what: str) -> None:
    labels = {ex.label for ex in examples}
    if labels != {0, 1}:
        raise DataError(f"the {what} split has only label(s) {sorted(labels)}: training needs both positives and negatives")


def _init_pairs(hub, ref: str, cfg: TrainConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Warm start: the parent adapter's unscaled A and B per module path."""
    from .lora import split_peft_key
    config, tensors, card, _ = hub.registry.load(ref)
    fp = (card.get("base") or {}).get("fingerprint")
    if fp and fp != hub.fingerprint:
        raise IncompatibleAdapterError(f"--init-from {ref}: trained on another base (fingerprint {fp}, this hub {hub.fingerprint})")
    if config.get("r") != cfg.r or sorted(config.get("target_modules") or []) != sorted(cfg.targets):
        raise IncompatibleAdapterError(
            f"--init-from {ref}: parent has r={config.get('r')}, targets={config.get('target_modules')}; "
            f"this run has r={cfg.r}, targets={list(cfg.targets)}. Pass --r {config.get('r')} --targets "
            f"{','.join(config.get('target_modules') or [])}")
    pairs: dict[str, dict] = {}
    for name, t in tensors.items():
        parsed = split_peft_key(name)
        if parsed:
            pairs.setdefault(parsed[0], {})[parsed[1]] = t.clone()
    return {p: (ab["A"], ab["B"]) for p, ab in pairs.items()}


def train_adapter(hub, name: str, data, config: TrainConfig | None = None, *, promote: bool | None = None,
                  description: str = "", progress: bool | None = None, publish: bool = True,
                  accelerator=None) -> tuple[object, dict]:
    """Train a LoRA adapter for `data.scenario` on the hub's base; publish it as `name`.

    -> (the resident Adapter, the card). With publish=False, returns (None, card) and nothing is written.
    """
    from .registry import check_name
    cfg = config or TrainConfig()
    check_name(name)
    progress = sys.stderr.isatty() if progress is None else progress
    is_main = accelerator is None or accelerator.is_main_process
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)

    train = list(data.splits.get("train", []))
    if cfg.n_train is not None:
        train = rng.sample(train, min(cfg.n_train, len(train)))
    valid = cap_examples(data.splits.get("valid", []), cfg.n_valid, cfg.seed)
    test = cap_examples(data.splits.get("test", []), cfg.n_test, cfg.seed)
    if not train or not valid:
        raise DataError(f"scenario '{data.scenario}' needs non-empty train and valid splits (sizes: {data.sizes()})")
    _check_labels(train, "train")
    _check_labels(valid, "valid")
    enc_train = encode_examples(hub, data, train)
    enc_valid = encode_examples(hub, data, valid)
    labels = torch.tensor([float(ex.label) for ex in train])

    teacher_p = None
    if cfg.teacher:
        teacher_key = hub.load(cfg.teacher).key
        teacher_p = torch.tensor(score_examples(hub, teacher_key, enc_train, progress=progress, desc="teacher"))

    # --- the trainable pairs, inside the hub's own wrappers
    init = _init_pairs(hub, cfg.init_from, cfg) if cfg.init_from else {}
    modules = {p: m for p, m in hub.wrapped.items() if p.rsplit(".", 1)[-1] in cfg.targets}
    if not modules:
        raise ConfigError(f"targets {list(cfg.targets)} match no module of base {hub.base.spec!r} "
                          "(try q_proj,k_proj,v_proj,o_proj)")
    params = []
    for path, m in modules.items():
        params += m.add_trainable(cfg.r, cfg.alpha, cfg.dropout, torch.float32, init.get(path))
        m.train()
    domain_log = _domain_adapt(hub, data, params, cfg, rng, rank, world) if cfg.domain_steps else []
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_step = cfg.batch_size * cfg.grad_accum
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(train) / per_step))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps))
                                              * max(0.0, (total - s) / total))
    metric = primary_metric(data.task)
    best = (-math.inf, None, 0)  # (valid metric, weights, step)
    history: list[dict] = []
    bad_checks = 0
    order: list[int] = []
    t0 = time.perf_counter()
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    bar = tqdm(total=total, desc=f"train {name}", disable=not (progress and is_main))
    routing_saved = hub.routing.active
    hub.routing.active, hub.routing.groups = TRAIN, None
    try:
        step, loss_sum, loss_n = 0, 0.0, 0
        while step < total:
            for _ in range(cfg.grad_accum):
                if len(order) < cfg.batch_size * world:
                    epoch = list(range(len(train)))
                    rng.shuffle(epoch)
                    order += epoch
                batch = order[:cfg.batch_size * world][rank::world]  # each process its own rows
                del order[:cfg.batch_size * world]
                ids = [enc_train[i][0] + enc_train[i][1] for i in batch]
                logit = hub.yes_logit(hub.last_hidden(ids, TRAIN))
                target = labels[batch].to(logit.device)
                loss = F.binary_cross_entropy_with_logits(logit, target)
                if teacher_p is not None:
                    soft = F.binary_cross_entropy_with_logits(logit, teacher_p[batch].to(logit.device))
                    loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * soft
                if accelerator is not None:
                    accelerator.backward(loss / cfg.grad_accum)
                else:
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.detach()
                loss_n += 1
            if world > 1:  # data parallel: every process applies the same averaged gradient
                for p in params:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % cfg.eval_every == 0 or step == total:
                from .evaluation import evaluate
                val = evaluate(data.task, valid, score_examples(hub, TRAIN, enc_valid))[metric]
                entry = {"step": step, "loss": round(float(loss_sum) / loss_n, 4), f"val_{metric}": round(val, 4),
                         "ms_per_step": round(1000 * (time.perf_counter() - t0) / step, 1)}
                history.append(entry)
                loss_sum, loss_n = 0.0, 0
                if is_main:
                    log.info("step %d/%d | loss %.3f | val_%s %.4f | %.0f ms/step", step, total, entry["loss"],
                             metric, val, entry["ms_per_step"])
                bar.set_postfix(loss=entry["loss"], **{f"val_{metric}": round(val, 3)})
                if val > best[0]:
                    best = (val, [(p.detach().clone()) for p in params], step)
                    bad_checks = 0
                else:
                    bad_checks += 1
                    if bad_checks >= cfg.patience:
                        log.info("early stop at step %d (best val_%s %.4f at step %d)", step, metric, best[0], best[2])
                        break
        bar.close()
        train_s = time.perf_counter() - t0
        with torch.no_grad():
            for p, b in zip(params, best[1]):
                p.copy_(b)
        card = None
        if is_main:
            card = _card(hub, name, data, cfg, description, history, best, train_s, len(train), valid, test, world)
            card["train"]["domain_log"] = domain_log
        tensors = {}
        for path, m in modules.items():
            tensors[peft_key(path, "A")] = m.lora_A.detach().float().cpu().contiguous()
            tensors[peft_key(path, "B")] = m.lora_B.detach().float().cpu().contiguous()
    finally:
        hub.routing.active = routing_saved
        for m in modules.values():
            m.drop_trainable()
            m.eval()
    if not (publish and is_main):
        return None, card
    version = hub.registry.publish(name, tensors, peft_adapter_config(cfg, hub.base.spec), card,
                                   promote=promote, metric=metric)
    return hub.load(f"{name}@{version}"), hub.registry.card(f"{name}@{version}")


def _domain_adapt(hub, data, params, cfg: TrainConfig, rng: random.Random, rank: int, world: int) -> list[dict]:
    """Causal-LM steps on the scenario's item texts (titles, headlines, artist names), with the
    trainable LoRA pair active, before the Yes/No task tuning."""
    texts = [item.text for item in data.items.values() if item.text]
    if not texts:
        raise DataError(f"--domain-steps: scenario '{data.scenario}' has no item text to adapt on")
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    saved = hub.routing.active
    hub.routing.active, hub.routing.groups = TRAIN, None
    log_rows = []
    try:
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
                log_rows.append({"domain_step": step + 1, "lm_loss": round(float(loss), 4)})
                log.info("domain step %d/%d | lm loss %.3f", step + 1, cfg.domain_steps, float(loss))
    finally:
        hub.routing.active = saved
    return log_rows


def _card(hub, name, data, cfg, description, history, best, train_s, n_train, valid, test, world=1) -> dict:
    """Evaluate the trained pair (still resident as TRAIN) beside the base and baselines; build the card."""
    metrics = {}
    for split, examples in (("valid", valid), ("test", test)):
        if len({ex.label for ex in examples}) == 2:  # AUC needs both classes
            metrics[split] = evaluate_split(hub, data, examples, TRAIN, seed=cfg.seed)
        elif examples:
            log.warning("%s split has one label only: no metrics for it in the card", split)
    parents = []
    if cfg.init_from:
        parents.append({"ref": cfg.init_from, "role": "warm start"})
    if cfg.teacher:
        parents.append({"ref": cfg.teacher, "role": "teacher", "distill_weight": cfg.distill_weight})
    return {
        "scenario": data.scenario,
        "description": description or f"{data.scenario} recommendation adapter ({data.source})",
        "base": {"spec": hub.base.spec, "fingerprint": hub.fingerprint, "quant": hub.base.quant},
        "lora": {"r": cfg.r, "alpha": cfg.alpha, "targets": sorted(cfg.targets), "dropout": cfg.dropout},
        "data": {"source": data.source, "sha256": data.sha256, "sizes": data.sizes(), "task": data.task,
                 "used": {"train": n_train, "valid": len(valid), "test": len(test)}},
        "train": {**cfg.to_dict(), "world_size": world, "best_step": best[2], "train_s": round(train_s, 3), "log": history},
        "primary_metric": primary_metric(data.task),
        "metrics": metrics,
        "parents": parents,
        "adapterhub_version": __version__,
    }
