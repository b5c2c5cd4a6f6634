"""adapterhub command line: parse -> check -> call the public API -> print. Errors become exit code 2 here.

Everything that can be checked without the base (names, references, config values, data, empty
lists, the output folder) is checked before the base loads, so a typo costs milliseconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import typing
from pathlib import Path

from .errors import AdapterHubError, ConfigError, DataError, RegistryError
from .model_ids import DEFAULT_BASE, QUANTS

DEFAULT_REGISTRY = "adapters"
REGISTRY_ENV = "ADAPTERHUB_REGISTRY"
BUILT_IN_SCENARIOS = ("video", "ecommerce", "news", "music")
FORMATS = ("jsonl", "csv")
TAIL_CHARS = 80  # of each prompt, in `score`'s output: prompts sharing a history differ at the end


def _hub(args):
    from .hub import Hub
    return Hub(base=args.base, registry=args.registry, quant=args.quant, device=args.device)


def _registry(args):
    from .registry import Registry
    return Registry(args.registry)


def _check_refs(args, *refs: str | None) -> None:
    """Each reference names a published version ('base' and None name none): before the base loads."""
    registry = _registry(args)
    for ref in refs:
        if ref is not None and ref != "base":
            registry.resolve(ref)


def _metric_summary(card: dict) -> str:
    m = card.get("primary_metric")
    test = ((card.get("metrics") or {}).get("test") or {})
    if not m or "adapter" not in test:
        return "-"
    return f"test {m} {test['adapter'].get(m, float('nan')):.3f} (base {test.get('base', {}).get(m, float('nan')):.3f})"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _tail(text: str, n: int = TAIL_CHARS) -> str:
    text = _one_line(text)
    return text if len(text) <= n else "..." + text[-(n - 3):]


# ------------------------------------------------------------------ commands
def cmd_list(args) -> int:
    if not Path(args.registry).is_dir():
        raise RegistryError(f"registry '{args.registry}' does not exist. Pass --registry PATH or set {REGISTRY_ENV}; "
                            f"or create it by training: adapterhub train NAME --scenario SCENARIO --registry {args.registry}")
    cards = _registry(args).list()
    if args.json:
        print(json.dumps(cards, indent=2))
        return 0
    if not cards:
        print(f"no adapters in {args.registry}/ (train one with: adapterhub train NAME --scenario SCENARIO --data PATH)")
        return 0
    rows = [("NAME", "CURRENT", "VERSIONS", "SCENARIO", "BASE", "METRIC")]
    for c in cards:
        rows.append((c["name"], c.get("current") or "-", str(len(c.get("versions", []))), c.get("scenario", "-"),
                     (c.get("base") or {}).get("spec", "-"), _metric_summary(c) if "error" not in c else "CORRUPT: " + c["error"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


def cmd_show(args) -> int:
    card = _registry(args).card(args.ref)
    if not args.full:
        card = {k: v for k, v in card.items() if k != "train"} | {"train": {k: v for k, v in card.get("train", {}).items() if k != "log"}}
    print(json.dumps(card, indent=2, sort_keys=True))
    return 0


def cmd_score(args) -> int:
    prompts = list(args.prompt or [])
    if args.file:
        with open(args.file, encoding="utf-8") as fh:
            prompts += [line.rstrip("\n") for line in fh if line.strip()]
    if not prompts:
        raise AdapterHubError("nothing to score: give --prompt TEXT or --file PATH (one prompt per line)")
    _check_refs(args, args.ref)
    hub = _hub(args)
    ref = None if args.ref == "base" else args.ref
    scores = hub.score([(ref, p) for p in prompts])
    if args.json:
        print(json.dumps([{"index": i, "score": s, "prompt": p} for i, (p, s) in enumerate(zip(prompts, scores), 1)], indent=2))
        return 0
    for i, (p, s) in enumerate(zip(prompts, scores), 1):
        print(f"{i}\t{s:.4f}\t{_tail(p)}")
    return 0


def cmd_promote(args) -> int:
    v = _registry(args).promote(args.ref)
    print(f"{args.ref.split('@')[0]} -> {v}")
    return 0


def cmd_rm(args) -> int:
    if "@" not in args.ref and not args.all:
        raise AdapterHubError(f"'{args.ref}' names every version; remove one with 'adapterhub rm {args.ref}@vN' "
                              f"or all of them with 'adapterhub rm {args.ref} --all'")
    removed = _registry(args).remove(args.ref)
    print(f"removed {args.ref.split('@')[0]} {', '.join(removed)}")
    return 0


def _load_data(args):
    """--scenario names the scenario; --format jsonl|csv says the data is the user's own (docs/DATA.md)."""
    from .datasets import ALIASES, generic, load
    fmt, scenario = args.format, args.scenario
    if fmt is None and scenario in FORMATS:  # the old spelling, when --scenario also meant the format
        fmt, scenario = scenario, None
    if fmt is None and scenario and "," in scenario:  # a joint adapter over several built-in scenarios
        names = [s.strip() for s in scenario.split(",") if s.strip()]
        if args.data is not None:
            raise ConfigError("--data names one scenario's folder; joint training reads each scenario's own folder "
                              "under $ADAPTERHUB_DATA or ../shared/data")
        scoped = {_scope(pair)[0] for pair in args.data_option or []} - {None}
        if scoped - set(names):
            raise ConfigError(f"--data-option names {sorted(scoped - set(names))}, not scenarios of this run "
                              f"({', '.join(names)})")
        return [_load_data(argparse.Namespace(**{**vars(args), "scenario": s, "data_option": _options_for(args, s)}))
                for s in names]
    if fmt is None:
        if scenario is None:
            raise ConfigError("which scenario? Give --scenario " + "|".join(BUILT_IN_SCENARIOS) + " (the shared data), "
                              "or for your own data --format jsonl|csv --data PATH [--scenario NAME]")
        if ALIASES.get(scenario, scenario) not in BUILT_IN_SCENARIOS:
            raise DataError(f"scenario {scenario!r} is not built in (built in: {', '.join(BUILT_IN_SCENARIOS)}; aliases "
                            f"{', '.join(ALIASES)}). For your own data add --format jsonl|csv --data PATH "
                            "(see docs/DATA.md)")
        return load(scenario, args.data, seed=args.seed, options=_data_options(args.data_option))
    if args.data_option:
        raise ConfigError("--data-option is for the built-in scenarios' loaders; your own data has none")
    if args.data is None:
        raise DataError(f"--format {fmt} needs --data PATH: the folder holding items.{fmt} and examples.{fmt} "
                        "(see docs/DATA.md)")
    data = generic.load(args.data, fmt=fmt, seed=args.seed, scenario=scenario)
    if data.extra.get("templates"):  # meta.json's prompt templates for this scenario
        from . import prompts
        prompts.register_templates(data.scenario, **data.extra["templates"])
    return data


