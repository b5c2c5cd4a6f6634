"""What every command family of the CLI shares: the parent parsers (registry, model, data), the
registry and hub from the arguments, data loading, and options built from a config dataclass.

Everything that can be checked without the base (names, references, config values, data, empty
lists, the output folder) is checked before the base loads, so a typo costs milliseconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from ..errors import ConfigError, DataError
from ..model_ids import DEFAULT_BASE, QUANTS

DEFAULT_REGISTRY = "adapters"
REGISTRY_ENV = "ADAPTERHUB_REGISTRY"
BUILT_IN_SCENARIOS = ("video", "ecommerce", "news", "music")
FORMATS = ("jsonl", "csv")


def make_hub(args):
    from ..hub import Hub
    return Hub(base=args.base, registry=args.registry, quant=args.quant, device=args.device)


def open_registry(args):
    from ..registry import Registry
    return Registry(args.registry)


def check_refs(args, *refs: str | None) -> None:
    """Each reference names a published version ('base' and None name none): before the base loads."""
    reg = open_registry(args)
    for ref in refs:
        if ref is not None and ref != "base":
            reg.resolve(ref)


def print_metrics(metrics: dict, primary: str) -> None:
    from ..evaluation import format_table
    for split, rows in metrics.items():
        print(f"\n{split} ({primary} is the primary metric):")
        print(format_table({method: row for method, row in rows.items() if isinstance(row, dict)}))


def parents() -> dict[str, argparse.ArgumentParser]:
    """The option groups commands share: 'common' (registry, debug), 'model' (base, quant, device),
    'data' (scenario, format, data folder, seed, loader options)."""
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
    return {"common": common, "model": model, "data": data}


# ------------------------------------------------------------------ data
def load_data(args):
    """--scenario names the scenario; --format jsonl|csv says the data is the user's own (docs/DATA.md)."""
    from ..datasets import ALIASES, generic, load
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
        return [load_data(argparse.Namespace(**{**vars(args), "scenario": s, "data_option": options_for(args, s)}))
                for s in names]
    if fmt is None:
        if scenario is None:
            raise ConfigError("which scenario? Give --scenario " + "|".join(BUILT_IN_SCENARIOS) + " (the shared data), "
                              "or for your own data --format jsonl|csv --data PATH [--scenario NAME]")
        if ALIASES.get(scenario, scenario) not in BUILT_IN_SCENARIOS:
            raise DataError(f"scenario {scenario!r} is not built in (built in: {', '.join(BUILT_IN_SCENARIOS)}; aliases "
                            f"{', '.join(ALIASES)}). For your own data add --format jsonl|csv --data PATH "
                            "(see docs/DATA.md)")
        return load(scenario, args.data, seed=args.seed, options=data_options(args.data_option))
    if args.data_option:
        raise ConfigError("--data-option is for the built-in scenarios' loaders; your own data has none")
    if args.data is None:
        raise DataError(f"--format {fmt} needs --data PATH: the folder holding items.{fmt} and examples.{fmt} "
                        "(see docs/DATA.md)")
    data = generic.load(args.data, fmt=fmt, seed=args.seed, scenario=scenario)
    if data.extra.get("templates"):  # meta.json's prompt templates for this scenario
        from .. import prompts
        prompts.register_templates(data.scenario, **data.extra["templates"])
    return data


def options_for(args, scenario: str) -> list[str]:
    """A joint run's --data-option entries for one scenario: 'SCENARIO:KEY=VALUE' for that one only,
    'KEY=VALUE' for every scenario."""
    return [rest for where, rest in map(_scope, args.data_option or []) if where in (None, scenario)]


def _scope(pair: str) -> tuple[str | None, str]:
    """'news:full_train=true' -> ('news', 'full_train=true'); 'full_train=true' -> (None, 'full_train=true')."""
    where, colon, rest = pair.partition(":")
    return (where, rest) if colon and "=" not in where else (None, pair)


def data_options(pairs: list[str] | None) -> dict:
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


def add_config_options(parser: argparse.ArgumentParser, cls) -> None:
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


def config_overrides(args, cls) -> dict:
    """The fields of `cls` given on the command line (None: not given; UNSET: set to None)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = None if value is UNSET else value
    return out
