"""Scoring commands: score (prompts), eval (metrics on a split), recommend, prompt (what the model
reads), facts (rebuild a version's facts)."""
from __future__ import annotations

import json
import sys

from ..errors import AdapterHubError, ConfigError, DataError
from .common import check_refs, make_hub, load_data, print_metrics

TAIL_CHARS = 80  # of each prompt, in `score`'s output: prompts sharing a history differ at the end


def _tail(text: str, n: int = TAIL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else "..." + text[-(n - 3):]


def cmd_score(args) -> int:
    prompts = list(args.prompt or [])
    if args.file:
        with open(args.file, encoding="utf-8") as fh:
            prompts += [line.rstrip("\n") for line in fh if line.strip()]
    if not prompts:
        raise AdapterHubError("nothing to score: give --prompt TEXT or --file PATH (one prompt per line)")
    check_refs(args, args.ref)
    hub = make_hub(args)
    ref = None if args.ref == "base" else args.ref
    scores = hub.score([(ref, p) for p in prompts])
    if args.json:
        print(json.dumps([{"index": i, "score": s, "prompt": p} for i, (p, s) in enumerate(zip(prompts, scores), 1)], indent=2))
        return 0
    for i, (p, s) in enumerate(zip(prompts, scores), 1):
        print(f"{i}\t{s:.4f}\t{_tail(p)}")
    return 0


def cmd_eval(args) -> int:
    from ..protocols import PROTOCOLS, RANKING_TASKS, check
    from ..scoring import cap_examples, evaluate_split, evaluate_version, primary_metric
    check_refs(args, args.ref)
    data = load_data(args)
    protocols = [check(p.strip()) for p in (PROTOCOLS if args.protocol == "all" else args.protocol.split(","))]
    if data.task not in RANKING_TASKS:
        if protocols != ["sampled"] and args.protocol != "all":
            raise ConfigError(f"--protocol {args.protocol}: scenario '{data.scenario}' is {data.task}, its candidates "
                              "are not groups to redraw; its metrics include per-user AUC under --protocol sampled")
        protocols = ["sampled"]
    examples = cap_examples(data.splits[args.split], args.n or 512, args.seed)
    labels = sorted({ex.label for ex in examples})
    if labels != [0, 1]:
        found = f"only label {labels[0]} in its {len(examples)} examples" if labels else "no examples"
        raise DataError(f"the {args.split} split of scenario '{data.scenario}' has {found}; its metrics need both "
                        "labels 0 and 1: evaluate another split (--split) or more examples (--n)")
    if args.update_card and (args.ref == "base" or args.catalog):
        raise ConfigError("--update-card writes a version's figures on its own examples and facts: give a version "
                          "(not 'base'), and leave --catalog out")
    hub = make_hub(args)
    if args.ref == "base":
        result = {"ref": "base", "split": args.split, "n_examples": len(examples),
                  "protocols": {"sampled": evaluate_split(hub, data, examples, None, seed=args.seed, progress=True)}}
    else:   # as a client calls it: the version's facts and fused blend, on its card's examples
        result = None
        for protocol in protocols:   # one at a time: with --update-card, each is in the card as soon as it is done
            one = evaluate_version(hub, args.ref, data, args.split, (protocol,), n=args.n, seed=args.seed,
                                   progress=True, catalog=args.catalog)
            if args.update_card:
                from ..cards import refresh
                refresh(hub.registry, one["ref"], one, "adapterhub " + " ".join(sys.argv[1:]), subset=args.n is not None)
            result = one if result is None else {**result, "protocols": {**result["protocols"], **one["protocols"]}}
    if args.json:
        print(json.dumps({**result, "n": result["n_examples"], "metrics": result["protocols"].get("sampled")}, indent=2))
        return 0
    for protocol, rows in result["protocols"].items():
        print(f"\n== protocol {protocol} ({result['ref']}, {args.split}, {result['n_examples']} examples before redrawing)")
        if rows is None:
            print("no group: every positive of this split has train interactions")
        else:
            print_metrics({args.split: rows}, primary_metric(data.task))
    return 0


def cmd_recommend(args) -> int:
    history = [h.strip() for h in args.history.split("|") if h.strip()]
    candidates = [c.strip() for c in args.candidates.split("|") if c.strip()]
    if not candidates:
        raise AdapterHubError(f"--candidates {args.candidates!r} names no item: give item texts separated by '|', "
                              "e.g. --candidates 'Alien (1979)|Emma (1996)'")
    if args.k < 1:
        raise AdapterHubError(f"-k {args.k}: give how many items to print (>= 1)")
    check_refs(args, args.ref)
    hub = make_hub(args)
    ranked = hub.load(args.ref).recommend(history, candidates, k=args.k, raw=args.raw, catalog=args.catalog)
    for rank, (item, score) in enumerate(ranked, 1):
        print(f"{rank:>3}. {score:.4f}  {item}")
    return 0


def cmd_prompt(args) -> int:
    """Exactly what the model reads for each candidate: the version's facts, no model run."""
    from .. import recommend
    history = [h.strip() for h in args.history.split("|") if h.strip()]
    candidates = [c.strip() for c in args.candidate if c.strip()]
    if not candidates:
        raise AdapterHubError("give at least one --candidate ITEM (a title or a dataset id)")
    check_refs(args, args.ref)
    from ..registry import Registry
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
    from ..registry import Registry
    from ..train import rebuild_facts
    check_refs(args, args.ref)
    registry = Registry(args.registry)
    card = registry.card(args.ref)
    if card.get("scenarios") and args.format is None:  # jointly trained: each scenario's data, as recorded
        from ..datasets import load
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
    print(f"wrote {rebuild_facts(registry, args.ref, load_data(args))}")
    return 0



def add_commands(sub, parents: dict) -> None:
    common, model, data = parents["common"], parents["model"], parents["data"]
    s = sub.add_parser("score", parents=[common, model], help="P(yes) for prompts under an adapter ('base' = none)")
    s.add_argument("ref", help="adapter: name, name@vN, or 'base' for the base without an adapter")
    s.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    s.add_argument("--file", help="a text file, one prompt per line")
    s.add_argument("--json", action="store_true", help="print [{index, score, prompt}] as JSON instead of "
                   f"'index<TAB>score<TAB>the prompt's last {TAIL_CHARS} characters' lines")
    s.set_defaults(func=cmd_score)
    s = sub.add_parser("eval", parents=[common, model, data], help="metrics of an adapter beside the base and baselines")
    s.add_argument("ref", help="adapter: name, name@vN, or 'base' for the base without an adapter")
    s.add_argument("--split", default="test", choices=["train", "valid", "test"], help="the split to evaluate (default test)")
    s.add_argument("--n", type=int, default=None, help="at most this many examples (whole groups; default: the "
                   "examples the version's card was measured on when --data is what it was trained on, else 512)")
    s.add_argument("--protocol", default="sampled", help="candidate protocol(s), comma-separated: sampled (the "
                   "loader's negatives), catalog (uniform over the whole item file), popular (by train popularity), "
                   "new (new items only), or all (docs/DATA.md states each rule; default sampled)")
    s.add_argument("--catalog", default=None, metavar="FILE", help="score with item facts from this catalog "
                   "(adapterhub catalog build) instead of the version's own")
    s.add_argument("--update-card", action="store_true", help="also write the figures into the version's card "
                   "(card.json only; 'adapterhub show REF --table' prints them); with --n, a sample of the card's "
                   "examples: every protocol, sampled too, goes beside the card's own figures, which stay")
    s.add_argument("--json", action="store_true", help="print {ref, split, n, metrics, protocols} as JSON instead of tables")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("recommend", parents=[common, model], help="rank candidate items for a history")
    s.add_argument("ref", help="adapter: name or name@vN")
    s.add_argument("--history", required=True, help="item texts, oldest first, separated by '|'")
    s.add_argument("--candidates", required=True, help="item texts separated by '|'")
    s.add_argument("-k", type=int, default=10, help="print the k best candidates (default 10)")
    s.add_argument("--raw", action="store_true", help="rank by the adapter's P(yes) alone, not the fused score")
    s.add_argument("--catalog", default=None, metavar="FILE", help="item facts from your own catalog (adapterhub "
                   "catalog build) instead of the version's own")
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