def _options_for(args, scenario: str) -> list[str]:
    """A joint run's --data-option entries for one scenario: 'SCENARIO:KEY=VALUE' for that one only,
    'KEY=VALUE' for every scenario."""
    return [rest for where, rest in map(_scope, args.data_option or []) if where in (None, scenario)]


def _scope(pair: str) -> tuple[str | None, str]:
    """'news:full_train=true' -> ('news', 'full_train=true'); 'full_train=true' -> (None, 'full_train=true')."""
    where, colon, rest = pair.partition(":")
    return (where, rest) if colon and "=" not in where else (None, pair)


def _data_options(pairs: list[str] | None) -> dict:
    """['full_train=true', 'n=3', 'valid_from_train=0.15'] -> {'full_train': True, 'n': 3, 'valid_from_train': 0.15}."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--data-option {pair!r}: write KEY=VALUE, e.g. --data-option full_train=true")
        low = value.lower()
        out[key] = (True if low in ("true", "yes") else False if low in ("false", "no")
                    else int(value) if value.lstrip("-").isdigit() else _float_or_text(value))
    return out


def _float_or_text(value: str):
    try:
        return float(value)
    except ValueError:
        return value


def cmd_train(args) -> int:
    from .config import TrainConfig
    from .registry import check_name
    check_name(args.name)
    cfg = TrainConfig.from_dict(_config_overrides(args, TrainConfig))
    _check_refs(args, cfg.init_from, cfg.teacher, *(o.get("teacher") for o in cfg.scenario_options().values()))
    data = _load_data(args)
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun / accelerate launch
        from accelerate import Accelerator
        accelerator = Accelerator(cpu=args.device == "cpu")
        if args.device == "auto":
            args.device = str(accelerator.device)
    hub = _hub(args)
    promote = True if args.force else None
    adapter, card = hub.train(args.name, data, cfg, promote=promote, description=args.description or "",
                              progress=None, accelerator=accelerator, force=args.force)
    if adapter is None:  # a non-main process of a multi-process run: the main one publishes
        return 0
    print(f"published {adapter.key} ({'current' if hub.registry.current(adapter.name) == adapter.version else 'not promoted'})")
    for scenario, part in (card.get("scenarios") or {card.get("scenario"): card}).items():
        if card.get("scenarios"):
            print(f"\n== {scenario}")
        _print_metrics(part["metrics"], part["primary_metric"])
    print()
    for v in card.get("verdict", []):  # one line per baseline: wins or loses, by how much
        where = f"{v['scenario']} " if "scenario" in v else ""
        print(f"{v['model']} {'wins against' if v['wins'] else 'LOSES to'} {v['vs']} on {where}{v['split']} "
              f"{v['metric']}: {v['model_value']:.4f} vs {v['vs_value']:.4f} ({v['diff']:+.4f})")
    return 0


def _print_metrics(metrics: dict, primary: str) -> None:
    from .evaluation import format_table
    for split, rows in metrics.items():
        print(f"\n{split} ({primary} is the primary metric):")
        print(format_table({method: row for method, row in rows.items() if isinstance(row, dict)}))


def cmd_eval(args) -> int:
    from .scoring import cap_examples, evaluate_split, primary_metric
    _check_refs(args, args.ref)
    data = _load_data(args)
    examples = cap_examples(data.splits[args.split], args.n, args.seed)
    labels = sorted({ex.label for ex in examples})
    if labels != [0, 1]:
        found = f"only label {labels[0]} in its {len(examples)} examples" if labels else "no examples"
        raise DataError(f"the {args.split} split of scenario '{data.scenario}' has {found}; its metrics need both "
                        "labels 0 and 1: evaluate another split (--split) or more examples (--n)")
    hub = _hub(args)
    key = None if args.ref == "base" else hub.load(args.ref).key
    rows = evaluate_split(hub, data, examples, key, with_base=True, seed=args.seed, progress=True)
    if args.json:
        print(json.dumps({"ref": args.ref, "split": args.split, "n": len(examples), "metrics": rows}, indent=2))
    else:
        _print_metrics({args.split: rows}, primary_metric(data.task))
    return 0


def cmd_recommend(args) -> int:
    history = [h.strip() for h in args.history.split("|") if h.strip()]
    candidates = [c.strip() for c in args.candidates.split("|") if c.strip()]
    if not candidates:
        raise AdapterHubError(f"--candidates {args.candidates!r} names no item: give item texts separated by '|', "
                              "e.g. --candidates 'Alien (1979)|Emma (1996)'")
    if args.k < 1:
        raise AdapterHubError(f"-k {args.k}: give how many items to print (>= 1)")
    _check_refs(args, args.ref)
    hub = _hub(args)
    ranked = hub.load(args.ref).recommend(history, candidates, k=args.k, raw=args.raw)
    for rank, (item, score) in enumerate(ranked, 1):
        print(f"{rank:>3}. {score:.4f}  {item}")
    return 0


def cmd_prompt(args) -> int:
    """Exactly what the model reads for each candidate: the version's facts, no model run."""
    from . import recommend
    history = [h.strip() for h in args.history.split("|") if h.strip()]
    candidates = [c.strip() for c in args.candidate if c.strip()]
    if not candidates:
        raise AdapterHubError("give at least one --candidate ITEM (a title or a dataset id)")
    _check_refs(args, args.ref)
    from .registry import Registry
    registry = Registry(args.registry)
    card = registry.card(args.ref)
    key = args.ref if "@" in args.ref else f"{args.ref}@{registry.current(args.ref)}"
    joint = card.get("scenarios") or {}
    if joint and args.scenario not in joint:
        raise ConfigError(f"{key} was trained on several scenarios: pass --scenario {'|'.join(joint)}")
    scenario = args.scenario if joint else card.get("scenario", args.ref)
    prefix, suffixes = recommend.render(scenario, recommend.facts_of(registry, key, args.scenario if joint else None),
                                        history, candidates)
    for suffix in suffixes:
        print(prefix + suffix)
        print()
    return 0


