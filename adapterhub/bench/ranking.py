"""Ranking throughput (candidates/s) with and without history-prefix reuse.

    python -m adapterhub.bench.ranking --quick                              # CPU, SmolLM2-135M NF4, ~1 min
    python -m adapterhub.bench.ranking --base random:llama-1b --device cuda

One user with a 10-item history (the video template) ranks N candidates under one adapter:
  reuse     hub.score_candidates(..., reuse_prefix=True): the history prefix runs once, its KV
            cache is shared by every candidate (each forward only runs the candidate's suffix)
  no reuse  the same candidates as N full prompts (prefix + suffix), batched
Rows (suite "ranking"): ranking_candidates_per_s {candidates, reuse_prefix}, with the prompt's
token counts; max_abs_p_diff says both paths give the same scores. With --budget-s the repeats
shrink to fit (params.repeat).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from .common import Budget, Recorder, add_args, median_ms, publish_random_adapters, quant_list

CANDIDATES, CANDIDATES_QUICK = (20, 100), (20,)
BATCH = 20
REPEAT, REPEAT_QUICK = 10, 3
HISTORY = ["Star Wars (1977)", "Fargo (1996)", "Toy Story (1995)", "Pulp Fiction (1994)", "Twelve Monkeys (1995)",
           "Contact (1997)", "Return of the Jedi (1983)", "Scream (1996)", "Liar Liar (1997)", "Air Force One (1997)"]


@torch.no_grad()
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap, quants="nf4")
    ap.add_argument("--batch", type=int, default=BATCH, help="candidates per forward")
    args = ap.parse_args(argv)
    from .. import prompts
    from ..hub import Hub
    quants = quant_list(args.quants, args.device)
    counts, repeat = (CANDIDATES_QUICK, REPEAT_QUICK) if args.quick else (CANDIDATES, REPEAT)
    budget = Budget(args.budget_s, parts=len(counts) * len(quants))
    rec = Recorder("ranking", args.out, base=args.base, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        for quant in quants:
            rec.context.update(quant=quant)
            if budget.over():
                rec.record("skipped", {"quant": quant}, None, unit="", extra={"reason": "time budget"})
                continue
            hub = Hub(base=args.base, registry=Path(tmp) / quant, quant=quant, device=args.device)
            key = hub.load(publish_random_adapters(hub, 1)[0]).key
            prefix = prompts.render_history("video", HISTORY)
            for n in counts:
                suffixes = [prompts.render_candidate("video", f"Candidate film number {i} ({1950 + i % 50})")
                            for i in range(n)]
                tokens = {"prefix_tokens": len(hub.encode(prefix)),
                          "suffix_tokens": sum(len(hub.encode(s, special=False)) for s in suffixes) / n}
                t = time.perf_counter()
                a = hub.score_candidates(key, prefix, suffixes, batch_size=args.batch)  # also the warm-up
                b = hub.score_candidates(key, prefix, suffixes, batch_size=args.batch, reuse_prefix=False)
                r = budget.fit(repeat, time.perf_counter() - t)  # repeats of both that fit
                diff = max(abs(x - y) for x, y in zip(a, b))
                for reuse in (True, False):
                    params = {"candidates": n, "reuse_prefix": reuse, "batch": args.batch, "repeat": r}
                    if budget.over():
                        rec.record("skipped", params, None, unit="", extra={"reason": "time budget"})
                        continue
                    ms = median_ms(lambda: hub.score_candidates(key, prefix, suffixes, batch_size=args.batch,
                                                                reuse_prefix=reuse), r)
                    rec.record("ranking_candidates_per_s", params, n / ms * 1000, unit="cand/s",
                               extra={"ms": ms, "max_abs_p_diff": diff, **tokens})
            del hub
    rec.print_table()


if __name__ == "__main__":
    sys.exit(main())
