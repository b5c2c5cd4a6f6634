"""LoRA on a frozen base, many adapters resident, chosen per call or per row, from many threads.

Each target Linear of the base is wrapped once in a LoraLinear. Every wrapper of one model shares
a Routing object, which holds

- `table`: the resident adapters, wrapper key -> one (A, B*scale) pair (or None) per wrapper,
  indexed by `LoraLinear.index`. A load builds the whole tuple first and inserts it with one dict
  write; an unload removes it with one. B is pre-scaled at load, so the hot path is two small
  matmuls and one add.
- the *route* of the forward running now, in a `contextvars.ContextVar`: each thread (and each
  asyncio task) sees only its own. A route holds the adapter's tuple itself, resolved when the
  call starts, so a forward keeps the weights it began with to its end even when another thread
  unloads or evicts that adapter halfway: it never sees a half-placed or half-removed adapter.

Every served row takes one arithmetic (add_lora): y += (x A^T) B^T, both products in the pair's
dtype (the base's compute dtype), the sum in y's. A mixed batch (rows of one forward routed to
different adapters) takes one of two forms of it (LoraLinear.mixed):
- up to STACK_TOKENS tokens, *stacked*: every adapter's A and B stacked, one product each, each
  token keeping only its own adapter's columns (a mask of 0 and 1): two matmuls whatever the number
  of adapters, for (adapters - 1) x more of the small LoRA flops;
- past that, *by segments*: add_lora once per adapter on its contiguous tokens, the kernels one
  adapter takes on fewer rows (each call's fixed cost is paid per adapter).
The crossover was measured (benchmarks/mixed_batch/). On CPU both give a row the same bits
whatever else is in the batch (bf16; tests/test_mixed_batch.py), so a row's LoRA term does not
depend on its batch.

Where each adapter's tokens are (Route): `groups` = [(pairs, first row, end row)] over the input's
rows (the hub orders a batch's rows so that each adapter's rows are one slice), or `spans` =
{tokens: [(pairs, first token, end token)]} over the input flattened to tokens, for groups packed
back to back in one row (Route.in_one_row); there the last layer's MLP sees only the read tokens,
hence a list per token count.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import threading
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import nn

TRAIN = "__train__"  # routing key of the adapter being trained (nn.Parameters, scaled in forward)
SERVABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

STACK_TOKENS = 2048  # a mixed batch over at most this many tokens takes the stacked product (LoraLinear.mixed)
STACKS_KEPT = 4  # adapter combinations whose stacked weights Routing keeps

Pairs = tuple  # one (A (r, in), B*scale (out, r)) or None per wrapper, indexed by LoraLinear.index


def plain_tensors():
    """Tensors made in the body are ordinary ones even under inference_mode: cached stacks and masks
    are also used by forwards that run with autograd (which refuses inference tensors)."""
    return contextlib.ExitStack() if not torch.is_inference_mode_enabled() else torch.inference_mode(False)


class Route:
    """One forward's adapter choice: `pairs` (one adapter for every row), a mixed batch (`groups`
    over rows or `spans` over tokens, see above), the trained pair (`key` TRAIN) or none (the base)."""
    __slots__ = ("key", "pairs", "groups", "full", "spans", "stacks", "masks")

    def __init__(self, key: str | None = None, pairs: Pairs | None = None, groups: list | None = None,
                 full: bool = False, spans: dict | None = None):
        self.key, self.pairs, self.groups, self.spans = key, pairs, groups, spans
        self.full = full  # the groups cover every row (no row runs on the bare base)
        self.stacks = None  # this forward's Routing.stacks entry (a mixed batch's adapters stacked)
        self.masks = {}  # (tokens, ranks) -> which stacked columns each token keeps

    def mask(self, n: int, spans: list, ranks: tuple, like: torch.Tensor) -> torch.Tensor:
        """(n tokens, sum(ranks)): 1 where a token's own span's adapter's columns are, 0 elsewhere."""
        m = self.masks.get((n, ranks))
        if m is None:
            with plain_tensors():
                m = torch.zeros(n, sum(ranks), dtype=like.dtype, device=like.device)
                col = 0
                for (_, a, b), r in zip(spans, ranks):
                    m[a:b, col:col + r] = 1
                    col += r
            self.masks[(n, ranks)] = m
        return m

    def in_one_row(self, tokens: list[int], reads: list[int], width: int) -> "Route":
        """This mixed route (`groups` over packed groups, in order) for the same groups packed back to
        back in one row of `width` tokens (packing.pack(one_row=True)): group g is tokens[g] tokens,
        reads[g] of them read (its candidates' last tokens)."""
        tok, read = list(accumulate(tokens, initial=0)), list(accumulate(reads, initial=0))
        spans = {width: [(p, tok[a], tok[b]) for p, a, b in self.groups],
                 read[-1]: [(p, read[a], read[b]) for p, a, b in self.groups]}  # (equal lists if width == read[-1])
        return Route(spans=spans, full=self.full)