def cmd_facts(args) -> int:
    """Rebuild a version's facts.json from the data it was trained on (checked against its card)."""
    from .registry import Registry
    from .train import rebuild_facts
    _check_refs(args, args.ref)
    registry = Registry(args.registry)
    card = registry.card(args.ref)
    if card.get("scenarios") and args.format is None:  # jointly trained: each scenario's data, as recorded
        from .datasets import load
        datas = [load(s, None, **(part["data"].get("load") or {"seed": card["train"]["seed"]}))
                 for s, part in card["scenarios"].items()]
        print(f"wrote {rebuild_facts(registry, args.ref, datas)}")
        return 0
    if args.scenario is None and args.format is None:
        args.scenario = card.get("scenario")
    loaded = (card.get("data") or {}).get("load")
    if loaded and not args.data_option and args.format is None:  # the card says how its data was loaded
        args.data_option = [f"{k}={v}" for k, v in (loaded.get("options") or {}).items()]
        args.seed = loaded.get("seed", args.seed)
    print(f"wrote {rebuild_facts(registry, args.ref, _load_data(args))}")
    return 0


def cmd_merge(args) -> int:
    from .errors import did_you_mean
    from .merge import METHODS
    from .registry import check_name
    weights = {}
    for item in args.adapters:
        ref, _, w = item.partition("=")
        try:
            weights[ref] = float(w) if w else None
        except ValueError:
            raise AdapterHubError(f"bad weight in {item!r}: write REF=WEIGHT, e.g. news=0.5") from None
    if any(w is None for w in weights.values()):
        if any(w is not None for w in weights.values()):
            raise AdapterHubError("give every adapter a weight (REF=WEIGHT) or none (the default rule)")
        weights = list(weights)
    if args.method is not None and args.method not in METHODS:
        raise ConfigError(f"unknown merge method {args.method!r} (valid: {', '.join(METHODS)}).{did_you_mean(args.method, METHODS)}")
    if args.name is not None:
        check_name(args.name)
    _check_refs(args, *weights)
    hub = _hub(args)
    adapter = hub.merge(weights, method=args.method, name=args.name, rank=args.rank, density=args.density,
                        measure=not args.no_measure,
                        **({} if args.regmean_alpha is None else {"regmean_alpha": args.regmean_alpha}))
    print(f"published {adapter.key}: {adapter.card['description']}")
    for scenario, k in (adapter.card["merge"].get("kept") or {}).items():
        if "skipped" in k:
            print(f"  {scenario}: not measured ({k['skipped']})")
        else:
            kept = "n/a" if k["kept"] is None else f"{k['kept']:.0%}"
            print(f"  {scenario}: kept {kept} of {k['parent']}'s gain over the base (valid {k['metric']}: merged "
                  f"{k['merged']:.3f}, own {k['own']:.3f}, base {k['base']:.3f}; {k['n']} examples)")
    for warning in adapter.card.get("warnings") or []:
        print(f"WARNING: {warning}")
    return 0


