import pytest
import torch

from adapterhub.errors import ConfigError, RegistryError
from adapterhub.merge import METHODS, read_pairs
from adapterhub.model_ids import hub_model_id

from conftest import publish_random


def deltas(registry, ref):
    pairs, scale, _, _ = read_pairs(registry, ref)
    return {p: scale * (b @ a) for p, (a, b) in pairs.items()}


@pytest.fixture
def two(hub):
    publish_random(hub, "news", r=4, seed=1)
    publish_random(hub, "music", r=4, seed=2)
    return hub


def test_cat_merge_is_exact_weighted_sum(two):
    adapter = two.merge({"news": 0.3, "music": 0.7}, method="cat", name="news-music")
    merged, a, b = (deltas(two.registry, r) for r in ("news-music", "news", "music"))
    for path in merged:
        assert torch.allclose(merged[path], 0.3 * a[path] + 0.7 * b[path], atol=1e-6)
    card = adapter.card
    assert [p["ref"] for p in card["parents"]] == ["news@v1", "music@v1"]
    assert [p["weight"] for p in card["parents"]] == [0.3, 0.7]
    assert card["merge"]["method"] == "cat" and card["lora"]["r"] == 8


def test_linear_merge_has_cross_terms(two):
    two.merge({"news": 0.5, "music": 0.5}, method="linear", name="lin")
    merged, a, b = (deltas(two.registry, r) for r in ("lin", "news", "music"))
    path = next(iter(merged))
    assert not torch.allclose(merged[path], 0.5 * a[path] + 0.5 * b[path], atol=1e-3)


def test_svd_at_full_rank_is_exact_and_lossy_methods_run(two):
    two.merge({"news": 0.5, "music": 0.5}, method="svd", name="svd8", rank=8)
    merged, a, b = (deltas(two.registry, r) for r in ("svd8", "news", "music"))
    for path in merged:
        assert torch.allclose(merged[path], 0.5 * a[path] + 0.5 * b[path], atol=1e-4)
    for method in ("ties", "dare_ties"):
        adapter = two.merge({"news": 0.5, "music": 0.5}, method=method, name=method.replace("_", "-"))
        assert 0 < two.score([(adapter.key, "x")])[0] < 1
    assert set(METHODS) == {"cat", "linear", "svd", "ties", "dare_ties", "regmean"}  # regmean: test_regmean.py


def test_bad_merges(two):
    with pytest.raises(ConfigError, match="Did you mean 'ties'"):
        two.merge({"news": 0.5, "music": 0.5}, method="tie")
    with pytest.raises(ConfigError, match="at least two"):
        two.merge({"news": 1.0})
    publish_random(two, "r8", r=8)
    with pytest.raises(ConfigError, match="equal ranks"):
        two.merge({"news": 0.5, "r8": 0.5}, method="linear")


def test_export_merged_model_loads_without_adapterhub(two, tmp_path):
    from transformers import AutoModelForCausalLM
    out = two.export("news", tmp_path / "out", merge_into_base=True, dtype="fp32")
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([two.encode("The user liked a, b. Answer:")])
    with two.use("news") as hub_model, torch.no_grad():
        want = hub_model(ids).logits
        got = model(ids).logits
    assert (want - got).abs().max() < 1e-4
    with pytest.raises(RegistryError, match="not empty"):
        two.export("news", out)


def test_export_peft_folder_loads_with_plain_peft(two, tmp_path):
    import peft
    from adapterhub.base import load_base
    out = two.export("news", tmp_path / "peft", merge_into_base=False)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "card.json"]
    pm = peft.PeftModel.from_pretrained(load_base("random:tiny", quant="fp32", device="cpu").model, out)
    ids = torch.tensor([two.encode("hello Answer:")])
    with two.use("news") as hub_model, torch.no_grad():
        assert (hub_model(ids).logits - pm(ids).logits).abs().max() < 1e-5


def test_exports_name_a_base_that_peft_vllm_and_lorax_resolve(hub, tmp_path):
    import json
    from adapterhub.lora import peft_key
    from conftest import TARGETS
    assert hub_model_id("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_model_id("random:tiny") == "random:tiny" and hub_model_id("org/model") == "org/model"
    (tmp_path / "my-model").mkdir()
    assert hub_model_id("my-model") == str((tmp_path / "my-model").resolve())   # cwd is tmp_path
    # an adapter trained on the embedded base, as train.py wrote them before (spec as the base name)
    g = torch.Generator().manual_seed(0)
    tensors = {peft_key(p, w): torch.randn(*((2, m.in_features) if w == "A" else (m.out_features, 2)), generator=g)
               for p, m in hub.wrapped.items() if p.rsplit(".", 1)[-1] in TARGETS for w in "AB"}
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "smollm2-135m", "r": 2,
              "lora_alpha": 4, "target_modules": list(TARGETS), "bias": "none"}
    hub.registry.publish("news", tensors, config, {"scenario": "news", "base": {"spec": "smollm2-135m",
                                                                                "fingerprint": hub.fingerprint}})
    out = hub.export("news", tmp_path / "peft", merge_into_base=False)
    exported = json.loads((out / "adapter_config.json").read_text())
    assert exported["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {k: v for k, v in exported.items() if k != "base_model_name_or_path"} == {
        k: v for k, v in config.items() if k != "base_model_name_or_path"}
    merged = hub.export("news", tmp_path / "merged", merge_into_base=True, dtype="fp32")
    assert json.loads((merged / "adapterhub_export.json").read_text())["base_model"] == hub_model_id(hub.base.spec)
