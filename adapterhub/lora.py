"""LoRA on a frozen base, many adapters resident, chosen per call or per row.

Each target Linear of the base is wrapped once in a LoraLinear. Every wrapper of one model shares
a Routing object, so switching adapters is one attribute write (no module-tree walk), and a cold
load is a dict insert per module. An adapter's weights live in the wrapper as (A, B*scale); B is
pre-scaled at load so the hot path is two small matmuls and one add.

Mixed batches: `Routing.groups` lists (adapter key, row indices); the base runs once over all rows
and each adapter's LoRA product runs on its own rows only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TRAIN = "__train__"  # routing key of the adapter being trained (nn.Parameters, scaled in forward)
SERVABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Routing:
    """Which adapter the next forward uses: `active` (one key or None = base) or `groups`."""
    __slots__ = ("active", "groups")

    def __init__(self):
        self.active: str | None = None
        self.groups: list[tuple[str | None, torch.Tensor]] | None = None


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Module, routing: Routing):
        super().__init__()
        self.base = base
        self.routing = routing
        self.in_features, self.out_features = base.in_features, base.out_features
        self.adapters: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # key -> (A (r, in), B*scale (out, r))
        self.lora_A: nn.Parameter | None = None  # only while training
        self.lora_B: nn.Parameter | None = None
        self.train_scale = 1.0
        self.train_dropout = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, seq, in)
        y = self.base(x)
        routing = self.routing
        if routing.groups is None:
            key = routing.active
            if key is None:
                return y
            if key == TRAIN:
                if self.lora_A is None:
                    return y
                h = F.dropout(x, self.train_dropout, self.training) if self.train_dropout else x
                return y + F.linear(F.linear(h.to(self.lora_A.dtype), self.lora_A), self.lora_B).to(y.dtype) * self.train_scale
            pair = self.adapters.get(key)
            if pair is None:  # this adapter does not target this module
                return y
            return y + F.linear(F.linear(x, pair[0]), pair[1])
        for key, rows in routing.groups:
            pair = self.adapters.get(key) if key is not None else None
            if pair is not None:
                y.index_add_(0, rows, F.linear(F.linear(x.index_select(0, rows), pair[0]), pair[1]))
        return y

    # ------------------------------------------------------------ training pair
    def add_trainable(self, r: int, alpha: float, dropout: float, dtype: torch.dtype,
                      init: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[nn.Parameter]:
        """PEFT's init: A kaiming-uniform, B zero, so a fresh adapter equals the base."""
        dev = self.base.weight.device
        A = torch.empty(r, self.in_features, device=dev, dtype=dtype)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        B = torch.zeros(self.out_features, r, device=dev, dtype=dtype)
        if init is not None:
            A.copy_(init[0]), B.copy_(init[1])
        self.lora_A, self.lora_B = nn.Parameter(A), nn.Parameter(B)
        self.train_scale, self.train_dropout = alpha / r, dropout
        return [self.lora_A, self.lora_B]

    def drop_trainable(self) -> None:
        self.lora_A = self.lora_B = None


def wrap_model(model: nn.Module, targets=SERVABLE) -> tuple[Routing, dict[str, LoraLinear]]:
    """Wrap every Linear named in `targets` inside the decoder; -> (routing, {module path: wrapper}).

    Paths are the base model's own (e.g. 'model.layers.0.self_attn.q_proj'), as PEFT names them.
    """
    routing = Routing()
    wrapped: dict[str, LoraLinear] = {}
    for path, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and hasattr(child, "in_features") and not isinstance(child, LoraLinear):
                wrapper = LoraLinear(child, routing)
                setattr(module, child_name, wrapper)
                wrapped[f"{path}.{child_name}" if path else child_name] = wrapper
    return routing, wrapped


def peft_key(path: str, which: str) -> str:
    """PEFT's tensor name for module `path`'s A or B ('A'|'B') in adapter_model.safetensors."""
    return f"base_model.model.{path}.lora_{which}.weight"


def split_peft_key(key: str) -> tuple[str, str] | None:
    """'base_model.model.X.lora_A.weight' -> ('X', 'A'); None for anything else."""
    prefix = "base_model.model."
    for which in ("A", "B"):
        suffix = f".lora_{which}.weight"
        if key.startswith(prefix) and key.endswith(suffix):
            return key[len(prefix):-len(suffix)], which
    return None