def cmd_export(args) -> int:
    from .export import check_out
    check_out(args.out, args.dtype, args.overwrite)
    _check_refs(args, args.ref)
    hub = _hub(args)
    out = hub.export(args.ref, args.out, merge_into_base=not args.peft, dtype=args.dtype, overwrite=args.overwrite)
    kind = "PEFT adapter folder (PEFT, vLLM, LoRAX)" if args.peft else f"standalone {args.dtype} model folder"
    print(f"wrote {kind} to {out}")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_from_args
    return run_from_args(args)


def cmd_serve(args) -> int:
    if not Path(args.registry).is_dir():
        raise RegistryError(f"registry '{args.registry}' does not exist. Pass --registry PATH or set {REGISTRY_ENV}")
    preload = [r.strip() for r in (args.preload or "").split(",") if r.strip()]
    _check_refs(args, *preload)
    from .hub import Hub
    from .serve import serve  # before the base loads: a missing 'serve' extra costs nothing
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger(__name__).warning("serving on %s: the API has no authentication; anyone who can reach "
                                            "this address can score and load adapters", args.host)
    hub = Hub(base=args.base, registry=args.registry, quant=args.quant, device=args.device,
              max_resident=args.max_resident)
    for ref in preload:
        hub.load(ref)
    print(f"adapterhub serving {args.registry}/ over {args.base} ({len(hub.resident())} resident) on "
          f"http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    serve(hub, host=args.host, port=args.port, window_ms=args.window_ms, threads=args.threads, batch=not args.no_batch)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args)


# ------------------------------------------------------------------ options from a config dataclass
UNSET = object()  # `--n-valid none`: set an Optional field to None (argparse's None means 'not given')


def _option(hint) -> dict:
    """add_argument keywords for a field annotated `hint`: int, float, str, bool, Literal, tuple/list of
    those (comma lists), each optionally `| None`."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else str
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        return {"choices": list(args), "type": type(args[0]) if args else str}
    if origin in (tuple, list):
        item = args[0] if args and args[0] in (int, float, str) else str
        kind = origin

        def comma_list(text: str):
            return kind(item(t.strip()) for t in text.split(",") if t.strip())
        return {"type": comma_list, "metavar": "A,B,..."}
    convert = hint if hint in (int, float, str) else str
    if optional and convert in (int, float):
        def number_or_none(text: str, convert=convert):
            return UNSET if text.strip().lower() == "none" else convert(text)
        number_or_none.__name__ = convert.__name__  # argparse names the type in its error message
        return {"type": number_or_none, "metavar": "N|none" if convert is int else "X|none"}
    return {"type": convert, "metavar": {int: "N", float: "X"}.get(convert, "TEXT")}


def _shown(default) -> str:
    if isinstance(default, (tuple, list)):
        return ",".join(map(str, default))
    if isinstance(default, bool) or default is None:
        return {True: "on", False: "off", None: "none"}[default]
    return str(default)


def _add_config_options(parser: argparse.ArgumentParser, cls) -> None:
    """One --option per field of the dataclass `cls`, its metadata "help" as help. A field whose
    option another parent already defines (e.g. --seed) shares that option."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        text = f.metadata.get("help", "") or f.name.replace("_", " ")
        kwargs = _option(hints[f.name])
        help_ = f"{text} (default: {_shown(default)})".replace("%", "%%")
        try:
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, help=help_, **kwargs)
        except argparse.ArgumentError:
            pass  # already an option of this command: its value is used for the field too


