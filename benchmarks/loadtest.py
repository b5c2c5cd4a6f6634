"""Load test of `adapterhub serve` (issue 16): many clients, four adapters, a version swap mid-run.

    python benchmarks/loadtest.py                                    # random:small, 32 clients, 60 s
    python benchmarks/loadtest.py --base smollm2-135m --quant fp32   # the real base's shape
    python benchmarks/loadtest.py --base random:tiny --clients 8 --duration-s 4 --in-process   # the unit test's

1. Publishes four random adapters (video, music, news, ecommerce) into a fresh registry in a temp folder.
2. Starts `adapterhub serve` on 127.0.0.1 at a free port, as a subprocess (--in-process: a thread of
   this one). Nothing else is contacted.
3. CLIENTS threads, one keep-alive connection each, send requests for DURATION seconds: POST /score
   with 1-3 rows that mix the adapters (some by plain name, some pinned as 'name@v1'), and every
   eighth request a POST /recommend.
4. Halfway, an admin client publishes news v2 (new weights), promotes it and asks the server to
   load it (POST /adapters/load {"adapter": "news", "reload": true}): requests that name 'news'
   move to v2 while those pinned to news@v1 keep v1.
5. Afterwards a separate hub in this process computes each (version, prompt) answer with a single
   call, and every answer the server gave is compared with the one for the version it named.

Reports requests/s, p50/p99 latency, errors, lost requests (sent, never answered), wrong answers
(|diff| > --tol), the smallest gap between two versions' answers (the check can tell them apart),
and the server's RSS (first sample after warm-up, peak, last). One JSON line goes to
<out>/loadtest.jsonl. Bounded: at most 256 clients and 600 s, 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from adapterhub.bench.common import Recorder

NAMES = ("video", "music", "news", "ecommerce")
REFS = NAMES + ("news@v1", "music@v1")  # news@v1 stays pinned across the swap
N_PROMPTS = 24
MAX_CLIENTS, MAX_DURATION_S = 256, 600
HISTORIES = [["red thing 1", "blue thing 2", "red thing 3"], ["song 4", "song 5"]]
CANDIDATES = [f"thing {j}" for j in range(5)]
TOL = {"float32": 1e-5, "bfloat16": 2e-2}  # |P(yes) diff| a batch may show against a single call


def publish(registry, hub_like, name: str, seed: int, scale: float, promote: bool | None = None) -> str:
    """A random LoRA (r=8 on q/k/v/o), large enough that adapters' answers differ clearly."""
    from adapterhub.lora import peft_key
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for path, (d_in, d_out) in hub_like.items():
        tensors[peft_key(path, "A")] = torch.randn(8, d_in, generator=g) * scale
        tensors[peft_key(path, "B")] = torch.randn(d_out, 8, generator=g) * scale
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16,
              "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "bias": "none"}
    return registry.publish(name, tensors, config, {"scenario": name, "base": {"fingerprint": hub_like.fingerprint}},
                            promote=promote)


class Shapes(dict):
    """module path -> (in, out) of the q/k/v/o Linears, and the base's fingerprint."""
    def __init__(self, hub):
        super().__init__((p, (m.in_features, m.out_features)) for p, m in hub.wrapped.items()
                         if p.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "o_proj"))
        self.fingerprint = hub.fingerprint


def prompts() -> list[str]:
    rng = random.Random(0)
    out = []
    for i in range(N_PROMPTS):
        liked = ", ".join(f"item {rng.randrange(1000)}" for _ in range(rng.randrange(1, 8)))
        out.append(f"The user liked {liked}. Will the user like item {rng.randrange(1000)}? Answer:")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Client:
    def __init__(self, port: int, timeout_s: float = 120.0):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        self.conn.request(method, path, body=data, headers={"content-type": "application/json"} if data else {})
        r = self.conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")


