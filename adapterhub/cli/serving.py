"""The serve command: an HTTP API over one hub (the 'serve' extra; docs/SERVING.md)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..errors import ConfigError, RegistryError
from .common import REGISTRY_ENV, add_config_options, check_refs, config_overrides

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cmd_serve(args) -> int:
    from ..serve.config import ADMIN_KEY_ENV, API_KEY_ENV, Limits, keys_from  # no FastAPI before the checks
    if not Path(args.registry).is_dir():
        raise RegistryError(f"registry '{args.registry}' does not exist. Pass --registry PATH or set {REGISTRY_ENV}")
    preload = [r.strip() for r in (args.preload or "").split(",") if r.strip()]
    check_refs(args, *preload)
    overrides = config_overrides(args, Limits)
    if args.threads is not None and "max_queue" not in overrides:
        overrides["max_queue"] = args.threads  # the option's old name
    limits = Limits(**overrides).check()
    for name in ("drain_delay_s", "drain_timeout_s"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
    if args.gil_switch_ms is not None and not 0 < args.gil_switch_ms <= 100:
        raise ConfigError(f"--gil-switch-ms must be in (0, 100], got {args.gil_switch_ms}")
    from ..serve import Auth, serve  # before the base loads: a missing 'serve' extra costs nothing
    auth = Auth(api_keys=keys_from(args.api_key, API_KEY_ENV), admin_keys=keys_from(args.admin_key, ADMIN_KEY_ENV),
                allow_runtime_loading=args.allow_runtime_loading)
    log = logging.getLogger(__name__)
    if args.host not in LOOPBACK and not auth.api_keys:
        log.warning("serving on %s with no API key: anyone who can reach this address can score and load "
                    "adapters (pass --api-key or set %s)", args.host, API_KEY_ENV)
    if args.no_access_log:
        logging.getLogger("adapterhub.access").setLevel(logging.WARNING)

    def build_hub():
        from ..hub import Hub
        hub = Hub(base=args.base, registry=args.registry, quant=args.quant, device=args.device,
                  max_resident=args.max_resident)
        for ref in preload:
            hub.load(ref)
        log.info("adapterhub: %s loaded, %d adapter(s) resident; ready", args.base, len(hub.resident()))
        return hub
    print(f"adapterhub serving {args.registry}/ over {args.base} on http://{args.host}:{args.port} "
          f"(GET /ready says when the base is loaded; Ctrl-C or SIGTERM drains and stops)", flush=True)
    # A forward is hundreds of small ops, each giving the GIL back and taking it again; beside a thread
    # running Python each take-back waits up to this interval (benchmarks/serving_load/gil_convoy.py)
    before = sys.getswitchinterval()
    if args.gil_switch_ms is not None:
        sys.setswitchinterval(args.gil_switch_ms / 1000)
    try:
        serve(build_hub, host=args.host, port=args.port, window_ms=args.window_ms, batch=not args.no_batch,
              limits=limits, auth=auth, drain_delay_s=args.drain_delay_s, drain_timeout_s=args.drain_timeout_s,
              limit_concurrency=args.limit_concurrency, http=args.http, loop=args.loop, gc_freeze=True,
              processes=args.forward_in == "process", bulk_idle=args.bulk_priority == "idle")
    finally:
        sys.setswitchinterval(before)  # main() called in a process of the caller's: it gets its own back
    return 0


def add_commands(sub, parents: dict) -> None:
    from ..serve.config import Limits
    common, model = parents["common"], parents["model"]
    s = sub.add_parser("serve", parents=[common, model], help="an HTTP API over one hub: /v1/rerank, /v1/models, "
                       "/score, /recommend, /health, /ready, /metrics (needs the 'serve' extra; docs/SERVING.md)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--preload", default=None, help="adapters to load at start, comma-separated (others load on "
                   "first use)")
    s.add_argument("--api-key", default=None, help="API key(s) every request must send as 'Authorization: Bearer "
                   "KEY', comma-separated (default: $ADAPTERHUB_API_KEY; none: no authentication)")
    s.add_argument("--admin-key", default=None, help="key(s) for loading/unloading adapters at run time (default: "
                   "$ADAPTERHUB_ADMIN_KEY, else the API key)")
    s.add_argument("--allow-runtime-loading", action="store_true", help="enable POST /adapters/load, "
                   "/adapters/unload and /v1/(un)load_lora_adapter (off by default)")
    s.add_argument("--window-ms", type=float, default=None, help="how long a request waits for others to join its "
                   "batch (default: adapterhub.batcher.WINDOW_MS, 2)")
    s.add_argument("--no-batch", action="store_true", help="each request runs its own forward instead of joining "
                   "a mixed batch (on a CPU where a forward is compute-bound, batching does not raise throughput: "
                   "README, Serving)")
    s.add_argument("--threads", type=int, default=None, help="old name of --max-queue")
    s.add_argument("--max-resident", type=int, default=64, help="adapters resident at once, least recently used "
                   "evicted (default 64)")
    add_config_options(s, Limits)
    s.add_argument("--drain-delay-s", type=float, default=0.0, help="on SIGTERM, how long /ready says 503 while "
                   "requests are still served, before new work is refused (default 0; behind a load balancer: its "
                   "probe interval)")
    s.add_argument("--drain-timeout-s", type=float, default=30.0, help="then how long requests in flight may "
                   "finish before they get a 503 and the server exits (default 30)")
    s.add_argument("--limit-concurrency", type=int, default=None, help="uvicorn's bound on connections + tasks, "
                   "past which it answers 503 (default 4 x max-queue + 64)")
    s.add_argument("--http", choices=("auto", "httptools", "h11"), default="auto", help="uvicorn's HTTP parser "
                   "(default auto: httptools, in C, when installed, as the 'serve' extra does; else h11, in Python)")
    s.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto", help="uvicorn's event loop "
                   "(default auto: uvloop when installed; else asyncio)")
    s.add_argument("--no-access-log", action="store_true", help="no per-request log line (adapterhub.access)")
    s.add_argument("--gil-switch-ms", type=float, default=None, help="the process's GIL switch interval (default: "
                   "Python's, 5): how long a forward may wait to take the GIL back from a thread running Python. "
                   "0.1 guards forwards from long Python work beside them, and slows that work (docs/SERVING.md)")
    s.add_argument("--forward-in", choices=("thread", "process"), default="thread", help="where the forwards run: "
                   "'thread' (default), in this process; 'process', a process per batcher lane holding its own copy "
                   "of the base (the bulk lane's at idle priority), so on a CPU they do not wait for the GIL while "
                   "requests carry long Python work (docs/SERVING.md)")
    s.add_argument("--bulk-priority", choices=("normal", "idle"), default="normal", help="the bulk lane's thread: "
                   "'idle' runs it at the OS's idle priority (Linux), so light requests take the core from a heavy "
                   "forward at once; only when the server has cores of its own (taskset, a cpuset): beside busy "
                   "processes heavy requests stall and light ones can wait for the GIL. No effect under --forward-in "
                   "process, whose bulk lane always runs at idle priority (docs/SERVING.md)")
    s.set_defaults(func=cmd_serve)