def _config_overrides(args, cls) -> dict:
    """The fields of `cls` given on the command line (None: not given; UNSET: set to None)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = None if value is UNSET else value
    return out


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    from .config import TrainConfig
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", default=None, metavar="PATH",
                        help=f"registry folder (default: ${REGISTRY_ENV}, else ./{DEFAULT_REGISTRY})")
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--base", default=DEFAULT_BASE, help=f"base spec: {DEFAULT_BASE}, random:tiny, or a model folder")
    model.add_argument("--quant", default=QUANTS[0], choices=QUANTS, help=f"base quantization (default {QUANTS[0]})")
    model.add_argument("--device", default="auto", help="auto, cpu or cuda")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--scenario", help=f"the scenario: {' | '.join(BUILT_IN_SCENARIOS)} (their data under ../shared/data; "
                      "train takes several, comma-separated, for one adapter trained jointly on all of them), "
                      "or your own scenario's name with --format (default there: meta.json's \"scenario\", else the "
                      "data folder's name)")
    data.add_argument("--format", choices=FORMATS, help="your own data's format: --data holds items.FORMAT and "
                      "examples.FORMAT (docs/DATA.md)")
    data.add_argument("--data", default=None, metavar="PATH", help="data folder (default: the scenario's folder under "
                      "$ADAPTERHUB_DATA or ../shared/data; required with --format)")
    data.add_argument("--seed", type=int, default=0, help="seed for splits, sampling and training (default 0)")
    data.add_argument("--data-option", action="append", metavar="KEY=VALUE", help="an option of the scenario's "
                      "loader (repeatable), e.g. full_train=true for news: every impression it reads goes to train; "
                      "in a joint run, news:full_train=true applies to news only")

    p = argparse.ArgumentParser(prog="adapterhub", description="One frozen, quantized base LLM; many LoRA "
                                "adapters for recommendation scenarios.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="one of these; 'adapterhub COMMAND --help' lists its options")

    s = sub.add_parser("list", parents=[common], help="list the registry's adapters")
    s.add_argument("--json", action="store_true", help="print the cards as JSON instead of a table")
    s.set_defaults(func=cmd_list)
    s = sub.add_parser("show", parents=[common], help="print an adapter's card")
    s.add_argument("ref", help="adapter: name (its current version) or name@vN")
    s.add_argument("--full", action="store_true", help="include the training log")
    s.set_defaults(func=cmd_show)
    s = sub.add_parser("score", parents=[common, model], help="P(yes) for prompts under an adapter ('base' = none)")
    s.add_argument("ref", help="adapter: name, name@vN, or 'base' for the base without an adapter")
    s.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    s.add_argument("--file", help="a text file, one prompt per line")
    s.add_argument("--json", action="store_true", help="print [{index, score, prompt}] as JSON instead of "
                   f"'index<TAB>score<TAB>the prompt's last {TAIL_CHARS} characters' lines")
    s.set_defaults(func=cmd_score)
    s = sub.add_parser("promote", parents=[common], help="make a version current")
    s.add_argument("ref", help="the version to make current: name@vN")
    s.set_defaults(func=cmd_promote)
    s = sub.add_parser("rm", parents=[common], help="remove a version (name@vN) or, with --all, an adapter")
    s.add_argument("ref", help="name@vN, or a bare name with --all")
    s.add_argument("--all", action="store_true", help="remove every version of a bare name")
    s.set_defaults(func=cmd_rm)

    s = sub.add_parser("train", parents=[common, model, data], help="train and publish a scenario adapter")
    s.add_argument("name", help="adapter name, e.g. news (a-z, 0-9, '_', '-')")
    s.add_argument("--description", help="one line for the card (default: '<scenario> recommendation adapter (<source>)')")
    s.add_argument("--force", action="store_true", help="publish even if the adapter loses to the bare base on valid, "
                   "and make the new version current even if its metric is worse")
    _add_config_options(s.add_argument_group("training options (TrainConfig fields)"), TrainConfig)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", parents=[common, model, data], help="metrics of an adapter beside the base and baselines")
    s.add_argument("ref", help="adapter: name, name@vN, or 'base' for the base without an adapter")
    s.add_argument("--split", default="test", choices=["train", "valid", "test"], help="the split to evaluate (default test)")
    s.add_argument("--n", type=int, default=512, help="at most this many examples (whole groups; default 512)")
    s.add_argument("--json", action="store_true", help="print {ref, split, n, metrics} as JSON instead of a table")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("recommend", parents=[common, model], help="rank candidate items for a history")
    s.add_argument("ref", help="adapter: name or name@vN")
    s.add_argument("--history", required=True, help="item texts, oldest first, separated by '|'")
    s.add_argument("--candidates", required=True, help="item texts separated by '|'")
    s.add_argument("-k", type=int, default=10, help="print the k best candidates (default 10)")
    s.add_argument("--raw", action="store_true", help="rank by the adapter's P(yes) alone, not the fused score")
    s.set_defaults(func=cmd_recommend)

    s = sub.add_parser("facts", parents=[common, data], help="rebuild a version's facts.json from the data it was "
                       "trained on (the shipped adapters' facts are data, so they are not committed)")
    s.add_argument("ref", help="adapter: name or name@vN")
    s.set_defaults(func=cmd_facts)

    s = sub.add_parser("prompt", parents=[common], help="print exactly what the model sees for a history and candidates")
    s.add_argument("ref", help="adapter: name or name@vN (its facts are rendered)")
    s.add_argument("--history", default="", help="item titles or dataset ids, oldest first, separated by '|'")
    s.add_argument("--candidate", action="append", default=[], help="a candidate title or id (repeat for more)")
    s.add_argument("--scenario", default=None, help="for an adapter trained jointly on several scenarios: which one")
    s.set_defaults(func=cmd_prompt)

    s = sub.add_parser("merge", parents=[common, model], help="merge adapters into a new one (cat is exact)")
    s.add_argument("adapters", nargs="+", help="REF=WEIGHT ... (without weights: the default rule, see README Merging)")
    s.add_argument("--method", default=None, help="cat (exact), linear (PEFT's, cross terms), svd, ties, dare_ties, "
                                                  "regmean (fit on each parent's train inputs; needs their data) "
                                                  "(default: the measured default recipe)")
    s.add_argument("--no-measure", action="store_true", help="skip scoring the merge on each parent's valid split "
                                                             "(the kept figures in its card)")
    s.add_argument("--name", help="name of the merged adapter (default: the parents' names joined by '-')")
    s.add_argument("--rank", type=int, help="rank of svd/ties/dare_ties merges (default: the largest parent rank)")
    s.add_argument("--density", type=float, default=0.5, help="share of entries ties/dare_ties keep")
    s.add_argument("--regmean-alpha", type=float, default=None, help="regmean: scale of the input Grams' off-diagonal "
                                                                     "entries, in [0, 1] (1: the exact least-squares "
                                                                     "fit; default 0.9)")
    s.set_defaults(func=cmd_merge)

    s = sub.add_parser("export", parents=[common, model], help="write a standalone merged model or the PEFT folder")
    s.add_argument("ref", help="adapter: name or name@vN")
    s.add_argument("out", help="output folder (new or empty, unless --overwrite)")
    s.add_argument("--peft", action="store_true", help="write the PEFT adapter folder instead of merging into the base")
    s.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="weights dtype of a merged "
                   "model (default bf16)")
    s.add_argument("--overwrite", action="store_true", help="replace the output folder if it is not empty")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("bench", parents=[common], help="run the benchmark suites (adapterhub.bench) and write their report")
    from .bench import add_arguments
    add_arguments(s)
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("serve", parents=[common, model], help="an HTTP API over one hub: /score, /recommend, "
                       "/adapters, /health (needs the 'serve' extra)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; the API has no auth)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--preload", default=None, help="adapters to load at start, comma-separated (others load on "
                   "first use)")
    s.add_argument("--window-ms", type=float, default=None, help="how long a request waits for others to join its "
                   "batch (default: adapterhub.batcher.WINDOW_MS, 2)")
    s.add_argument("--no-batch", action="store_true", help="each request runs its own forward instead of joining "
                   "a mixed batch (on a CPU where a forward is compute-bound, batching does not raise throughput: "
                   "README, Serving)")
    s.add_argument("--threads", type=int, default=64, help="requests handled at once (default 64)")
    s.add_argument("--max-resident", type=int, default=64, help="adapters resident at once, least recently used "
                   "evicted (default 64)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("demo", parents=[common, model], help="the main job: load the shipped adapters, recommend, "
                       "then train -> publish -> load a small example adapter")
    s.add_argument("--train-steps", type=int, default=30, help="steps of the small training example")
    s.set_defaults(func=cmd_demo)
    return p


def _quiet_stdout() -> None:
    """After a broken pipe: later writes (and the flush at exit) go nowhere instead of failing again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.registry = args.registry or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(message)s" if not args.debug else "%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "bitsandbytes", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        code = args.func(args) or 0
        sys.stdout.flush()  # a reader that went away (`| head`) shows up here, not at exit
        return code
    except BrokenPipeError:  # like a Unix tool: stop quietly; the shell sees 128 + SIGPIPE
        _quiet_stdout()
        return 128 + getattr(signal, "SIGPIPE", 13)
    except (AdapterHubError, OSError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
