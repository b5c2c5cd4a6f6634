import json

import pytest
import torch

from adapterhub.errors import AdapterNotFoundError, RegistryError
from adapterhub.registry import Registry, parse_ref


def tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(2, 8, generator=g),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(8, 2, generator=g)}


def card(auc=None):
    return {"scenario": "toy", "primary_metric": "auc",
            "metrics": {"valid": {"adapter": {"auc": auc}}} if auc is not None else {}}


CFG = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}


@pytest.mark.parametrize("bad", ["", "../x", "/abs", "a/b", "News", "néws", "ｎews", "-x", "a" * 65, "x@1", "x@v0", "x@v1@v2", "x@"])
def test_bad_names_refused_before_the_disk(bad, tmp_path):
    with pytest.raises(RegistryError):
        parse_ref(bad)
    if "@" not in bad:
        with pytest.raises(RegistryError):
            Registry(tmp_path / "r").publish(bad, tensors(), CFG, card())
    assert not (tmp_path / "r").exists()


def test_publish_layout_and_bitwise_roundtrip(tmp_path):
    reg = Registry(tmp_path / "adapters")
    v = reg.publish("news", tensors(), CFG, card(0.6))
    assert v == "v1"
    folder = tmp_path / "adapters" / "news" / "v1"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "card.json"]
    assert (tmp_path / "adapters" / "news" / "current").read_text().strip() == "v1"
    config, loaded, c, _ = reg.load("news")
    assert config == CFG and c["version"] == "v1" and len(c["weights_sha256"]) == 64
    for k, t in tensors().items():
        assert torch.equal(loaded[k], t)


def test_promotion_follows_the_validation_metric(tmp_path):
    reg = Registry(tmp_path)
    reg.publish("news", tensors(), CFG, card(0.7))
    reg.publish("news", tensors(1), CFG, card(0.6))           # worse: published, not current
    assert reg.versions("news") == ["v1", "v2"] and reg.current("news") == "v1"
    reg.publish("news", tensors(2), CFG, card(0.75))          # better: current
    assert reg.current("news") == "v3"
    reg.publish("news", tensors(3), CFG, card(0.1), promote=True)  # forced
    assert reg.current("news") == "v4"
    reg.promote("news@v2")
    assert reg.current("news") == "v2"
    assert reg.resolve("news").name == "v2" and reg.resolve("news@v3").name == "v3"


def test_not_found_lists_available_and_suggests(tmp_path):
    reg = Registry(tmp_path)
    reg.publish("news", tensors(), CFG, card())
    reg.publish("music", tensors(), CFG, card())
    with pytest.raises(AdapterNotFoundError) as e:
        reg.resolve("newz")
    assert "music, news" in str(e.value) and "Did you mean 'news'" in str(e.value)
    with pytest.raises(AdapterNotFoundError, match="v1"):
        reg.resolve("news@v9")


def test_remove_version_and_all(tmp_path):
    reg = Registry(tmp_path)
    for i in range(3):
        reg.publish("news", tensors(i), CFG, card(), promote=True)
    assert reg.remove("news@v3") == ["v3"]
    assert reg.current("news") == "v2"
    reg.remove("news")
    assert reg.names() == [] and not (tmp_path / "news").exists()


def test_checksum_mismatch_is_caught(tmp_path):
    reg = Registry(tmp_path)
    reg.publish("news", tensors(), CFG, card())
    f = tmp_path / "news" / "v1" / "adapter_model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="sha256"):
        reg.load("news")


def test_failed_publish_leaves_nothing(tmp_path, monkeypatch):
    reg = Registry(tmp_path)
    reg.publish("news", tensors(), CFG, card())
    import adapterhub.registry as r

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(r, "save_safetensors", boom)
    with pytest.raises(OSError):
        reg.publish("news", tensors(1), CFG, card())
    assert reg.versions("news") == ["v1"]
    assert [p.name for p in (tmp_path / "news").iterdir() if p.name.startswith(".tmp")] == []


def test_list_cards(tmp_path):
    reg = Registry(tmp_path)
    reg.publish("news", tensors(), CFG, card())
    reg.publish("news", tensors(), CFG, card())
    (listed,) = reg.list()
    assert listed["name"] == "news" and listed["versions"] == ["v1", "v2"] and listed["current"] == "v2"
    json.dumps(listed)


# ---------------------------------------------------------------- storage dtype

def test_a_registry_set_to_bf16_stores_bf16_and_says_so(tmp_path):
    """registry.json {"weights_dtype": "bfloat16"} (the shipped adapters/ has it): every publish stores
    its floating tensors in bf16, half the bytes, and the card records it; the sha256 is the bf16 file's."""
    root = tmp_path / "adapters"
    root.mkdir()
    (root / "registry.json").write_text(json.dumps({"weights_dtype": "bfloat16"}))
    reg = Registry(root)
    assert reg.names() == []                    # the settings file is not an adapter
    reg.publish("news", tensors(), CFG, card(0.6))
    _, loaded, c, folder = reg.load("news")
    assert c["weights_dtype"] == "bfloat16"
    for k, t in tensors().items():
        assert loaded[k].dtype == torch.bfloat16 and torch.equal(loaded[k], t.to(torch.bfloat16))
    fp32 = Registry(tmp_path / "plain")         # no settings: the tensors as given, bit for bit
    fp32.publish("news", tensors(), CFG, card(0.6))
    assert "weights_dtype" not in fp32.card("news")
    size = lambda r: (r.resolve("news") / "adapter_model.safetensors").stat().st_size  # noqa: E731
    assert size(fp32) - size(reg) == sum(2 * t.numel() for t in tensors().values())  # 2 bytes an element saved
    assert Registry(tmp_path / "plain", weights_dtype="bfloat16").weights_dtype() == "bfloat16"


def test_a_bad_storage_setting_names_the_file(tmp_path):
    root = tmp_path / "adapters"
    root.mkdir()
    (root / "registry.json").write_text(json.dumps({"weights_dtype": "int4"}))
    with pytest.raises(RegistryError, match=r"registry.json: weights_dtype 'int4' is not one of float32, bfloat16"):
        Registry(root).publish("news", tensors(), CFG, card())
    assert not (root / "news").exists()
    with pytest.raises(RegistryError, match="choose one of"):
        Registry(root, weights_dtype="fp8")


def test_the_shipped_registry_is_bf16_and_each_file_matches_its_card():
    """adapters/: one version per adapter, stored in bf16 (its fp32 original is in git history, its
    sha256 in the card), checked against the card's sha256 as every load does."""
    from pathlib import Path
    from adapterhub.safetensors_io import read_header
    shipped = Path(__file__).resolve().parent.parent / "adapters"
    reg = Registry(shipped)
    assert reg.weights_dtype() == "bfloat16" and reg.names()
    for name in reg.names():
        assert reg.versions(name) == [reg.current(name)], name
        folder = reg.resolve(name)
        header, _ = read_header(folder / "adapter_model.safetensors")
        assert {h["dtype"] for h in header.values()} == {"BF16"}, name
        c = reg.card(name)
        # a version converted from fp32 names its original; one trained into this registry was bf16 from the start
        assert c["weights_dtype"] == "bfloat16" and len(c.get("weights_fp32_sha256", "0" * 64)) == 64
        from adapterhub.registry import sha256_file
        assert sha256_file(folder / "adapter_model.safetensors") == c["weights_sha256"], name
