"""The bench command (adapterhub.bench's suites) and the demo (the main job)."""
from __future__ import annotations


def cmd_bench(args) -> int:
    from ..bench import run_from_args
    return run_from_args(args)


def cmd_demo(args) -> int:
    from ..demo import run_demo
    return run_demo(args)



def add_commands(sub, parents: dict) -> None:
    common, model = parents["common"], parents["model"]
    s = sub.add_parser("bench", parents=[common], help="run the benchmark suites (adapterhub.bench) and write their report")
    from ..bench import add_arguments
    add_arguments(s)
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("demo", parents=[common, model], help="the main job: load the shipped adapters, recommend, "
                       "then train -> publish -> load a small example adapter")
    s.add_argument("--train-steps", type=int, default=30, help="steps of the small training example")
    s.set_defaults(func=cmd_demo)
