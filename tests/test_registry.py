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
