"""How much a forward slows down beside other Python threads (the server's request threads and event
loop run Python while the batcher's worker runs a forward). README.md here, "The GIL convoy".

    OMP_NUM_THREADS=1 python benchmarks/serving_load/gil_convoy.py            # random:small, ~1 min
    OMP_NUM_THREADS=1 python benchmarks/serving_load/gil_convoy.py --forward-in process   # as serve --forward-in

A forward is hundreds of small torch ops; each releases the GIL and takes it back. Beside a thread
running Python, every take-back can wait up to sys.getswitchinterval(). Prints the median and p95 of
one 2-row forward alone, beside a thread busy with Python, and beside 1 ms Python bursts every 10 ms,
under switch intervals of 5 ms (Python's default), 0.5 ms and 0.1 ms. With --forward-in process the
forward goes through a Batcher whose lane runs it in a process of its own (adapterhub.forward_process):
only the hand-offs to and from it need this process's GIL.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="random:small")
    ap.add_argument("--forwards", type=int, default=30, help="forwards timed per cell")
    ap.add_argument("--forward-in", choices=("thread", "process"), default="thread", help="thread: hub.score in "
                    "the timing thread; process: through a Batcher whose forwards run in a process of their own")
    args = ap.parse_args(argv)
    import torch
    from adapterhub.hub import Hub
    torch.set_num_threads(1)
    hub = Hub(base=args.base, quant="fp32")
    rows = [(None, f"The user liked item {i}, item {i + 1}, item {i + 7}. Will the user like item {i + 3}? Answer:")
            for i in range(2)]
    hub.score(rows)
    score = hub.score
    if args.forward_in == "process":
        from adapterhub.batcher import Batcher
        score = Batcher(hub, window_ms=0, bulk_tokens=None, processes=True).score
        score(rows)
    stop = threading.Event()

    def timed() -> str:
        xs = []
        for _ in range(args.forwards):
            t = time.perf_counter()
            score(rows)
            xs.append(1000 * (time.perf_counter() - t))
        xs.sort()
        return f"{xs[len(xs) // 2]:.1f} / {xs[int(len(xs) * 0.95)]:.1f}"

    def busy():
        while not stop.is_set():
            sum(i * i for i in range(2000))

    def bursts():
        while not stop.is_set():
            t = time.perf_counter()
            while time.perf_counter() - t < 0.001:
                sum(i * i for i in range(50))
            time.sleep(0.009)

    print("switch interval | forward alone ms (p50 / p95) | beside busy Python | beside 1 ms bursts every 10 ms")
    for interval in (0.005, 0.0005, 0.0001):
        sys.setswitchinterval(interval)
        cells = [timed()]
        for fn in (busy, bursts):
            stop.clear()
            other = threading.Thread(target=fn)
            other.start()
            time.sleep(0.05)
            cells.append(timed())
            stop.set()
            other.join()
        print(f"{interval * 1000:g} ms | " + " | ".join(cells))


if __name__ == "__main__":
    main()
