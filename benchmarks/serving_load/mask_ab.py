"""A light request's forward with transformers' causal mask skipped (the tree) against built (before):
alternating turns in one process, the same requests, base only, one torch thread.

    OMP_NUM_THREADS=1 python benchmarks/serving_load/mask_ab.py                          # random:small
    OMP_NUM_THREADS=1 python benchmarks/serving_load/mask_ab.py --base smollm2-135m --turns 5

The packed attention reads its layout and never a mask, so packing.last_hidden hands transformers a
4-D mask it passes on as it is. "built" patches that back to None: transformers then builds a causal
mask and searches the position ids for packed sequences on every forward, as before.
"""
import argparse
import random
import statistics
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="random:small")
    ap.add_argument("--turns", type=int, default=15, help="alternating turns of each")
    ap.add_argument("--requests", type=int, default=40, help="requests (1-3 rows each) per turn")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from adapterhub import packing
    from adapterhub.hub import Hub
    hub = Hub(base=args.base, registry=tempfile.mkdtemp(), quant="fp32", device="cpu")
    rng = random.Random(0)
    prompts = [f"The user liked item {rng.randrange(1000)}, item {rng.randrange(1000)}. Will the user like "
               f"item {rng.randrange(1000)}? Answer:" for _ in range(24)]
    requests = [[(None, rng.choice(prompts)) for _ in range(rng.randint(1, 3))] for _ in range(args.requests)]
    skipped = packing._unused_mask
    ways = {"mask skipped (tree)": skipped, "mask built (before)": lambda device: None}
    for rows in requests[:5]:
        hub.score(rows)
    ms = {name: [] for name in ways}
    for _ in range(args.turns):
        for name, fn in ways.items():
            packing._unused_mask = fn
            t = time.perf_counter()
            for rows in requests:
                hub.score(rows)
            ms[name].append(1000 * (time.perf_counter() - t) / len(requests))
    packing._unused_mask = skipped
    for name, v in ms.items():
        print(f"{args.base}: {name}: {statistics.median(v):.3f} ms a request (median of {len(v)} turns)")
    a, b = (statistics.median(v) for v in ms.values())
    print(f"skipped / built: {a / b:.3f}")


if __name__ == "__main__":
    main()
