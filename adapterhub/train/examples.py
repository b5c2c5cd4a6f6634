"""Training's inputs: pick a run's examples, group them (a history prefix and its candidates),
draw negatives, encode prompts once, and fit the rules' prior. One scenario's share is a Part."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .. import facts as facts_mod
from ..config import TrainConfig
from ..datasets.common import Example
from ..errors import ConfigError, DataError
from ..protocols import RANKING_TASKS, mix as protocol_mix, with_catalog
from ..scoring import cap_examples, encode_examples, primary_metric


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
    """Negatives for a step. Top-ups of groups that share no prefix: train items the user never
    interacted with. With a negative_mix (TrainConfig.negative_shares), each negative a step sees is
    then swapped, with the catalog's and popular's shares, for one drawn under that candidate
    protocol (adapterhub.protocols) from the train split's view of the data."""

    def __init__(self, train: list[Example], data=None, shares: dict[str, float] | None = None):
        seen: dict[str, set] = {}
        for ex in train:
            seen.setdefault(ex.user, set()).update(ex.history, ex.disliked, (ex.candidate,))
        self.seen = seen
        self.pool = sorted(set().union(*seen.values())) if seen else []
        self.swaps = [(p, w) for p, w in (shares or {}).items() if p != "sampled"]
        self.drawers = {}
        if self.swaps:
            from ..protocols import Drawer
            view = train_only(data, train)   # popularity and the users' items from train only
            self.drawers = {p: Drawer(view, p) for p, _ in self.swaps}

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

    def swap(self, candidates: list[Example], rng: random.Random) -> list[Example]:
        """Each negative kept, or with a protocol's share swapped for a draw under it."""
        if not self.swaps:
            return candidates
        taken = {ex.candidate for ex in candidates}
        out = []
        for ex in candidates:
            u, protocol = rng.random(), None
            for name, share in self.swaps:
                if u < share:
                    protocol = name
                    break
                u -= share
            if ex.label or protocol is None:
                out.append(ex)
                continue
            drawn = self.drawers[protocol].draw(ex.user, taken, 1, f"{ex.user}:{rng.random()}", 0)
            if drawn:
                taken.add(drawn[0])
                out.append(Example(ex.user, ex.history, drawn[0], 0, ex.disliked, ex.group))
            else:
                out.append(ex)
        return out


def visit(group: list[Example], cfg: TrainConfig, sampler: NegativeSampler, rng: random.Random) -> list[Example]:
    """The candidates one step sees of a group: at most group_size, a positive first when there is
    one. A group with a positive but fewer than group_size candidates (a pointwise row, a train
    pair) is topped up with sampled negatives: at most `negatives` per positive. Then the sampler's
    negative_mix swaps some negatives for draws under other candidate protocols."""
    pos = [ex for ex in group if ex.label]
    if len(group) > cfg.group_size:
        first = [rng.choice(pos)] if pos else []
        rest = [ex for ex in group if not (first and ex is first[0])]
        return sampler.swap(first + rng.sample(rest, cfg.group_size - len(first)), rng)
    room = min(cfg.group_size - len(group), cfg.negatives * len(pos))
    return sampler.swap(list(group) + (sampler.sample(pos[0], room, rng) if room > 0 else []), rng)


class Encoder:
    """Token ids of train prefixes and candidate suffixes, each text encoded once. own_out
    (facts.OwnLabelOut): show each candidate without its example's own label in the facts."""

    def __init__(self, hub, data, facts: dict | None, own_out: facts_mod.OwnLabelOut | None = None):
        self.hub, self.data, self.facts, self.own_out, self.cache = hub, data, facts, own_out, {}

    def __call__(self, group: list[Example]) -> tuple[list[int], list[list[int]]]:
        from .. import prompts
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
    base_valid: list[float] | None = field(default=None)  # the bare base's valid P(yes) (the start-up summary's)

    def prior_logits(self, examples, train: bool) -> list[float]:
        """cfg.rule_prior x the rules' blend logit of each candidate (0 without a prior): what the
        loss adds to the adapter's logit, so the adapter learns what the rules miss. train: the
        examples are from the train split (their own interactions are left out of the facts)."""
        if self.prior is None:
            return [0.0] * len(examples)
        from ..fused import apply
        rows = [prior_features(self.facts, self.data.scenario, ex, self.own_out if train else None)
                for ex in examples]
        return [self.cfg.rule_prior * z for z in apply(self.prior, rows)]


def prepare(hub, data, cfg: TrainConfig, rng: random.Random) -> Part:
    """Steps 1-2 for one scenario: examples, facts (train split only), groups, encoders."""
    if data.extra.get("templates"):  # a custom scenario's own prompt sentences (meta.json)
        from ..prompts import register_templates
        register_templates(data.scenario, **data.extra["templates"])
    train, valid, test = pick_examples(data, cfg, rng)
    facts = facts_mod.compute(train_only(data, train)) if cfg.facts else None   # before with_catalog: see facts
    own = cfg.for_scenario(data.scenario)
    shares, protocols = own.negative_shares(), own.valid_protocol_list()
    if data.task in RANKING_TASKS and (set(shares) | set(protocols)) - {"sampled"}:
        data = with_catalog(data)   # draws may come from the whole item file: render them, score the rules on them
        valid = protocol_mix(data, valid, protocols, cfg.seed)
    elif set(shares) | set(protocols) != {"sampled"}:
        raise ConfigError(f"negative_mix / valid_protocols redraw ranking groups' negatives; scenario "
                          f"'{data.scenario}' is {data.task}: leave them at 'sampled'")
    own_out = (facts_mod.OwnLabelOut(facts, train, data.extra.get("like_count"))
               if facts is not None and cfg.own_label_out else None)
    part = Part(data, train, valid, test, facts, build_groups(train), NegativeSampler(train, data, shares),
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
    from ..fused import fit
    rng = random.Random(f"{part.cfg.seed}:prior")
    rows = [ex for g in part.groups for ex in visit(g, part.cfg, part.sampler, rng)]
    X = [prior_features(part.facts, part.data.scenario, ex, part.own_out) for ex in rows]
    return {**fit(X, [ex.label for ex in rows], names=list(facts_mod.feature_names(part.data.scenario))), "fit_on": "train",
            "rows": len(rows), "weight": part.cfg.rule_prior}


def train_only(data, train: list[Example]):
    """data with its train split as actually used (n_train may sample it): facts see nothing else."""
    from dataclasses import replace
    return replace(data, splits={"train": train})


def facts_file(scenario: str, joint: bool) -> str:
    """facts.json, or one facts.<scenario>.json per scenario of a jointly trained adapter."""
    return f"facts.{scenario}.json" if joint else facts_mod.FACTS_FILE
