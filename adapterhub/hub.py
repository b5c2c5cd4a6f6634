"""One base, many adapters: load, use, score, recommend (train, merge and export live beside it).

    hub = Hub(base="smollm2-135m", registry="adapters", quant="nf4")
    news = hub.load("news")
    news.recommend(history=[...], candidates=[...], k=10)
    hub.score([("news", prompt1), ("music", prompt2)])   # mixed batch, one forward

Thread-safe: each call's adapter choice belongs to that call (lora.Routing), and a load, unload or
eviction in another thread never changes the weights of a forward already running. Calls from
several threads run side by side; adapterhub.batcher gathers them into mixed batches.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import torch

from .base import DEFAULT_BASE, Base, load_base
from .errors import AdapterHubError, ConfigError, DataError
from . import checks, compose, packing
from .lora import BASE, TRAIN, TRAINING, Route, wrap_model
from .prompts import ANSWERS, register_card_templates
from .registry import Registry, parse_ref
from .single_flight import SingleFlight
from .trainable import TrainablePairs, trainable  # noqa: F401 (TrainablePairs: its old home)

log = logging.getLogger(__name__)

# Set by adapterhub.batcher.Batcher around a caller's hub.score / hub.recommend: their forwards are
# then handed to the batcher's worker, which runs them in one mixed batch with other threads' calls.
BATCHER: contextvars.ContextVar = contextvars.ContextVar("adapterhub_batcher", default=None)


@dataclass
class Adapter:
    """A resident adapter: what `Hub.load` returns."""
    hub: "Hub"
    key: str                 # 'name@vN'
    card: dict
    weight_bytes: int
    modules: list[str] = field(default_factory=list)
    pairs: tuple = field(default=(), repr=False)  # what it placed in routing.table (see adapterhub.lora)

    @property
    def name(self) -> str:  # a composition's name is its whole key
        return self.key if compose.is_composition(self.key) else self.key.split("@")[0]

    @property
    def version(self) -> str | None:  # None for a composition
        return None if compose.is_composition(self.key) else self.key.split("@")[1]

    @property
    def scenario(self) -> str:
        return self.card.get("scenario", self.name)

    def score(self, prompts: list[str]) -> list[float]:
        return self.hub.score([(self.key, p) for p in prompts])

    def recommend(self, history: list, candidates: list, k: int = 10, disliked: list = (), raw: bool = False,
                  scenario: str | None = None, catalog=None) -> list[tuple[str, float]]:
        return self.hub.recommend(self.key, history, candidates, k=k, disliked=disliked, scenario=scenario, raw=raw,
                                  catalog=catalog)


def _inverse(order: list[int]) -> list[int]:
    """The permutation that undoes `order`: x[order][_inverse(order)] == x."""
    return sorted(range(len(order)), key=order.__getitem__)  # where each row went = argsort(order)


class Hub:
    def __init__(self, base: str | Base = DEFAULT_BASE, registry: str | Registry = "adapters",
                 quant: str = "nf4", device: str = "auto", max_resident: int = 64, batch_size: int = 16,
                 compute: str = "auto", catalog=None):
        """catalog: item facts (popularity, category, like-rate) from your own catalog, used by every
        recommend call that does not pass its own (adapterhub.catalog); None: each version's own facts.
        compute: how a quantized base runs (base.COMPUTES): 'auto' dequantizes NF4/int8 once to bf16
        on CPUs with bf16 matmul (fp32 on others) and keeps the bitsandbytes kernels on CUDA;
        'native' forces the kernels, 'bf16'/'fp32' force a dequantized copy. Ignored for a Base object."""
        if max_resident < 1:
            raise ConfigError(f"max_resident={max_resident} must be >= 1")
        self.base = base if isinstance(base, Base) else load_base(base, quant=quant, device=device, compute=compute)
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.model = self.base.model
        self.tokenizer = self.base.tokenizer
        self.device = self.base.device
        self.max_resident = max_resident
        self.batch_size = batch_size
        self.catalog = catalog
        # Hubs built over one Base share its wrappers: the base is never copied. Weights placed in the
        # shared wrappers are keyed by registry folder + version, so two hubs whose registries both
        # hold 'news@v1' never overwrite each other's weights.
        if not hasattr(self.model, "_adapterhub_lora"):
            self.model._adapterhub_lora = wrap_model(self.model)
            packing.use_packed_attention(self.model)
        self.routing, self.wrapped = self.model._adapterhub_lora
        self.decoder = self.model.get_decoder()
        self.max_model_len = checks.max_positions(self.model)  # prompt tokens the base has positions for
        self._resident: OrderedDict[str, Adapter] = OrderedDict()  # least recently used first
        self._alias: dict[str, str] = {}                            # 'news' -> 'news@v2'
        self._slot = f"{Path(self.registry.root).resolve()}::"       # wrapper-key prefix of this hub
        self._lock = threading.RLock()  # guards _resident and _alias; never held during a forward or a disk read
        self._loads = SingleFlight()     # cold loads in progress, by key
        yes, no = (self.tokenizer.encode(a, add_special_tokens=False)[0] for a in ANSWERS)
        if yes == no:
            raise AdapterHubError("the tokenizer gives ' Yes' and ' No' the same first token; cannot score")
        head = self.model.get_output_embeddings().weight.detach()
        # P(yes) = softmax over the two answer logits = sigmoid(h . (w_yes - w_no)).
        self._answer_dir = (head[yes].float() - head[no].float()).to(self.device)
        self.answer_ids = (yes, no)

    @property
    def fingerprint(self) -> str:
        return self.base.fingerprint

    # ------------------------------------------------------------ registry
    def list(self) -> list[dict]:
        return self.registry.list()

    def resident(self) -> list[str]:
        with self._lock:
            return list(self._resident)

    def resident_adapter(self, key: str) -> Adapter | None:
        """The adapter resident under `key`, else None; never reads the disk (a server's event loop)."""
        return self._resident.get(key)  # one dict read, atomic under the GIL (as _pairs): no lock to wait for

    def _key(self, ref: str, disk: bool = True) -> str | None:
        """'news' -> the resident key ('news@v2'); loads the adapter when it is not resident (disk=False: None).

        A plain name stays pinned to the version it was loaded at (no disk read per call); a version
        promoted later is picked up by hub.load(name, reload=True), or on eviction."""
        with self._lock:
            key = self._alias.get(ref, ref)
            if key in self._resident:
                self._resident.move_to_end(key)
                return key
        return self.load(ref).key if disk else None

    def _ref(self, ref: str | None) -> str | None:
        """A row's adapter ref -> its resident key; None or 'base' = the bare base, as in the CLI
        (lora.TRAIN, the pair being trained, passes as it is)."""
        if ref is None or ref == "base" or ref == TRAIN:
            return None if ref != TRAIN else TRAIN
        return self._key(ref)

    def _wkey(self, key: str | None) -> str | None:
        """The key this hub's weights carry inside the (possibly shared) wrappers."""
        return key if key is None or key == TRAIN else self._slot + key

    def load(self, ref: str, reload: bool = False) -> Adapter:
        """Make an adapter resident (cold: read + check + place; warm: nothing) and return it.

        reload=True re-resolves a plain name against the registry: a version promoted since the name
        was loaded replaces the one resident under it (calls already running finish on the weights they
        started with; the replaced version is unloaded).

        ref may be a composition, 'news+music' or '0.5*news+0.5*music@v1' (adapterhub.compose): the
        weighted sum of the parents' deltas, resident under a key naming each parent's version."""
        if compose.is_composition(ref):
            name, version = ref, None
            key = (None if reload else self._alias.get(ref)) or compose.canonical(self.registry, ref)
        else:
            name, version = parse_ref(ref)
            key = None if reload and version is None else self._alias.get(ref)
            key = key or f"{name}@{version or self.registry.resolve(name).name}"
        with self._lock:
            adapter = self._resident.get(key)
            if adapter is not None:
                self._resident.move_to_end(key)
                if version is None:
                    self._point(name, key)
                return adapter
        def read_and_place():  # outside the lock: other threads keep scoring, loading and unloading
            return self._place(key, *(compose.build(self.registry, key) if compose.is_composition(key)
                                      else self.registry.load(key)))
        adapter = self._loads.run(key, read_and_place)  # one read for every call that wants it meanwhile
        if version is None:
            with self._lock:
                self._point(name, key)
        return adapter

    @contextlib.contextmanager
    def staged(self, key: str, config: dict, tensors: dict, card: dict):
        """An adapter that is not in the registry (a merge being measured before it is published),
        resident under `key` for the body of the `with` and unloaded on exit. Yields the Adapter."""
        if key in self._resident or key in self.registry.names():
            raise ConfigError(f"cannot stage {key!r}: that name is taken")
        adapter = self._place(key, config, {k: v.clone() for k, v in tensors.items()}, card, "(staged)")
        try:
            yield adapter
        finally:
            self.unload(key)

    def _place(self, key: str, config, tensors, card, folder) -> Adapter:
        """Check and cast an adapter's tensors and make them resident under `key` (evicting the least
        recently used adapter past max_resident)."""
        placed = checks.check_and_cast(self, key, config, tensors, card, folder)
        register_card_templates(card, key.split("@")[0])
        pairs = [None] * self.routing.size
        for path, pair in placed.items():
            pairs[self.wrapped[path].index] = pair
        with self._lock:
            adapter = self._resident.get(key)
            if adapter is None:  # (else another thread placed it meanwhile)
                while len(self._resident) >= self.max_resident:
                    self.unload(next(iter(self._resident)))
                adapter = Adapter(self, key, card, sum(a.numel() * a.element_size() + b.numel() * b.element_size()
                                                       for a, b in placed.values()), list(placed), tuple(pairs))
                self.routing.table[self._wkey(key)] = adapter.pairs  # one dict write: all modules at once
                self._resident[key] = adapter
                self._alias[key] = key
            else:
                self._resident.move_to_end(key)
        return adapter

    def _point(self, name: str, key: str) -> None:
        """The plain name now means `key`; a different version it meant before is unloaded."""
        old = self._alias.get(name)
        self._alias[name] = key
        if old is not None and old != key:
            self.unload(old)

    def unload(self, ref: str) -> list[str]:
        """Unload what `ref` has resident: 'news@v1' that version; 'news' every resident version of
        news (however it was loaded). -> the keys unloaded; [] (and a warning) when none was."""
        with self._lock:
            if ref in self._resident or "@" in ref or compose.is_composition(ref):
                keys = [self._alias.get(ref, ref)]
            else:
                keys = [k for k in self._resident if k.split("@")[0] == ref]
            keys = [k for k in keys if k in self._resident]
            if not keys:
                log.warning("unload(%r): not resident (resident: %s)", ref, ", ".join(self._resident) or "none")
            for key in keys:
                del self._resident[key]
                # forwards already running hold the tuple itself and finish on it
                self.routing.table.pop(self._wkey(key), None)
                for alias in [a for a, k in self._alias.items() if k == key]:
                    del self._alias[alias]
        return keys

    # ------------------------------------------------------------ running
    @contextlib.contextmanager
    def use(self, ref: str | None):
        """`with hub.use("news") as model:` the torch model with that adapter active (None = base), in
        this thread (or asyncio task) only. The adapter's weights are fixed when the `with` starts."""
        with self.routing.routed(self._single(self._ref(ref))):
            yield self.model

    def encode(self, text: str, special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=special)

    @torch.inference_mode()
    def score(self, rows, batch_size: int | None = None) -> list[float]:
        """P(yes) per row. rows: [(adapter ref or None for the base, prompt), ...]; one forward per
        batch even when the rows name different adapters. A prompt that is not text, has no tokens or
        is longer than the base's positions is a DataError naming its row (adapterhub.checks)."""
        rows = list(rows)
        ids = checks.encode_rows(self, rows)
        return self._score_rows([self._ref(ref) for ref, _ in rows], ids, batch_size)

    def _score_rows(self, keys: list[str | None], ids: list[list[int]], batch_size: int | None = None) -> list[float]:
        """P(yes) per tokenized prompt. A prompt is a packed group of its own (no shared prefix, one
        suffix), so it runs through the one forward, packed_logits, as ranking and training do."""
        batcher = BATCHER.get()
        if batcher is not None and batcher.hub is self:
            return batcher.rows(keys, ids)
        bs = batch_size or self.batch_size
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths pad less
        out = [0.0] * len(ids)
        for start in range(0, len(order), bs):
            chunk = order[start:start + bs]
            logits = self.packed_logits([keys[i] for i in chunk], [([], [ids[i]]) for i in chunk])
            for i, p in zip(chunk, torch.sigmoid(logits).tolist()):
                out[i] = p
        return out

    def yes_logit(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.float() @ self._answer_dir

    def _single(self, key: str | None) -> Route:
        """The route for one resident key (None = base, TRAIN = the pair being trained) on every row."""
        if key is None:
            return BASE
        if key == TRAIN:
            return TRAINING
        return Route(self._wkey(key), self._pairs(key))

    def _pairs(self, key: str) -> tuple:
        """A resident key's weights (routing.table's tuple); reloads it when another thread evicted or
        unloaded it since the caller resolved its reference."""
        adapter = self._resident.get(key)
        return (adapter if adapter is not None else self.load(key)).pairs

    def _route(self, keys) -> tuple[Route, list[int] | None]:
        """keys: one key for every row, or one per row -> (the forward's route, the row order it needs).

        A mixed batch's rows are ordered so that each adapter's rows form one contiguous slice, whose
        LoRA term each module adds on that slice alone (adapterhub.lora; benchmarks/mixed_batch/)."""
        if keys is None or isinstance(keys, str):
            return self._single(keys), None
        first = keys[0]
        if all(k == first for k in keys):  # the common case: one adapter for the whole batch
            return self._single(first), None
        rows: dict[str | None, list[int]] = {}
        for i, k in enumerate(keys):
            rows.setdefault(k, []).append(i)
        order, groups = [], []
        for k, idx in rows.items():
            if k is not None:
                groups.append((self._pairs(k), len(order), len(order) + len(idx)))
            order += idx
        return Route(groups=groups, full=None not in rows), order

    # ------------------------------------------------------------ ranking
    @torch.inference_mode()  # no autograd bookkeeping at all: ~2.5% on a 20-candidate ranking
    def score_candidates(self, ref: str | None, prefix: str, suffixes: list[str], batch_size: int | None = None,
                         reuse_prefix: bool = True) -> list[float]:
        """P(yes) of prefix+suffix for each suffix. The shared prefix runs once per packed row of up
        to batch_size candidates (reuse_prefix=False: each full prompt on its own, for comparison)."""
        key = self._ref(ref)
        prefix_ids = checks.encode_row(self, prefix, "prefix")
        suffix_ids = [checks.encode_row(self, s, f"suffix {i}", False, len(prefix_ids)) for i, s in enumerate(suffixes)]
        if not reuse_prefix:
            return self._score_rows([key] * len(suffix_ids), [prefix_ids + s for s in suffix_ids], batch_size)
        bs = batch_size or self.batch_size
        chunks = [(prefix_ids, suffix_ids[i:i + bs]) for i in range(0, len(suffix_ids), bs)]
        return torch.sigmoid(self.packed_logits(key, chunks)).tolist()

    def packed_logits(self, key, groups: list[tuple[list[int], list[list[int]]]]) -> torch.Tensor:
        """Yes-No logit of every (prefix + suffix) in `groups` = [(prefix ids, [suffix ids, ...]), ...],
        each prefix run once (adapterhub.packing) -> (candidates,), groups in order. The one forward
        that ranking, evaluation and training share; differentiable when grad is enabled.
        key: one resident key for every group, or one per group (a mixed batch)."""
        if any(not s for _, suffixes in groups for s in suffixes):  # it would read its neighbour's last token
            raise DataError("a candidate suffix has no tokens: every candidate needs at least one token of its own")
        batcher = BATCHER.get()
        if batcher is not None and batcher.hub is self and not torch.is_grad_enabled():
            return batcher.packed(key, groups)
        route, order = self._route(key)
        packed = packing.pack(groups if order is None else [groups[i] for i in order], self.device, one_row=True,
                              exact=not torch.is_grad_enabled())   # scores that do not depend on the batch
        if order is not None:  # a mixed batch: the one-adapter layout, each adapter's groups one span of tokens
            route = route.in_one_row(packed.widths, packed.sizes, packed.input_ids.shape[1])
        with self.routing.routed(route):
            logits = self.yes_logit(packing.last_hidden(self.decoder, packed))
        if order is None:
            return logits
        starts = list(accumulate([0] + packed.sizes))  # put each group's candidates back in place
        back = [starts[p] + j for p in _inverse(order) for j in range(packed.sizes[p])]
        return logits[torch.tensor(back, device=logits.device)]

    def recommend(self, ref: str, history: list, candidates: list, k: int = 10, disliked: list = (),
                  scenario: str | None = None, raw: bool = False, catalog=None) -> list[tuple[str, float]]:
        """Rank candidates for a user whose history (oldest first) is given; items by title or, for a
        version trained with facts, by dataset id. Ranks by the version's fused score (its Yes-No
        logit blended with the rules' features, adapterhub.recommend) when it has one; raw=True
        ranks by the adapter's P(yes) alone. catalog: item facts from your own catalog (adapterhub.catalog)
        instead of the hub's or the version's own. scenario: one of a joint adapter's scenarios (required
        there); a one-scenario adapter takes only its own. Else a ConfigError (adapterhub.recommend.plan)."""
        from . import ranking
        if not candidates:
            return []
        return ranking.run(self, ranking.plan(self, ref, history, candidates, disliked, scenario, catalog), k, raw)

    # ------------------------------------------------------------ training, merging, export
    def trainable(self, r: int, alpha: float, dropout: float, targets, init: dict | None = None):
        """`with hub.trainable(...) as pairs:` one trainable LoRA pair per target module (routing key
        lora.TRAIN), removed on exit whatever happens. Yields a TrainablePairs (adapterhub.trainable)."""
        return trainable(self, r, alpha, dropout, targets, init)

    def train(self, name: str, data, config=None, **kwargs):
        """Train a LoRA adapter for `data` on this base; publish it as `name`. -> (Adapter, card)."""
        from .train import train_adapter
        return train_adapter(self, name, data, config, **kwargs)

    def merge(self, weights, method: str | None = None, name: str | None = None, **kwargs) -> Adapter:
        """Merge adapters ({ref: weight}, or a list of refs) into a new published adapter and load it.
        Without a method, the measured default recipe. See adapterhub.merge for methods and `measure`."""
        from .merge import merge
        return self.load(merge(self, weights, method, name, **kwargs))

    def export(self, ref: str, out_dir, merge_into_base: bool = True, dtype: str = "bf16", overwrite: bool = False):
        """A standalone model folder (merged) or the PEFT folder vLLM/LoRAX load. See adapterhub.export."""
        from .export import export
        return export(self, ref, out_dir, merge_into_base, dtype, overwrite)

    def score_file(self, src, dst, adapter: str | None = None, **kwargs) -> dict:
        """Rank every row of a JSONL/CSV/Parquet file of (user, history, candidates) into `dst`,
        streaming and resumable. See adapterhub.batch.score_file."""
        from .batch import score_file
        return score_file(self, src, dst, adapter=adapter, **kwargs)
