"""Merging commands: merge adapters into a new one, export a version (merged into the base, or as
the PEFT folder vLLM and LoRAX load)."""
from __future__ import annotations

from ..errors import AdapterHubError, ConfigError
from .common import check_refs, make_hub


def cmd_merge(args) -> int:
    from ..errors import did_you_mean
    from ..merge import METHODS
    from ..registry import check_name
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
    check_refs(args, *weights)
    hub = make_hub(args)
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
    from ..export import check_out
    check_out(args.out, args.dtype, args.overwrite)
    check_refs(args, args.ref)
    hub = make_hub(args)
    out = hub.export(args.ref, args.out, merge_into_base=not args.peft, dtype=args.dtype, overwrite=args.overwrite)
    kind = "PEFT adapter folder (PEFT, vLLM, LoRAX)" if args.peft else f"standalone {args.dtype} model folder"
    print(f"wrote {kind} to {out}")
    return 0



def add_commands(sub, parents: dict) -> None:
    common, model = parents["common"], parents["model"]
    s = sub.add_parser("merge", parents=[common, model], help="merge adapters into a new one (cat is exact)")
    s.add_argument("adapters", nargs="+", help="REF=WEIGHT ... (without weights: the default rule, see docs/MERGING.md)")
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

