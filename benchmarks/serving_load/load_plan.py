"""What the load test sends and how it checks the answers: the random adapters it publishes, the
requests' plan (light, heavy, over-limit) and the check of every answer against the adapter scored alone.
run.py drives them; the other scripts here reuse them."""
from __future__ import annotations

NAMES = ("video", "music", "news", "ecommerce")
REFS = NAMES + ("news@v1", "music@v1")          # news@v1 stays pinned across the promotion
TOL = {"float32": 1e-5, "bfloat16": 2e-2}       # |P(yes) diff| a batch may show against a single call
KEY, ADMIN_KEY = "load-test-key", "load-test-admin"


def publish(registry, hub, name: str, seed: int, scale: float, promote: bool | None = None) -> str:
    """A random LoRA (r=8 on q/k/v/o of `hub`'s base), large enough that adapters' answers differ clearly
    (promote: as Registry.publish's)."""
    import torch
    from adapterhub.lora import peft_key
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    shapes = {path: (m.in_features, m.out_features) for path, m in hub.wrapped.items()
              if path.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "o_proj")}
    for path, (d_in, d_out) in shapes.items():
        tensors[peft_key(path, "A")] = torch.randn(8, d_in, generator=g) * scale
        tensors[peft_key(path, "B")] = torch.randn(d_out, 8, generator=g) * scale
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16,
              "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "bias": "none"}
    return registry.publish(name, tensors, config, {"scenario": name, "base": {"fingerprint": hub.fingerprint}},
                            promote=promote)


def plan(hub, args) -> dict:
    """What the locust users send: light prompts and rankings, a heavy ranking near the token budget,
    and requests over the limits."""
    import random
    from adapterhub import ranking
    rng = random.Random(0)
    prompts = []
    for _ in range(24):
        liked = ", ".join(f"item {rng.randrange(1000)}" for _ in range(rng.randrange(1, 6)))
        prompts.append(f"The user liked {liked}. Will the user like item {rng.randrange(1000)}? Answer:")
    histories = [["red thing 1", "blue thing 2", "red thing 3"], ["song 4", "song 5"]]
    documents = [f"thing {j}" for j in range(5)]
    heavy_history = [f"a long-remembered item number {j}" for j in range(args.heavy_history)]
    heavy_docs: list[str] = []
    while True:  # grow the heavy ranking to ~90% of the per-request budget
        more = heavy_docs + [f"candidate item {len(heavy_docs) + j}" for j in range(16)]
        if ranking.plan(hub, "video", heavy_history, more, max_group_tokens=args.max_batch_tokens).tokens \
                > 0.9 * args.max_request_tokens:
            break
        heavy_docs = more
    too_many = heavy_docs * 3  # over the token budget, within the schema's 1,000 documents (a 400, not a 422)
    while ranking.plan(hub, "news", histories[0], too_many, max_group_tokens=args.max_batch_tokens).tokens \
            <= args.max_request_tokens:
        too_many += heavy_docs
    assert len(too_many) <= 1000, "--max-request-tokens is too large for an over-limit ranking of 1,000 documents"
    n = hub.max_model_len + 16
    while len(hub.encode("1" * n)) <= hub.max_model_len:
        n *= 2
    return {"key": KEY, "refs": list(REFS), "prompts": prompts, "histories": histories, "documents": documents,
            "think_s": args.think_s, "heavy_history": heavy_history, "heavy_documents": heavy_docs,
            "heavy_tokens": ranking.plan(hub, "video", heavy_history, heavy_docs,
                                         max_group_tokens=args.max_batch_tokens).tokens,
            "too_long_prompt": "1" * n, "too_many_documents": too_many}


def check(answers: list[dict], p: dict, hub) -> dict:
    """Each light answer against the version it names scored alone (computed once per input)."""
    single, ranked = {}, {}

    def one(version, i):
        if (version, i) not in single:
            single[(version, i)] = hub.score([(version, p["prompts"][i])])[0]
        return single[(version, i)]

    def rank(version, h):
        if (version, h) not in ranked:
            ranked[(version, h)] = dict(hub.recommend(version, p["histories"][h], p["documents"], k=len(p["documents"])))
        return ranked[(version, h)]
    wrong, max_diff, versions = 0, 0.0, set()
    for a in answers:
        if a["user"] != "light" or a["status"] != 200:
            continue
        reply = a["reply"]
        if a["path"] == "/score":
            pairs = [(one(v, i), s) for v, i, s in zip(reply["adapters"], a["prompts"], reply["scores"])]
            versions.update(reply["adapters"])
        else:
            want = rank(reply["model"], a["history"])
            pairs = [(want[p["documents"][x["index"]]], x["relevance_score"]) for x in reply["results"]]
            versions.add(reply["model"])
        diff = max(abs(x - y) for x, y in pairs)
        max_diff = max(max_diff, diff)
        wrong += diff > a["tol"]
    by_prompt: dict = {}
    for (v, i), s in single.items():
        by_prompt.setdefault(i, []).append(s)
    gaps = [abs(x - y) for ss in by_prompt.values() for j, x in enumerate(ss) for y in ss[j + 1:]]
    return {"wrong": wrong, "max_abs_diff": max_diff, "versions": sorted(versions),
            "min_gap_between_versions": min(gaps) if gaps else None}
