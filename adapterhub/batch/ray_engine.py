"""The batch job on Ray Data: the same parts, scored by a pool of actors that each hold one Hub.

    pip install 'adapterhub[ray]'
    RAY_ADDRESS=ray://head:10001 adapterhub score-file IN OUT --adapter news --engine ray --actors 8

The driver (this process) scans IN and plans its parts, as the local engine does. The pending
parts become a Ray dataset of part descriptions (`ray.data.from_items`); `map_batches` with an
actor pool (`ray.data.ActorPoolStrategy`) hands one part at a time to a PartScorer actor, which
reads that part of IN itself (IN must be readable at the same path on every node: a shared file
system) and scores it with scorer.Scorer, exactly as the local engine does. The ranked rows stream
back in part order (`iter_rows`, order preserved) and the driver commits each part to OUT (so OUT
needs to be reachable from the driver only), so resuming, bad rows and pinned versions work as
they do locally, and each part's rows are identical to the local engine's.
"""
from __future__ import annotations

import json
import logging
import os

from ..errors import ConfigError
from .readers import Part, Scan
from .scorer import Options, PartResult
from .workers import PartScorer, scorer_args

log = logging.getLogger(__name__)


class RayPartScorer(PartScorer):
    """A Ray Data actor: one Hub (built once, on the actor's node), then the parts of each batch."""

    def __call__(self, batch: dict) -> dict:
        out = {"part": [], "result": []}
        for values in zip(*(batch[k] for k in ("index", "first", "rows", "offset", "line"))):
            res = self.score(Part(*(int(v) for v in values)))
            out["part"].append(res.index)
            out["result"].append(json.dumps({"records": res.records, "bad": res.bad, "pins": res.pins}))
        return out


def run(hub, scan: Scan, pending: list[Part], options: Options, pins: dict, facts: dict | None, actors: int = 1,
        threads: int | None = None):
    """Yield each pending part's PartResult, in part order. facts: the catalog's, for every row (or None)."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without its Data extra lacks it)
    except ImportError:
        raise ConfigError("engine='ray' needs Ray Data: pip install 'adapterhub[ray]' (or: pip install "
                          "'ray[data]'), or use engine='local'") from None
    import torch
    if not pending:
        return
    threads = threads or torch.get_num_threads()
    if not ray.is_initialized():
        # RAY_ADDRESS (or `ray start --head` on this machine) names a cluster; otherwise Ray starts
        # one here. The workers import adapterhub from the same installation as the driver.
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    items = [{"index": p.index, "first": p.first, "rows": p.rows, "offset": p.offset, "line": p.line} for p in pending]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(RayPartScorer, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads,
                        fn_constructor_kwargs=scorer_args(hub, scan, options, pins, facts, threads))
    for row in ds.iter_rows():
        res = json.loads(row["result"])
        yield PartResult(int(row["part"]), res["records"], res["bad"], res["pins"])
