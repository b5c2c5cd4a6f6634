"""The LoRA pairs being trained over a hub's base (Hub.trainable): attached for a `with`, removed after."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from .errors import ConfigError
from .lora import peft_key


@dataclass
class TrainablePairs:
    """The LoRA pairs being trained (see Hub.trainable)."""
    modules: dict          # module path -> LoraLinear
    params: list = field(default_factory=list)

    def tensors(self) -> dict[str, torch.Tensor]:
        """PEFT-named, unscaled A and B: what adapter_model.safetensors holds."""
        out = {}
        for path, m in self.modules.items():
            out[peft_key(path, "A")] = m.lora_A.detach().float().cpu().contiguous()
            out[peft_key(path, "B")] = m.lora_B.detach().float().cpu().contiguous()
        return out


@contextlib.contextmanager
def trainable(hub, r: int, alpha: float, dropout: float, targets, init: dict | None = None):
    """One trainable LoRA pair per target module of `hub` (routing key lora.TRAIN) for the body of
    the `with`; removed on exit, whatever happens. Yields a TrainablePairs."""
    modules = {p: m for p, m in hub.wrapped.items() if p.rsplit(".", 1)[-1] in targets}
    if not modules:
        raise ConfigError(f"targets {list(targets)} match no module of base {hub.base.spec!r} "
                          "(try q_proj,k_proj,v_proj,o_proj)")
    pairs = TrainablePairs(modules)
    try:
        for path, m in modules.items():
            pairs.params += m.add_trainable(r, alpha, dropout, torch.float32, (init or {}).get(path))
            m.train()
        yield pairs
    finally:
        for m in modules.values():
            m.drop_trainable()
            m.eval()