def start_server(args, registry: Path, port: int):
    """-> (stop function, server pid)."""
    if args.in_process:
        import uvicorn
        from adapterhub.hub import Hub
        from adapterhub.serve import create_app
        hub = Hub(base=args.base, registry=registry, quant=args.quant, device=args.device)
        for name in NAMES:
            hub.load(name)
        server = uvicorn.Server(uvicorn.Config(create_app(hub, window_ms=args.window_ms, threads=args.clients + 8),
                                               host="127.0.0.1", port=port, log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()

        def stop():
            server.should_exit = True
            thread.join(timeout=30)
        return stop, os.getpid()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent)]
                                                       + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.Popen([sys.executable, "-m", "adapterhub", "serve", "--registry", str(registry), "--base", args.base,
                             "--quant", args.quant, "--device", args.device, "--host", "127.0.0.1", "--port", str(port),
                             "--preload", ",".join(NAMES), "--window-ms", str(args.window_ms),
                             "--threads", str(args.clients + 8)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def stop():
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return stop, proc.pid


def wait_ready(port: int, timeout_s: float = 300.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if Client(port, 5).call("GET", "/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /health within {timeout_s:.0f} s")


def run_clients(args, port: int, texts: list[str], swap) -> tuple[list[dict], dict]:
    """The clients for args.duration_s; swap() runs halfway on its own thread. -> (answers, counts)."""
    answers: list[dict] = []
    counts = {"sent": 0, "ok": 0, "http_errors": 0, "lost": 0}
    lock = threading.Lock()
    start = time.monotonic()
    end = start + args.duration_s
    swap_info: dict = {}

    def admin():
        time.sleep(args.duration_s / 2)
        t = time.monotonic()
        swap_info.update(swap())
        swap_info["at_s"], swap_info["took_s"] = t - start, time.monotonic() - t

    def client(i: int):
        rng = random.Random(i)
        c = Client(port)
        n = 0
        while time.monotonic() < end:
            n += 1
            if n % 8 == 0:
                ref, h = rng.choice(REFS), rng.randrange(len(HISTORIES))
                body = {"adapter": ref, "history": HISTORIES[h], "candidates": CANDIDATES, "k": len(CANDIDATES)}
                path, record = "/recommend", {"kind": "recommend", "history": h}
            else:
                rows = [(rng.choice(REFS), rng.randrange(len(texts))) for _ in range(rng.randint(1, 3))]
                body = {"rows": [{"adapter": ref, "prompt": texts[p]} for ref, p in rows]}
                path, record = "/score", {"kind": "score", "prompts": [p for _, p in rows]}
            with lock:
                counts["sent"] += 1
            t = time.perf_counter()
            try:
                status, reply = c.call("POST", path, body)
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    counts["lost"] += 1
                    counts.setdefault("lost_examples", []).append(repr(e)[:200])
                c = Client(port)
                continue
            ms = 1000 * (time.perf_counter() - t)
            with lock:
                if status != 200:
                    counts["http_errors"] += 1
                    counts.setdefault("error_examples", []).append(f"{status} {reply}"[:300])
                    continue
                counts["ok"] += 1
                answers.append({**record, "ms": ms, "t": time.monotonic() - start, "reply": reply})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    threads.append(threading.Thread(target=admin))
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    counts["wall_s"] = time.monotonic() - start
    counts["swap"] = swap_info
    return answers, counts


def check(answers: list[dict], texts: list[str], hub) -> dict:
    """Each answer against a single call for the version it names (computed once per (version, input))."""
    single: dict = {}

    def one(version, p):
        if (version, p) not in single:
            single[(version, p)] = hub.score([(version, texts[p])])[0]
        return single[(version, p)]
    ranked: dict = {}

    def rec(version, h):
        if (version, h) not in ranked:
            ranked[(version, h)] = dict(hub.recommend(version, HISTORIES[h], CANDIDATES, k=len(CANDIDATES)))
        return ranked[(version, h)]
    wrong, max_diff, versions = 0, 0.0, set()
    for a in answers:
        reply = a["reply"]
        if a["kind"] == "score":
            pairs = [(one(v, p), s) for v, p, s in zip(reply["adapters"], a["prompts"], reply["scores"])]
            versions.update(reply["adapters"])
        else:
            want = rec(reply["adapter"], a["history"])
            pairs = [(want[it["item"]], it["score"]) for it in reply["items"]]
            versions.add(reply["adapter"])
        diff = max(abs(x - y) for x, y in pairs)
        max_diff = max(max_diff, diff)
        wrong += diff > a["tol"]
    # how far apart two versions' answers to one prompt are: the check must be able to tell them apart
    by_prompt: dict = {}
    for (v, p), s in single.items():
        by_prompt.setdefault(p, []).append(s)
    gaps = [abs(x - y) for ss in by_prompt.values() for i, x in enumerate(ss) for y in ss[i + 1:]]
    return {"wrong": wrong, "max_abs_diff": max_diff, "versions_seen": len(versions), "versions": sorted(versions),
            "min_gap_between_versions": min(gaps) if gaps else None,
            "median_gap_between_versions": statistics.median(gaps) if gaps else None}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="random:small", help="base spec (default random:small; smollm2-135m for the real shape)")
    ap.add_argument("--quant", default="fp32", help="base quantization (fp32 default: answers comparable to 1e-5)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clients", type=int, default=32, help=f"concurrent clients (at most {MAX_CLIENTS})")
    ap.add_argument("--duration-s", type=float, default=60.0, help=f"seconds of load (at most {MAX_DURATION_S})")
    ap.add_argument("--window-ms", type=float, default=2.0, help="the server's batching window")
    ap.add_argument("--scale", type=float, default=0.1, help="std of the random LoRA weights")
    ap.add_argument("--tol", type=float, default=None, help="largest |P(yes) diff| that counts as equal "
                    f"(default by compute dtype: {TOL})")
    ap.add_argument("--in-process", action="store_true", help="run the server in a thread of this process")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for loadtest.jsonl")
    args = ap.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.duration_s <= MAX_DURATION_S:
        ap.error(f"--clients must be 1..{MAX_CLIENTS} and --duration-s 0..{MAX_DURATION_S}")
    from adapterhub.hub import Hub
    from adapterhub.registry import Registry
    texts = prompts()
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "adapters"
        checker = Hub(base=args.base, registry=registry, quant=args.quant, device=args.device)  # the single calls
        shapes = Shapes(checker)
        reg = Registry(registry)
        for i, name in enumerate(NAMES):
            publish(reg, shapes, name, seed=i + 1, scale=args.scale)
        tol = args.tol if args.tol is not None else TOL.get(str(checker.base.compute_dtype).split(".")[-1], 1e-5)
        port = free_port()
        stop, pid = start_server(args, registry, port)
        try:
            wait_ready(port)
            warm = Client(port)
            for ref in REFS:  # the first request of each adapter is not a load-test figure
                warm.call("POST", "/score", {"adapter": ref, "prompts": texts[:2]})
            rss: list[int] = [rss_of(pid)]
            sampling = threading.Event()

            def sample():
                while not sampling.wait(0.5):
                    rss.append(rss_of(pid))
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()

            def swap():
                version = publish(reg, shapes, "news", seed=99, scale=args.scale, promote=False)
                reg.promote(f"news@{version}")
                status, reply = Client(port).call("POST", "/adapters/load", {"adapter": "news", "reload": True})
                return {"status": status, "loaded": reply.get("loaded"), "resident": reply.get("resident")}
            answers, counts = run_clients(args, port, texts, swap)
            sampling.set()
            sampler.join()
            rss.append(rss_of(pid))
            health = Client(port).call("GET", "/health")[1]  # (warm's connection has idled past keep-alive)
        finally:
            stop()
        for a in answers:
            a["tol"] = tol
        result = check(answers, texts, checker)
    ms = sorted(a["ms"] for a in answers)
    swap_info = counts["swap"]
    summary = {
        "base": args.base, "quant": args.quant, "compute_dtype": str(checker.base.compute_dtype), "clients": args.clients,
        "duration_s": args.duration_s, "server": "in-process" if args.in_process else "subprocess",
        "requests": counts["sent"], "answered": counts["ok"], "errors": counts["http_errors"] + counts["lost"],
        "lost": counts["lost"], "requests_per_s": counts["ok"] / counts["wall_s"],
        "p50_ms": ms[len(ms) // 2] if ms else None, "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else None,
        "max_ms": ms[-1] if ms else None, "tol": tol, **result,
        "swapped": swap_info.get("loaded") == "news@v2", "swap_at_s": swap_info.get("at_s"),
        "swap_took_s": swap_info.get("took_s"), "batches": health.get("batches"), "batched_requests": health.get("requests"),
        "rss_start_mib": rss[0] / 2**20, "rss_peak_mib": max(rss) / 2**20, "rss_end_mib": rss[-1] / 2**20,
        "error_examples": (counts.get("error_examples", []) + counts.get("lost_examples", []))[:5],
    }
    rec = Recorder("loadtest", args.out, base=args.base, device=args.device, quant=args.quant)
    rec.record("loadtest", {"clients": args.clients, "duration_s": args.duration_s, "window_ms": args.window_ms},
               summary["requests_per_s"], unit="req/s", extra={k: v for k, v in summary.items() if k not in ("base", "quant")})
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in summary.items()}, indent=1))
    return summary


if __name__ == "__main__":
    s = main()
    sys.exit(0 if s["errors"] == 0 and s["wrong"] == 0 and s["lost"] == 0 else 1)
