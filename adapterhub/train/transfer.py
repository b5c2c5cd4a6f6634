"""Transfer into a new adapter: a warm start from a parent adapter's weights, and domain adaptation
(causal-LM steps on the scenario's item texts) before the task tuning."""
from __future__ import annotations

import logging
import random

import torch

from ..config import TrainConfig
from ..errors import DataError, IncompatibleAdapterError
from ..lora import TRAIN, check_same_base, group_pairs, scale_of

log = logging.getLogger(__name__)


def init_pairs(hub, ref: str, cfg: TrainConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
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


def domain_adapt(hub, data, params, cfg: TrainConfig, rng: random.Random, rank: int, world: int) -> list[dict]:
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
