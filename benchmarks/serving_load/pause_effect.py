"""Is a single call slower after a pause than in a loop, and is it the batcher's threads? One process,
no HTTP: the same light requests (1-3 rows over four random adapters, random:small, fp32, one torch
thread) sent with no pause, 0.05 s and 0.5 s before each, through hub.score directly (no thread to
wake) and through a Batcher (a worker thread), three turns each.

    OMP_NUM_THREADS=1 python benchmarks/serving_load/pause_effect.py
"""
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import NAMES, REFS, publish  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    from adapterhub.batcher import Batcher
    from adapterhub.hub import Hub
    from adapterhub.registry import Registry
    folder = Path(tempfile.mkdtemp()) / "adapters"
    hub = Hub(base="random:small", registry=folder, quant="fp32", device="cpu")
    for i, name in enumerate(NAMES):
        publish(Registry(folder), hub, name, seed=i + 1, scale=0.1)
    rng = random.Random(0)
    prompts = [f"The user liked item {rng.randrange(1000)}, item {rng.randrange(1000)}. Will the user like "
               f"item {rng.randrange(1000)}? Answer:" for _ in range(24)]
    batcher = Batcher(hub, window_ms=2)
    ways = {"hub.score": hub.score, "Batcher": batcher.score}
    for call in ways.values():
        for ref in REFS:
            call([(ref, prompts[0])])
    for turn in range(3):
        for name, call in ways.items():
            line = []
            for pause in (0.0, 0.05, 0.5):
                r, ms = random.Random(1), []
                for _ in range(40 if pause < 0.5 else 16):
                    rows = [(r.choice(REFS), r.choice(prompts)) for _ in range(r.randint(1, 3))]
                    time.sleep(pause)
                    t = time.perf_counter()
                    call(rows)
                    ms.append(1000 * (time.perf_counter() - t))
                line.append(f"pause {pause:g} s: {statistics.median(ms):.2f} ms")
            print(f"turn {turn + 1}, {name}: " + ", ".join(line))
    batcher.close()


if __name__ == "__main__":
    main()
