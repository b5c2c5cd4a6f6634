"""How much batching users can buy on this machine: the forward alone, one user per forward
against many users per forward, same tokens.

    flock /tmp/adapterhub-heavy.lock python benchmarks/batch_scoring/ceiling.py     # ~3 min, 2 cores

`score-file` and a loop of `recommend` calls run the same packed forward (a user's history once,
then its candidates over it); what batching users into one forward can save is the per-forward cost
that does not grow with tokens. This measures that ceiling directly, without data or Python
around the forward: synthetic users shaped like the batch_scoring benchmark's rows (a history
prefix of --prefix tokens and --candidates candidates of --suffix tokens each, ~500 tokens), over
the four shipped adapters (a user's adapter by turn, as mixed-scenario input), through
Hub.packed_logits under inference_mode: --users users one forward each, against the same users
in forwards of --batch users. Ways take turns; the value is the median over turns of
(one-per-forward ms / batched ms). If it is below 1.5, no batching of whole users reaches
`score-file`'s 1.5x goal on this machine.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
NAMES = ("video", "music", "ecommerce", "news")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--quant", default="nf4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8, help="users per forward in the batched way")
    ap.add_argument("--prefix", type=int, default=160)
    ap.add_argument("--candidates", type=int, default=17)
    ap.add_argument("--suffix", type=int, default=20)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--registry", default="adapters")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from adapterhub.bench.common import Recorder
    from adapterhub.hub import Hub
    hub = Hub(base=args.base, registry=args.registry, quant=args.quant, device="cpu")
    keys = [hub.load(n).key for n in NAMES]
    rng = random.Random(0)
    vocab = hub.tokenizer.vocab_size

    def ids(n):
        return [rng.randrange(100, vocab) for _ in range(n)]
    users = [(keys[i % len(keys)], (ids(args.prefix), [ids(args.suffix) for _ in range(args.candidates)]))
             for i in range(args.users)]
    tokens = sum(len(p) + sum(map(len, s)) for _, (p, s) in users)

    def one_each():
        for key, group in users:
            hub.packed_logits(key, [group])

    def batched():
        for i in range(0, len(users), args.batch):
            chunk = users[i:i + args.batch]
            hub.packed_logits([k for k, _ in chunk], [g for _, g in chunk])

    ways = {"one_per_forward": one_each, "batched": batched}
    times = {w: [] for w in ways}
    with torch.inference_mode():
        one_each(), batched()   # warm-up
        for turn in range(args.turns):
            order = list(ways) if turn % 2 == 0 else list(ways)[::-1]
            for w in order:
                t = time.perf_counter()
                ways[w]()
                times[w].append(time.perf_counter() - t)
    ratio = statistics.median(a / b for a, b in zip(times["one_per_forward"], times["batched"]))
    out = {"users": args.users, "batch": args.batch, "tokens": tokens, "threads": args.threads,
           "one_per_forward_s": statistics.median(times["one_per_forward"]),
           "batched_s": statistics.median(times["batched"]), "ceiling": ratio,
           "tokens_per_s_batched": tokens / statistics.median(times["batched"])}
    rec = Recorder("batch_ceiling", args.out, base=args.base, device="cpu", quant=args.quant)
    rec.record("batching_ceiling", {k: out[k] for k in ("users", "batch", "threads")}, ratio, unit="x", extra=out)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
