"""Flat, frozen configs. Field help doubles as CLI help; unknown keys get a 'did you mean'."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ConfigError, did_you_mean

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
NEGATIVE_PROTOCOLS = ("sampled", "catalog", "popular")   # adapterhub.protocols ('new' selects groups, not negatives)


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    r: int = _f(8, "LoRA rank: A is (r, d_in), B is (d_out, r)")
    alpha: float = _f(16.0, "LoRA scale numerator: the update is scaled by alpha / r")
    targets: tuple[str, ...] = _f(DEFAULT_TARGETS, "module names that get a LoRA pair")
    dropout: float = _f(0.0, "dropout on the LoRA input while training. Off by default: on CPU its random masks "
                                "took 13% of a step (2 per module with checkpointing) and the runs are short")
    lr: float = _f(1e-3, "AdamW learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    batch_size: int = _f(8, "candidates per step (per process): whole groups are taken until a step holds this many")
    group_size: int = _f(8, "candidates per group in a step, all sharing one history prefix that runs once: "
                            "a ranking group or impression is sampled down to this (its positive kept)")
    negatives: int = _f(7, "a group with a positive but fewer than group_size candidates (a pointwise row, a "
                           "train pair) is topped up with negatives sampled from the train items the user never "
                           "interacted with: at most this many per positive; 0 = none")
    listwise_weight: float = _f(0.5, "loss = w * softmax cross-entropy over each group's candidates + (1 - w) * "
                                     "pointwise BCE (keeps P(yes) calibrated); 0 = BCE only")
    rule_prior: float = _f(0.0, "train the adapter as a residual over the no-learning rules: each candidate's "
                                "logit in the loss gets this multiple of a fixed logistic blend of the rules' "
                                "features (the fused score's features, fit on the train split) added. 1 = the "
                                "adapter learns only what the rules miss; 0 = off. Needs facts")
    per_scenario: str | None = _f(None, "a joint run's own negatives, listwise_weight, rule_prior or teacher for "
                                        "some scenarios, e.g. 'video:negatives=0,listwise_weight=0' (pointwise "
                                        "like/dislike labels) or 'video:teacher=video;news:teacher=news' (each "
                                        "scenario distilled from its own adapter); ';' between scenarios")
    scenario_mix: str = _f("groups", "a joint run's batches: 'groups' draws every group equally often, so a "
                                     "scenario in proportion to its groups (video's one-row groups got 4% of "
                                     "joint4@v3's candidates); 'candidates' gives each scenario an equal share of "
                                     "the candidates trained on")
    select: str = _f("mean", "a joint run's choice of check and of version (promotion): 'mean' of the scenarios' "
                             "primary valid metrics, or 'worst_kept': the smallest share of its own adapter's "
                             "gain over the base that any scenario keeps on valid (needs teacher= for every "
                             "scenario in per_scenario; the teachers and the base are scored once first)")
    grad_checkpointing: bool = _f(True, "recompute activations in the backward pass (see checkpoint_tokens): "
                                        "bounds a step's memory")
    checkpoint_tokens: int = _f(192, "with grad_checkpointing, keep at most this many tokens' worth of every "
                                     "layer's activations: a step of t packed tokens keeps layers * this / t "
                                     "layers' and recomputes the rest in backward (0 = recompute all: least memory, "
                                     "~1.4x slower). With rss_headroom_gb, 192 keeps a batch-8 SmolLM2 step under "
                                     "1.5 GB peak RSS on music, news and video")
    rss_headroom_gb: float | None = _f(0.6, "whenever the process's RSS is more than this above its size when "
                                            "training started, hand freed heap pages back to the OS at the next "
                                            "decoder layer (glibc keeps them: without this, a 960-token video step "
                                            "peaked at 1.8 GB, with it 1.46); none = never")
    max_minutes: float | None = _f(None, "stop training after this many minutes (evaluation time excluded)")
    grad_accum: int = _f(1, "steps whose gradients are summed before one optimizer update")
    max_steps: int | None = _f(None, "optimizer updates; default: --epochs over the train split")
    epochs: float = _f(1.0, "passes over the train split when max_steps is not given")
    warmup_steps: int = _f(10, "linear learning-rate warm-up")
    eval_every: int = _f(50, "optimizer updates between validation AUC checks")
    patience: int = _f(3, "stop after this many checks without a better validation metric")
    seed: int = _f(0, "seed for data order, LoRA init and dropout")
    n_train: int | None = _f(None, "use at most this many training examples (seeded sample)")
    n_valid: int | None = _f(2000, "validation examples (whole groups): picks the best step and fits the fused score")
    n_test: int | None = _f(6000, "test examples for the card's metrics (whole groups); only reported")
    facts: bool = _f(True, "render scenario facts (popularity, like-rate, category/tags; from the train split "
                           "only, stored with the version) in prompts, and fit the fused score on valid")
    own_label_out: bool = _f(True, "train prompts (and the rule prior) show a train positive's item without "
                                   "that example's own click in its popularity, and a video movie without "
                                   "the row's own rating in its like-rate, as a test user's item would "
                                   "be shown (adapterhub.facts.OwnLabelOut); off = the facts as stored")
    max_grad_norm: float = _f(1.0, "gradient clipping")
    init_from: str | None = _f(None, "warm start from this adapter (same base and targets)")
    teacher: str | None = _f(None, "distil from this adapter's P(yes) (per scenario in a joint run: per_scenario)")
    distill_weight: float = _f(0.5, "weight of the teacher's soft labels vs the hard labels")
    domain_steps: int = _f(0, "causal-LM steps on item text before task tuning")
    negative_mix: str = _f("sampled", "where a step's negatives come from, as PROTOCOL=SHARE,...: each negative a "
                           "step sees stays the loader's (sampled) or, with catalog's and popular's shares, is swapped "
                           "for one drawn under that candidate protocol: catalog = uniform over the whole item file, "
                           "popular = by train popularity (docs/DATA.md). e.g. sampled=0.5,catalog=0.25,popular=0.25")
    valid_protocols: str = _f("sampled", "candidate protocols the valid groups are drawn under (comma list of sampled, "
                              "catalog, popular); the check is chosen and the fused score fit on their groups pooled")

    def __post_init__(self):
        problems = []
        if not 1 <= self.r <= 256:
            problems.append(f"r={self.r} must be between 1 and 256")
        if self.alpha <= 0:
            problems.append(f"alpha={self.alpha} must be > 0")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout={self.dropout} must be in [0, 1)")
        if self.lr <= 0:
            problems.append(f"lr={self.lr} must be > 0")
        for name in ("batch_size", "grad_accum", "eval_every", "group_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps={self.max_steps} must be >= 1")
        if not self.targets:
            problems.append("targets must name at least one module, e.g. q_proj,v_proj")
        if self.checkpoint_tokens < 0:
            problems.append(f"checkpoint_tokens={self.checkpoint_tokens} must be >= 0")
        if self.rss_headroom_gb is not None and self.rss_headroom_gb < 0:
            problems.append(f"rss_headroom_gb={self.rss_headroom_gb} must be >= 0 (or none)")
        if self.negatives < 0:
            problems.append(f"negatives={self.negatives} must be >= 0")
        if not 0 <= self.listwise_weight <= 1:
            problems.append(f"listwise_weight={self.listwise_weight} must be in [0, 1]")
        if not 0 <= self.rule_prior <= 1:
            problems.append(f"rule_prior={self.rule_prior} must be in [0, 1]")
        if self.rule_prior and not self.facts:
            problems.append("rule_prior needs facts on (the rules' features come from them)")
        if self.max_minutes is not None and self.max_minutes <= 0:
            problems.append(f"max_minutes={self.max_minutes} must be > 0")
        if self.scenario_mix not in ("groups", "candidates"):
            problems.append(f"scenario_mix={self.scenario_mix!r} must be 'groups' or 'candidates'")
        if self.select not in ("mean", "worst_kept"):
            problems.append(f"select={self.select!r} must be 'mean' or 'worst_kept'")
        if not 0 <= self.distill_weight <= 1:
            problems.append(f"distill_weight={self.distill_weight} must be in [0, 1]")
        try:
            self.negative_shares()
            self.valid_protocol_list()
        except ConfigError as e:
            problems.append(str(e))
        if problems:
            raise ConfigError("bad training config: " + "; ".join(problems))
        self.scenario_options()  # a malformed per_scenario fails here, before any data is loaded

    PER_SCENARIO_KEYS = {"negatives": int, "listwise_weight": float, "rule_prior": float,  # the options that act per group
                         "teacher": str}

    def scenario_options(self) -> dict[str, dict]:
        """per_scenario parsed: {scenario: {option: value}}."""
        out: dict[str, dict] = {}
        for entry in (self.per_scenario or "").split(";"):
            if not entry.strip():
                continue
            scenario, sep, options = entry.partition(":")
            if not sep or not scenario.strip():
                raise ConfigError(f"per_scenario entry {entry.strip()!r}: write SCENARIO:OPTION=VALUE[,OPTION=VALUE], "
                                  "e.g. 'video:negatives=0,listwise_weight=0'")
            parsed = out.setdefault(scenario.strip(), {})
            for item in options.split(","):
                key, eq, value = (t.strip() for t in item.partition("="))
                if key not in self.PER_SCENARIO_KEYS or not eq:
                    raise ConfigError(f"per_scenario {scenario.strip()}: {item.strip()!r} is not OPTION=VALUE with "
                                      f"OPTION one of {', '.join(self.PER_SCENARIO_KEYS)}.{did_you_mean(key, self.PER_SCENARIO_KEYS)}")
                try:
                    parsed[key] = self.PER_SCENARIO_KEYS[key](value)
                except ValueError:
                    raise ConfigError(f"per_scenario {scenario.strip()}: {key}={value!r} is not a number") from None
            try:  # the same range checks as the run's own options
                dataclasses.replace(self, per_scenario=None, **parsed)
            except ConfigError as e:
                raise ConfigError(f"per_scenario {scenario.strip()}: {e}") from None
        return out

    def negative_shares(self) -> dict[str, float]:
        """negative_mix parsed and normalised: {protocol: share}, the shares summing to 1."""
        shares: dict[str, float] = {}
        for item in self.negative_mix.split(","):
            name, eq, value = (t.strip() for t in item.partition("="))
            if name not in NEGATIVE_PROTOCOLS:
                raise ConfigError(f"negative_mix {self.negative_mix!r}: {name!r} is not one of "
                                  f"{', '.join(NEGATIVE_PROTOCOLS)}.{did_you_mean(name, NEGATIVE_PROTOCOLS)}")
            try:
                shares[name] = float(value) if eq else 1.0
            except ValueError:
                raise ConfigError(f"negative_mix {self.negative_mix!r}: {name}={value!r} is not a number") from None
            if shares[name] < 0:
                raise ConfigError(f"negative_mix {self.negative_mix!r}: {name}'s share must be >= 0")
        total = sum(shares.values())
        if total <= 0:
            raise ConfigError(f"negative_mix {self.negative_mix!r}: the shares sum to 0")
        return {k: v / total for k, v in shares.items() if v > 0}

    def valid_protocol_list(self) -> list[str]:
        """valid_protocols parsed: the protocols' names, in order."""
        names = [t.strip() for t in self.valid_protocols.split(",") if t.strip()]
        bad = [n for n in names if n not in NEGATIVE_PROTOCOLS]
        if bad or not names:
            raise ConfigError(f"valid_protocols {self.valid_protocols!r}: name one or more of "
                              f"{', '.join(NEGATIVE_PROTOCOLS)}")
        return names

    def for_scenario(self, scenario: str) -> "TrainConfig":
        """This config with `scenario`'s per_scenario options applied."""
        return dataclasses.replace(self, **self.scenario_options().get(scenario, {}))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in d if k not in names]
        if unknown:
            raise ConfigError("unknown config key(s): " + ", ".join(
                f"'{k}'{did_you_mean(k, names)}" for k in unknown) + f" (valid: {', '.join(sorted(names))})")
        d = dict(d)
        if isinstance(d.get("targets"), str):
            d["targets"] = tuple(t.strip() for t in d["targets"].split(",") if t.strip())
        elif "targets" in d:
            d["targets"] = tuple(d["targets"])
        return cls(**d)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        return d

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def help_of(cls, name: str) -> str:
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)
