"""adapterhub command line: parse -> check -> call the public API -> print. Errors become exit code 2 here.

One module per command family, each with add_commands(sub, parents): registry (list, show, promote,
rm), scoring (score, eval, recommend, prompt, facts), catalog (catalog build), training (train), merging (merge, export),
serving (serve), running (bench, demo). common.py holds what they share. Nothing here imports torch
at start-up: a command imports what it needs when it runs.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from ..errors import AdapterHubError
from .common import (DEFAULT_REGISTRY, REGISTRY_ENV, config_overrides as _config_overrides,  # noqa: F401 (tests)
                     data_options as _data_options, options_for as _options_for, parents)

FAMILIES = ("registry", "scoring", "catalog", "training", "merging", "serving", "running", "batch")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adapterhub", description="One frozen, quantized base LLM; many LoRA "
                                "adapters for recommendation scenarios.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="one of these; 'adapterhub COMMAND --help' lists its options")
    shared = parents()
    for family in FAMILIES:
        importlib.import_module(f"{__name__}.{family}").add_commands(sub, shared)
    return p


def _quiet_stdout() -> None:
    """After a broken pipe: later writes (and the flush at exit) go nowhere instead of failing again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.registry = args.registry or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(message)s" if not args.debug else "%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "bitsandbytes", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        code = args.func(args) or 0
        sys.stdout.flush()  # a reader that went away (`| head`) shows up here, not at exit
        return code
    except BrokenPipeError:  # like a Unix tool: stop quietly; the shell sees 128 + SIGPIPE
        _quiet_stdout()
        return 128 + getattr(signal, "SIGPIPE", 13)
    except (AdapterHubError, OSError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
