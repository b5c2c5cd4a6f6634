"""The train command: train a scenario adapter (or one adapter on several scenarios) and publish it."""
from __future__ import annotations

import logging
import os

from ..errors import ConfigError
from .common import (add_config_options, check_refs, config_overrides, make_hub, load_data, open_registry,
                     print_metrics)


CPU_DEFAULT_MINUTES = 30   # a first run on CPU ends, evaluates and publishes in about this long


def cmd_train(args) -> int:
    from ..config import TrainConfig
    from ..registry import check_name
    check_name(args.name)
    cfg = TrainConfig.from_dict(config_overrides(args, TrainConfig))
    if args.resume:   # before the data and the base load
        from ..train.resume import Checkpoints, run_folder
        folder = run_folder(args.registry, args.name)
        if not Checkpoints(folder, {}).exists():
            raise ConfigError(f"--resume: no checkpoint of '{args.name}' in {folder} (one is saved at every check); "
                              "start without --resume")
    check_refs(args, cfg.init_from, cfg.teacher, *(o.get("teacher") for o in cfg.scenario_options().values()))
    data = load_data(args)
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun / accelerate launch
        from accelerate import Accelerator
        accelerator = Accelerator(cpu=args.device == "cpu")
        if args.device == "auto":
            args.device = str(accelerator.device)
    hub = make_hub(args)
    if args.max_minutes is None and hub.device.type == "cpu":   # not given (`--max-minutes none`: no limit)
        cfg = cfg.replace(max_minutes=CPU_DEFAULT_MINUTES)
        logging.getLogger(__name__).info("budget: %d minutes of training, the default on CPU (--max-minutes N to "
                                         "change it, --max-minutes none for no limit)", CPU_DEFAULT_MINUTES)
    promote = True if args.force else None
    adapter, card = hub.train(args.name, data, cfg, promote=promote, description=args.description or "",
                              progress=None, accelerator=accelerator, force=args.force, resume=args.resume)
    if adapter is None:  # a non-main process of a multi-process run: the main one publishes
        return 0
    stopped = card["train"].get("interrupted")
    if stopped:
        print(f"interrupted at step {stopped['at_step']}: published the best check (step {card['train']['best_step']})")
    print(f"published {adapter.key} ({'current' if hub.registry.current(adapter.name) == adapter.version else 'not promoted'})")
    for scenario, part in (card.get("scenarios") or {card.get("scenario"): card}).items():
        if card.get("scenarios"):
            print(f"\n== {scenario}")
        print_metrics(part["metrics"], part["primary_metric"])
    print()
    for v in card.get("verdict", []):  # one line per baseline: wins or loses, by how much
        where = f"{v['scenario']} " if "scenario" in v else ""
        print(f"{v['model']} {'wins against' if v['wins'] else 'LOSES to'} {v['vs']} on {where}{v['split']} "
              f"{v['metric']}: {v['model_value']:.4f} vs {v['vs_value']:.4f} ({v['diff']:+.4f})")
    return 0


def cmd_reblend(args) -> int:
    from ..protocols import RANKING_TASKS, check
    from ..train import load_card_data
    from ..train.reblend import reblend
    check_refs(args, args.ref)
    card = open_registry(args).card(args.ref)
    data = load_card_data(card, args.data)   # the data it was trained on, as its card recorded it
    given = args.valid_protocols or ("sampled,catalog,popular" if data.task in RANKING_TASKS else "sampled")
    protocols = [check(p.strip()) for p in given.split(",") if p.strip()]
    hub = make_hub(args)
    promote = True if args.force else None
    adapter, card = reblend(hub, args.ref, data, protocols, promote=promote, progress=True, n_valid=args.n_valid)
    state = "current" if hub.registry.current(adapter.name) == adapter.version else "not promoted"
    print(f"published {adapter.key} ({state}): the weights of {card['reblend']['from']} with its blend refit on valid "
          f"under {', '.join(protocols)}")
    print(f"valid, {card['reblend']['n_valid_examples']} examples: the recipes cross-fitted (each fold of groups scored by a "
          f"blend fit on the others), its own blend and the rules as they are; chosen: {card['reblend']['chosen']}")
    for method, row in card["reblend"]["cross_fitted"].items():
        print(f"  {method:<22} " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()))
    if card["reblend"].get("protocol_held_out"):
        print("each protocol held out of the fit (scored by a blend fit on the other protocols only):")
        for method, row in card["reblend"]["protocol_held_out"].items():
            print(f"  {method:<22} " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()))
    print(f"measure it on test: adapterhub eval {adapter.key} --scenario {card['scenario']} --protocol all --update-card")
    return 0


def add_commands(sub, parents: dict) -> None:
    from ..config import TrainConfig
    common, model, data = parents["common"], parents["model"], parents["data"]
    s = sub.add_parser("train", parents=[common, model, data], help="train and publish a scenario adapter")
    s.add_argument("name", help="adapter name, e.g. news (a-z, 0-9, '_', '-')")
    s.add_argument("--description", help="one line for the card (default: '<scenario> recommendation adapter (<source>)')")
    s.add_argument("--force", action="store_true", help="publish even if the adapter loses to the bare base on valid, "
                   "and make the new version current even if its metric is worse")
    s.add_argument("--resume", action="store_true", help="continue the run of NAME that was killed or stopped: "
                   "from its last check, saved in REGISTRY/.runs/NAME/ (the same options; --max-minutes may change)")
    add_config_options(s.add_argument_group("training options (TrainConfig fields)"), TrainConfig)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("reblend", parents=[common, model], help="refit a version's fused blend on valid groups drawn "
                       "under several candidate protocols; publish it as a new version (same weights and facts)")
    s.add_argument("ref", help="the version whose blend to refit: name or name@vN (its facts rebuilt here)")
    s.add_argument("--data", default=None, help="the folder of the data it was trained on (default: "
                   "$ADAPTERHUB_DATA or ../shared/data)")
    s.add_argument("--valid-protocols", default=None, help="candidate protocols the valid "
                   "groups are drawn under, pooled (default sampled,catalog,popular; a pointwise scenario: sampled)")
    s.add_argument("--n-valid", type=int, default=None, help="valid examples (whole groups) to redraw, before the "
                   "protocols (default: the version's own n_valid); two versions reblended with one n_valid are judged "
                   "on the same examples")
    s.add_argument("--force", action="store_true", help="make the new version current even if its blend does "
                   "not beat the old one on cross-fitted valid")
    s.set_defaults(func=cmd_reblend)

