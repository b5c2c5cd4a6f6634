"""The serve command: an HTTP API over one hub (the 'serve' extra)."""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import RegistryError
from .common import REGISTRY_ENV, check_refs


def cmd_serve(args) -> int:
    if not Path(args.registry).is_dir():
        raise RegistryError(f"registry '{args.registry}' does not exist. Pass --registry PATH or set {REGISTRY_ENV}")
    preload = [r.strip() for r in (args.preload or "").split(",") if r.strip()]
    check_refs(args, *preload)
    from ..hub import Hub
    from ..serve import serve  # before the base loads: a missing 'serve' extra costs nothing
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



def add_commands(sub, parents: dict) -> None:
    common, model = parents["common"], parents["model"]
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

