"""How long a full garbage collection holds a server's process, with its heap frozen and not
(gc.freeze(), what `adapterhub serve` does once its hub is loaded). One process: the base and the
load test's four random adapters resident, then gc.collect(2) timed three times each way.

    python benchmarks/serving_load/gc_pause.py                   # random:small, fp32
    python benchmarks/serving_load/gc_pause.py --base smollm2-135m --quant nf4
"""
import argparse
import gc
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="random:small")
    ap.add_argument("--quant", default="fp32")
    args = ap.parse_args()
    import fastapi, prometheus_client, uvicorn  # noqa: F401,E401 - the server's imports are part of its heap
    from adapterhub.hub import Hub
    from adapterhub.registry import Registry
    from run import NAMES, publish
    folder = tempfile.mkdtemp()
    hub = Hub(base=args.base, registry=folder, quant=args.quant, device="cpu")
    for i, name in enumerate(NAMES):
        publish(Registry(folder), hub, name, seed=i + 1, scale=0.1)
        hub.load(name)

    def collect_ms() -> float:
        t = time.perf_counter()
        gc.collect(2)
        return 1000 * (time.perf_counter() - t)
    print(f"{args.base} ({args.quant}): {len(gc.get_objects()):,} objects tracked")
    print("full collection, heap not frozen: " + ", ".join(f"{collect_ms():.1f}" for _ in range(3)) + " ms")
    gc.freeze()
    print(f"full collection, {gc.get_freeze_count():,} objects frozen: "
          + ", ".join(f"{collect_ms():.2f}" for _ in range(3)) + " ms")


if __name__ == "__main__":
    main()
