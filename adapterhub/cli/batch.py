"""Batch commands: score-file (rank every user of a JSONL/CSV/Parquet file into a folder of parts;
resumable; --engine ray for a Ray cluster). See docs/BATCH.md."""
from __future__ import annotations

import json
import os

from ..batch import BATCH_TOKENS, ENGINES, GROUP_SIZE, IN_FORMATS, OUT_FORMATS, PART_ROWS
from ..errors import AdapterHubError, ConfigError
from .common import check_refs, make_hub


def _positive(text: str) -> int:
    import argparse
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer >= 1")
    return value


def cmd_score_file(args) -> int:
    if not os.path.isfile(args.input):
        raise AdapterHubError(f"no such input file: {args.input} (give a .jsonl, .csv or .parquet file of rows "
                              "user, history, candidates; see docs/BATCH.md)")
    if args.engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("--engine ray needs Ray Data: pip install 'adapterhub[ray]' (or: pip install "
                              "'ray[data]'), or leave --engine out to score on this machine") from None
    check_refs(args, args.adapter)  # a typo in --adapter fails before the base loads
    hub = make_hub(args)
    summary = hub.score_file(args.input, args.output, adapter=args.adapter, k=args.k, raw=args.raw,
                             scenario=args.scenario, catalog=args.catalog, skip_bad=args.skip_bad,
                             engine=args.engine, in_format=args.in_format, out_format=args.out_format,
                             part_rows=args.part_rows, batch_tokens=args.batch_tokens, group_size=args.group_size,
                             overwrite=args.overwrite, progress=not args.no_progress, actors=args.actors,
                             workers=args.workers, threads=args.threads)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    if summary.get("already_complete"):
        print(f"{args.output}: already complete ({summary['rows']} rows); nothing to do")
        return 0
    print(f"scored {summary['scored']} of {summary['rows']} rows into {summary['out']} "
          f"({summary['parts']} parts, {summary['resumed_parts']} done before this run; "
          f"{summary['rows_per_s']} rows/s this run)")
    if summary["bad"]:
        print(f"{summary['bad']} bad rows set aside in {summary['bad_file']}")
    return 0


def add_commands(sub, parents: dict) -> None:
    common, model = parents["common"], parents["model"]
    s = sub.add_parser("score-file", parents=[common, model],
                       help="rank every row (user, history, candidates) of a JSONL/CSV/Parquet file into a folder; "
                            "resumable")
    s.add_argument("input", metavar="IN", help="rows: user, history, candidates, and optionally adapter, k, disliked, "
                   "scenario (.jsonl, .csv or .parquet; docs/BATCH.md)")
    s.add_argument("output", metavar="OUT", help="a folder: part-NNNNNN.jsonl files in input order, _manifest.json, "
                   "_SUCCESS when done. Run the same command again to resume a killed job")
    s.add_argument("--adapter", metavar="REF", help="adapter for rows without an 'adapter' field: name or name@vN")
    s.add_argument("-k", type=_positive, default=10, metavar="N",
                   help="ranked candidates kept per row (a row's 'k' wins; default 10)")
    s.add_argument("--raw", action="store_true", help="rank by the adapter's P(yes) alone, not the fused score")
    s.add_argument("--scenario", help="for an adapter trained jointly on several scenarios: the scenario of rows "
                   "without a 'scenario' field")
    s.add_argument("--catalog", metavar="PATH", help="item facts from your own catalog (a facts/catalog JSON file) "
                   "for every row, instead of each version's own")
    s.add_argument("--skip-bad", action="store_true", help="write bad rows (line, error, row) to OUT/_bad_rows.jsonl "
                   "and score the rest, instead of stopping at the first")
    s.add_argument("--engine", choices=ENGINES, default="local", help="local: this process (default); ray: a Ray "
                   "Data actor pool, on the cluster at $RAY_ADDRESS or a local Ray (pip install 'adapterhub[ray]')")
    s.add_argument("--actors", type=_positive, default=1, metavar="N",
                   help="--engine ray: actors in the pool, each holding one Hub (default 1)")
    s.add_argument("--workers", type=_positive, default=1, metavar="N", help="the local engine on N processes, "
                   "each with its own copy of the base, loaded first (on a CPU, for long jobs of many parts: several "
                   "processes of fewer threads score more once started; default 1: this process)")
    s.add_argument("--threads", type=_positive, default=None, metavar="N", help="torch threads per --workers "
                   "process (default: the cores shared out) or per Ray actor (default: as many as this process uses)")
    s.add_argument("--in-format", choices=IN_FORMATS, help="IN's format when its extension does not say")
    s.add_argument("--out-format", choices=OUT_FORMATS, default="jsonl", help="parts as JSONL (default) or Parquet")
    s.add_argument("--part-rows", type=_positive, default=PART_ROWS, metavar="N",
                   help=f"input rows per committed part, fixed for the job (default {PART_ROWS})")
    s.add_argument("--batch-tokens", type=_positive, default=BATCH_TOKENS, metavar="N",
                   help=f"tokens per forward (default {BATCH_TOKENS})")
    s.add_argument("--group-size", type=_positive, default=GROUP_SIZE, metavar="N",
                   help=f"candidates sharing one run of their user's history (default {GROUP_SIZE})")
    s.add_argument("--overwrite", action="store_true",
                   help="OUT holds another job's parts: remove them and start again")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print the job's summary as JSON")
    s.set_defaults(func=cmd_score_file)