BASE = Route()
TRAINING = Route(TRAIN)


def _in_backward() -> bool:
    """True on a thread that runs an autograd backward pass (on CUDA, the device's own worker thread)."""
    return torch._C._current_graph_task_id() != -1


def add_lora(y: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """y + (x A^T) B^T: both products in A's dtype (the base's compute dtype), the sum in y's; into y
    in place at inference, a new tensor where autograd may need y. x (..., in), y (..., out)."""
    delta = F.linear(F.linear(x if x.dtype == A.dtype else x.to(A.dtype), A), B)  # o_proj's input is fp32
    if torch.is_grad_enabled():
        return y + delta.to(y.dtype)
    return y.add_(delta)  # compute='bf16' hands q/k/v/o fp32 outputs: add_ converts delta as it adds


class Routing:
    """Shared by every wrapper of one model: the resident adapters and each thread's route."""

    def __init__(self):
        self.table: dict[str, Pairs] = {}
        self.size = 0  # number of wrappers
        self._route = contextvars.ContextVar(f"adapterhub_route_{id(self)}", default=None)
        # Threads inside use(TRAIN). A checkpointed backward re-runs the forward; on CPU that happens on
        # the calling thread (which sees its route), on CUDA on autograd's device thread (which has
        # none): a thread with no route of its own, inside a backward pass, trains.
        self.training = 0
        self._training_lock = threading.Lock()
        # (ids of a mixed batch's pairs, in span order) -> (those pairs, per wrapper: (A stack, B stack, ranks))
        self._stacks: dict[tuple, tuple] = {}
        self._stacks_lock = threading.Lock()

    def current(self) -> Route:
        route = self._route.get()
        if route is None:
            return TRAINING if self.training and _in_backward() else BASE
        return route

    @contextlib.contextmanager
    def routed(self, route: Route):
        """The body of the `with` (in this thread or task only) runs with `route`."""
        token = self._route.set(route)
        if route is TRAINING:
            with self._training_lock:
                self.training += 1
        try:
            yield route
        finally:
            if route is TRAINING:
                with self._training_lock:
                    self.training -= 1
            self._route.reset(token)

    def stacked(self, route: Route, spans: list, index: int) -> tuple | None:
        """Wrapper `index`'s A of every adapter of the mixed batch `spans`, stacked (sum r, in), its B
        (out, sum r) and each adapter's rank there (0: it skips this wrapper); None if all skip it.
        Built once per adapter combination (the last STACKS_KEPT are kept; an entry holds its pairs, so
        their ids are not reused while it lives) and filled one wrapper at a time."""
        entry = route.stacks
        if entry is None:
            pairs = tuple(p for p, _, _ in spans)
            key = tuple(map(id, pairs))
            with self._stacks_lock:
                entry = self._stacks.get(key)
                if entry is None:
                    entry = self._stacks[key] = (pairs, [False] * self.size)
                    for old in list(self._stacks)[:-STACKS_KEPT]:
                        del self._stacks[old]
            route.stacks = entry
        slot = entry[1][index]
        if slot is False:  # two threads may both build it: equal values, the last write stays
            ps = [pairs[index] for pairs in entry[0]]
            ranks = tuple(0 if p is None else p[0].shape[0] for p in ps)
            with plain_tensors():
                slot = None if not any(ranks) else (torch.cat([p[0] for p in ps if p is not None]),
                                                    torch.cat([p[1] for p in ps if p is not None], 1), ranks)
            entry[1][index] = slot
        return slot

    def single(self, wkey: str | None) -> Route:
        """The route for one wrapper key on every row (None = the base; TRAIN = the trained pair)."""
        if wkey is None:
            return BASE
        if wkey == TRAIN:
            return TRAINING
        pairs = self.table.get(wkey)
        if pairs is None:
            raise KeyError(f"adapter {wkey!r} is not placed (placed: {', '.join(self.table) or 'none'})")
        return Route(wkey, pairs)

    @property
    def active(self) -> str | None:
        """This thread's single-adapter key (None: the base, or a mixed batch)."""
        return self.current().key

    @active.setter
    def active(self, wkey: str | None) -> None:  # for this thread until changed; prefer Hub.use()
        self._route.set(self.single(wkey))


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Module, routing: Routing, index: int):
        super().__init__()
        self.base = base
        self.routing = routing
        self.index = index  # this wrapper's place in each tuple of routing.table
        self.in_features, self.out_features = base.in_features, base.out_features
        self.lora_A: nn.Parameter | None = None  # only while training
        self.lora_B: nn.Parameter | None = None
        self.train_scale = 1.0
        self.train_dropout = 0.0

    @property
    def adapters(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """wrapper key -> (A, B*scale) of every placed adapter that targets this module (a snapshot)."""
        i = self.index
        return {k: pairs[i] for k, pairs in list(self.routing.table.items()) if pairs[i] is not None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, seq, in)
        y = self.base(x)
        route = self.routing._route.get()
        if route is None:
            route = self.routing.current()
        pairs = route.pairs
        if pairs is not None:  # the common case: one adapter for every row
            pair = pairs[self.index]
            return y if pair is None else add_lora(y, x, *pair)  # (None: this adapter skips this module)
        if route.groups is not None or route.spans is not None:
            return self.mixed(x, y, route)
        if route.key == TRAIN and self.lora_A is not None:
            h = F.dropout(x, self.train_dropout, self.training) if self.train_dropout else x
            # add with alpha: the scale without a separate multiply (and its backward) per module
            return torch.add(y, F.linear(F.linear(h.to(self.lora_A.dtype), self.lora_A), self.lora_B).to(y.dtype),
                             alpha=self.train_scale)
        return y

    def mixed(self, x: torch.Tensor, y: torch.Tensor, route: Route) -> torch.Tensor:
        """A mixed batch: add_lora on each adapter's contiguous tokens, x and y flattened to tokens."""
        n = x.numel() // x.shape[-1]
        if route.spans is not None:
            spans = route.spans[n]
        else:  # row groups; a row is x.shape[-2] tokens (in the last layer's MLP: its read tokens only)
            w = n // x.shape[0]
            spans = [(pairs, a * w, b * w) for pairs, a, b in route.groups]
        grad = torch.is_grad_enabled()
        y = y.clone() if grad else y.contiguous()  # (with autograd, the base's output may be needed as it is)
        if n <= STACK_TOKENS and len(spans) > 1:
            return self.add_stacked(x, y, route, spans, n)
        xs, ys = x.reshape(n, -1), y.view(n, -1)
        for pairs, a, b in spans:
            pair = pairs[self.index]
            if pair is None:
                continue
            if grad:
                ys[a:b] = add_lora(ys[a:b], xs[a:b], *pair)
            else:
                add_lora(ys[a:b], xs[a:b], *pair)  # in place, into y
        return y

    def add_stacked(self, x: torch.Tensor, y: torch.Tensor, route: Route, spans: list, n: int) -> torch.Tensor:
        """y += ((x A^T) * mask) B^T with every adapter's A and B stacked, each token keeping its own
        adapter's columns only: two matmuls and a multiply whatever the number of adapters, against two
        per adapter by segments. It does (adapters - 1) x more LoRA flops, so it pays on short batches
        only (STACK_TOKENS; benchmarks/mixed_batch). A token's other columns are exact zeros."""
        stack = self.routing.stacked(route, spans, self.index)
        if stack is None:
            return y
        A, B, ranks = stack
        xs = x.reshape(n, -1)
        h = F.linear(xs if xs.dtype == A.dtype else xs.to(A.dtype), A).mul_(route.mask(n, spans, ranks, A))
        y.view(n, -1).add_(F.linear(h, B))
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
                wrapper = LoraLinear(child, routing, len(wrapped))
                setattr(module, child_name, wrapper)
                wrapped[f"{path}.{child_name}" if path else child_name] = wrapper
    routing.size = len(wrapped)
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


def group_pairs(tensors: dict[str, torch.Tensor], where: str | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """PEFT tensors -> {module path: {"A": A, "B": B}}. With `where` (the adapter's name for the
    message), a tensor that is not a LoRA A/B weight is an error; without, it is skipped."""
    from .errors import IncompatibleAdapterError
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        parsed = split_peft_key(name)
        if parsed is None:
            if where is not None:
                raise IncompatibleAdapterError(f"{where}: tensor {name!r} is not a LoRA A/B weight; adapterhub serves "
                                               "plain LoRA (no bias, no modules_to_save)")
            continue
        out.setdefault(parsed[0], {})[parsed[1]] = t
    return out


def adapter_config(r: int, alpha: float, targets, base_spec: str, dropout: float = 0.0) -> dict:
    """The adapter_config.json PEFT, vLLM and LoRAX read: one literal for trained, merged and
    composed adapters."""
    from .model_ids import hub_model_id
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": hub_model_id(base_spec),
            "r": r, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": sorted(targets),
            "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "use_rslora": False, "use_dora": False,
            "init_lora_weights": True}


def scale_of(config: dict) -> float:
    """The factor on B @ A that an adapter_config.json implies: alpha / r (alpha / sqrt(r) with rsLoRA)."""
    r, alpha = config["r"], config.get("lora_alpha", config.get("alpha"))
    return alpha / (r ** 0.5 if config.get("use_rslora") else r)


def check_same_base(card: dict, base, what: str) -> None:
    """An adapter's card names the base fingerprint it was trained on; refuse it over another base."""
    from .errors import IncompatibleAdapterError
    want = (card.get("base") or {}).get("fingerprint")
    if want and want != base.fingerprint:
        spec = (card.get("base") or {}).get("spec")
        raise IncompatibleAdapterError(f"{what} was trained on base {spec!r} (fingerprint {want}), but this hub runs "
                                       f"{base.spec!r} (fingerprint {base.fingerprint}); use Hub(base={spec!r})")
