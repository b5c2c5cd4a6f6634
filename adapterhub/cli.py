"""adapterhub command line: parse -> call the public API -> print. Errors become exit code 2 here."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .errors import AdapterHubError

DEFAULT_REGISTRY = "adapters"


def _hub(args):
    from .hub import Hub
    return Hub(base=args.base, registry=args.registry, quant=args.quant, device=args.device)


def _registry(args):
    from .registry import Registry
    return Registry(args.registry)


def _metric_summary(card: dict) -> str:
    m = card.get("primary_metric")
    test = ((card.get("metrics") or {}).get("test") or {})
    if not m or "adapter" not in test:
        return "-"
    return f"test {m} {test['adapter'].get(m, float('nan')):.3f} (base {test.get('base', {}).get(m, float('nan')):.3f})"


# ------------------------------------------------------------------ commands
def cmd_list(args) -> int:
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
    hub = _hub(args)
    ref = None if args.ref == "base" else args.ref
    for p, s in zip(prompts, hub.score([(ref, p) for p in prompts])):
        print(f"{s:.4f}\t{p.replace(chr(10), ' ')[:100]}")
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
    from .datasets import load
    return load(args.scenario, args.data, seed=args.seed)


def cmd_train(args) -> int:
    from .config import TrainConfig
    overrides = {k: getattr(args, k) for k in ("r", "alpha", "dropout", "targets", "lr", "batch_size", "grad_accum", "max_steps",
                                                "epochs", "seed", "n_train", "n_valid", "n_test", "eval_every", "patience",
                                                "init_from", "teacher", "distill_weight", "domain_steps")
                 if getattr(args, k, None) is not None}
    cfg = TrainConfig.from_dict(overrides)
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
                              progress=None, accelerator=accelerator)
    if adapter is None:  # a non-main process of a multi-process run: the main one publishes
        return 0
    print(f"published {adapter.key} ({'current' if hub.registry.current(adapter.name) == adapter.version else 'not promoted'})")
    _print_metrics(card["metrics"], card["primary_metric"])
    return 0


def _print_metrics(metrics: dict, primary: str) -> None:
    from .evaluation import format_table
    for split, rows in metrics.items():
        print(f"\n{split} ({primary} is the primary metric):")
        print(format_table(rows))


def cmd_eval(args) -> int:
    from .report import cap_examples, evaluate_split
    hub = _hub(args)
    data = _load_data(args)
    examples = cap_examples(data.splits[args.split], args.n, args.seed)
    key = None if args.ref == "base" else hub.load(args.ref).key
    rows = evaluate_split(hub, data, examples, key, with_base=key is not None, seed=args.seed, progress=True)
    if args.json:
        print(json.dumps({"ref": args.ref, "split": args.split, "n": len(examples), "metrics": rows}, indent=2))
    else:
        from .report import primary_metric
        _print_metrics({args.split: rows}, primary_metric(data.task))
    return 0


def cmd_recommend(args) -> int:
    hub = _hub(args)
    history = [h.strip() for h in args.history.split("|") if h.strip()]
    candidates = [c.strip() for c in args.candidates.split("|") if c.strip()]
    if not candidates:
        raise AdapterHubError("--candidates is empty: give item texts separated by '|'")
    for rank, (item, score) in enumerate(hub.load(args.ref).recommend(history, candidates, k=args.k), 1):
        print(f"{rank:>3}. {score:.4f}  {item}")
    return 0


def cmd_merge(args) -> int:
    weights = {}
    for item in args.adapters:
        ref, _, w = item.partition("=")
        try:
            weights[ref] = float(w) if w else 1.0 / len(args.adapters)
        except ValueError:
            raise AdapterHubError(f"bad weight in {item!r}: write REF=WEIGHT, e.g. news=0.5") from None
    hub = _hub(args)
    adapter = hub.merge(weights, method=args.method, name=args.name, rank=args.rank, density=args.density)
    print(f"published {adapter.key}: {adapter.card['description']}")
    return 0


def cmd_export(args) -> int:
    hub = _hub(args)
    out = hub.export(args.ref, args.out, merge_into_base=not args.peft, dtype=args.dtype, overwrite=args.overwrite)
    kind = "PEFT adapter folder (PEFT, vLLM, LoRAX)" if args.peft else f"standalone {args.dtype} model folder"
    print(f"wrote {kind} to {out}")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_from_args
    return run_from_args(args)


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args)


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    from .config import TrainConfig, help_of
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", default=DEFAULT_REGISTRY, help="registry folder (default: adapters)")
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--base", default="smollm2-135m", help="base spec: smollm2-135m, random:tiny, or a model folder")
    model.add_argument("--quant", default="nf4", choices=["nf4", "int8", "bf16", "fp32"], help="base quantization (default nf4)")
    model.add_argument("--device", default="auto", help="auto, cpu or cuda")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--scenario", required=True, help="video | ecommerce | news | music | jsonl | csv")
    data.add_argument("--data", default=None, help="data folder (default: the scenario's folder under ../shared/data)")
    data.add_argument("--seed", type=int, default=0, help="seed for splits, sampling and training")

    p = argparse.ArgumentParser(prog="adapterhub", description="One frozen, quantized base LLM; many LoRA "
                                "adapters for recommendation scenarios.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("list", parents=[common], help="list the registry's adapters")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)
    s = sub.add_parser("show", parents=[common], help="print an adapter's card")
    s.add_argument("ref", help="name or name@vN")
    s.add_argument("--full", action="store_true", help="include the training log")
    s.set_defaults(func=cmd_show)
    s = sub.add_parser("score", parents=[common, model], help="P(yes) for prompts under an adapter ('base' = none)")
    s.add_argument("ref")
    s.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    s.add_argument("--file", help="a text file, one prompt per line")
    s.set_defaults(func=cmd_score)
    s = sub.add_parser("promote", parents=[common], help="make a version current")
    s.add_argument("ref", help="name@vN")
    s.set_defaults(func=cmd_promote)
    s = sub.add_parser("rm", parents=[common], help="remove a version (name@vN) or, with --all, an adapter")
    s.add_argument("ref")
    s.add_argument("--all", action="store_true", help="remove every version of a bare name")
    s.set_defaults(func=cmd_rm)

    s = sub.add_parser("train", parents=[common, model, data], help="train and publish a scenario adapter")
    s.add_argument("name", help="adapter name, e.g. news")
    s.add_argument("--description")
    s.add_argument("--force", action="store_true", help="make the new version current even if its metric is worse")
    for name, typ in (("r", int), ("alpha", float), ("dropout", float), ("lr", float), ("batch_size", int), ("grad_accum", int),
                      ("max_steps", int), ("epochs", float), ("n_train", int), ("n_valid", int), ("n_test", int),
                      ("eval_every", int), ("patience", int), ("distill_weight", float), ("domain_steps", int)):
        s.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, help=help_of(TrainConfig, name))
    s.add_argument("--targets", help="comma-separated: " + help_of(TrainConfig, "targets"))
    s.add_argument("--init-from", dest="init_from", help=help_of(TrainConfig, "init_from"))
    s.add_argument("--teacher", help=help_of(TrainConfig, "teacher"))
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", parents=[common, model, data], help="metrics of an adapter beside the base and baselines")
    s.add_argument("ref", help="name, name@vN, or 'base'")
    s.add_argument("--split", default="test", choices=["train", "valid", "test"])
    s.add_argument("--n", type=int, default=512, help="at most this many examples (whole groups)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("recommend", parents=[common, model], help="rank candidate items for a history")
    s.add_argument("ref")
    s.add_argument("--history", required=True, help="item texts, oldest first, separated by '|'")
    s.add_argument("--candidates", required=True, help="item texts separated by '|'")
    s.add_argument("-k", type=int, default=10)
    s.set_defaults(func=cmd_recommend)

    s = sub.add_parser("merge", parents=[common, model], help="merge adapters into a new one (cat is exact)")
    s.add_argument("adapters", nargs="+", help="REF=WEIGHT ... (equal weights when omitted)")
    s.add_argument("--method", default="cat", help="cat (exact), linear (PEFT's, cross terms), svd, ties, dare_ties")
    s.add_argument("--name", help="name of the merged adapter (default: the parents' names joined by '-')")
    s.add_argument("--rank", type=int, help="rank of svd/ties/dare_ties merges (default: the largest parent rank)")
    s.add_argument("--density", type=float, default=0.5, help="share of entries ties/dare_ties keep")
    s.set_defaults(func=cmd_merge)

    s = sub.add_parser("export", parents=[common, model], help="write a standalone merged model or the PEFT folder")
    s.add_argument("ref")
    s.add_argument("out", help="output folder")
    s.add_argument("--peft", action="store_true", help="write the PEFT adapter folder instead of merging into the base")
    s.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("bench", parents=[common], help="run the benchmark suite (benchmarks/) and write its report")
    from .bench import add_arguments
    add_arguments(s)
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("demo", parents=[common, model], help="the main job: load the shipped adapters, recommend, "
                       "then train -> publish -> load a small example adapter")
    s.add_argument("--train-steps", type=int, default=30, help="steps of the small training example")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(message)s" if not args.debug else "%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "bitsandbytes", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return args.func(args) or 0
    except (AdapterHubError, FileNotFoundError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
