import pytest
import torch

from adapterhub.errors import AdapterNotFoundError, IncompatibleAdapterError, RegistryError
from adapterhub.lora import peft_key

from conftest import PROMPTS, plain_logit, publish_random



def test_zero_adapter_equals_base(hub):
    tensors = {}
    for path, m in hub.wrapped.items():
        tensors[peft_key(path, "A")] = torch.randn(2, m.in_features)
        tensors[peft_key(path, "B")] = torch.zeros(m.out_features, 2)
    hub.registry.publish("zero", tensors, {"r": 2, "lora_alpha": 4}, {"base": {"fingerprint": hub.fingerprint}})
    assert hub.score([("zero", p) for p in PROMPTS]) == hub.score([(None, p) for p in PROMPTS])


def test_hub_matches_plain_peft(hub, tiny_base):
    import peft
    from adapterhub.base import load_base
    publish_random(hub, "news")
    ids = torch.tensor([hub.encode(PROMPTS[0])])
    with hub.use("news") as model, torch.no_grad():
        ours = model(ids).logits
    with hub.use(None) as model, torch.no_grad():
        plain = model(ids).logits
    fresh = load_base("random:tiny", quant="fp32", device="cpu").model
    pm = peft.PeftModel.from_pretrained(fresh, hub.registry.resolve("news"))
    with torch.no_grad():
        theirs = pm(ids).logits
    assert (ours - theirs).abs().max() < 1e-5
    assert (ours - plain).abs().max() > 1e-3  # the adapter really changes the output


def test_mixed_batch_equals_each_row_alone(hub):
    for i, r in enumerate((4, 8, 16)):  # different ranks resident together
        publish_random(hub, f"a{i}", r=r, seed=i)
    rows = [("a0", PROMPTS[0]), ("a1", PROMPTS[1]), (None, PROMPTS[2]), ("a2", PROMPTS[0]), ("a1", PROMPTS[2])]
    mixed = hub.score(rows)
    alone = [hub.score([row])[0] for row in rows]
    assert max(abs(a - b) for a, b in zip(mixed, alone)) < 1e-5
    assert len({round(s, 6) for s in mixed}) > 1


def test_prefix_reuse_matches_full_prompts(hub):
    publish_random(hub, "news")
    prefix = "The user clicked: one, two, three."
    suffixes = ["\nWill the user click four? Answer:", "\nWill the user click a much longer headline? Answer:", "\nx? Answer:"]
    cached = hub.score_candidates("news", prefix, suffixes, batch_size=2)
    full = hub.score_candidates("news", prefix, suffixes, reuse_prefix=False)
    assert max(abs(a - b) for a, b in zip(cached, full)) < 1e-5


def test_use_switches_and_restores(hub):
    publish_random(hub, "news")
    with hub.use("news"):
        assert hub.routing.active == hub._wkey("news@v1")
    assert hub.routing.active is None


def test_load_by_version_and_unload(hub):
    publish_random(hub, "news", seed=0)
    publish_random(hub, "news", seed=1)
    a = hub.load("news")
    b = hub.load("news@v1")
    assert (a.key, b.key) == ("news@v2", "news@v1")
    assert a.weight_bytes > 0
    assert hub.score([("news", "x")]) != hub.score([("news@v1", "x")])
    assert hub.unload("news@v2") == ["news@v2"]
    assert hub.resident() == ["news@v1"]
    assert all(hub._wkey("news@v2") not in m.adapters for m in hub.wrapped.values())
    assert hub.unload("news") == ["news@v1"]  # a name unloads every version it has resident
    assert hub.resident() == [] and all(not m.adapters for m in hub.wrapped.values())


def test_max_resident_evicts_least_recently_used(hub):
    hub.max_resident = 2
    for name in ("a", "b", "c"):
        publish_random(hub, name)
    hub.load("a"), hub.load("b"), hub.load("a"), hub.load("c")
    assert hub.resident() == ["a@v1", "c@v1"]


def test_unknown_name(hub):
    publish_random(hub, "news")
    with pytest.raises(AdapterNotFoundError, match="Did you mean 'news'"):
        hub.load("newz")


def test_fingerprint_mismatch(hub):
    publish_random(hub, "other", fingerprint="llama-0000000000000000")
    with pytest.raises(IncompatibleAdapterError, match="fingerprint"):
        hub.load("other")
    assert hub.resident() == []


def test_unservable_target_refused(hub):
    hub.registry.publish("emb", {"base_model.model.model.embed_tokens.lora_A.weight": torch.zeros(2, 128),
                                 "base_model.model.model.embed_tokens.lora_B.weight": torch.zeros(32, 2)},
                         {"r": 2, "lora_alpha": 4}, {"base": {"fingerprint": hub.fingerprint}})
    with pytest.raises(IncompatibleAdapterError, match="cannot serve"):
        hub.load("emb")


def test_wrong_shapes_and_absurd_rank_refused(hub):
    publish_random(hub, "good")
    hub.registry.publish("bad", {peft_key("model.layers.0.self_attn.q_proj", "A"): torch.zeros(4, 7),
                                 peft_key("model.layers.0.self_attn.q_proj", "B"): torch.zeros(32, 4)},
                         {"r": 4, "lora_alpha": 8}, {"base": {"fingerprint": hub.fingerprint}})
    with pytest.raises(IncompatibleAdapterError, match="expected A"):
        hub.load("bad")
    hub.registry.publish("huge", {}, {"r": 10**9, "lora_alpha": 8}, {"base": {"fingerprint": hub.fingerprint}})
    with pytest.raises(IncompatibleAdapterError, match="r=1000000000"):
        hub.load("huge")
    assert hub.score([("good", "x")])  # still serving


def test_corrupt_adapter_does_not_stop_the_others(hub):
    publish_random(hub, "good")
    publish_random(hub, "broken")
    (hub.registry.root / "broken" / "v1" / "adapter_model.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(RegistryError, match="adapter_model.safetensors"):
        hub.load("broken")
    assert 0 < hub.score([("good", "x")])[0] < 1


@pytest.mark.parametrize("quant", ["nf4", "int8", "bf16"])
def test_quantized_hub_close_to_fp32(quant, tmp_path):
    from adapterhub.hub import Hub
    ref = Hub(base="random:small", registry=tmp_path / "a", quant="fp32", device="cpu")
    publish_random(ref, "news", scale=0.2)
    q = Hub(base="random:small", registry=tmp_path / "a", quant=quant, device="cpu")
    rows = [("news", p) for p in PROMPTS] + [(None, PROMPTS[0])]
    diff = max(abs(a - b) for a, b in zip(ref.score(rows), q.score(rows)))
    assert diff < 0.1, diff  # stated tolerance on P(yes) for a random small base
    mixed = q.score(rows)
    alone = [q.score([r])[0] for r in rows]
    assert max(abs(a - b) for a, b in zip(mixed, alone)) < 2e-2


def test_score_examples_shares_prefixes_and_matches_full_prompts(hub, toy):
    from adapterhub.datasets.common import Example
    from adapterhub.scoring import encode_examples, score_examples
    publish_random(hub, "news")
    key = hub.load("news").key
    hist = toy.splits["train"][0].history
    group = [Example("u", hist, c, int(i == 0), group="g") for i, c in enumerate(list(toy.items)[:6])]
    examples = group + toy.splits["test"][:3]             # one shared-prefix group + singletons
    encoded = encode_examples(hub, toy, examples)
    got = score_examples(hub, key, encoded, batch_size=4)
    with torch.no_grad():
        want = torch.sigmoid(torch.cat([plain_logit(hub, key, p + s) for p, s in encoded])).tolist()
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5


@pytest.mark.parametrize("quant,compute,tol", [
    ("fp32", "auto", 1e-5), ("bf16", "auto", 0.05),
    ("nf4", "native", 1e-5), ("nf4", "fp32", 1e-5), ("nf4", "bf16", 0.05),  # fp32 dequantized = NF4's own values
    ("nf4", "bf16-mixed", 0.05), ("int8", "native", 1e-5), ("int8", "fp32", 0.02), ("int8", "bf16", 0.05)])  # int8 kernels cast inputs to fp16
def test_same_logits_as_peft_on_every_quant(quant, compute, tol, tmp_path):
    """The stated tolerances: max abs logit difference vs PEFT on the same quantized base (PEFT runs
    the bitsandbytes kernels; the hub may run them or weights dequantized once at load)."""
    import peft
    from adapterhub.base import load_base
    from adapterhub.hub import Hub
    hub = Hub(base="random:small", registry=tmp_path / "a", quant=quant, device="cpu", compute=compute)
    publish_random(hub, "news", scale=0.2)
    ids = torch.tensor([[5, 17, 33, 2, 90, 41, 7, 64]])
    with hub.use("news") as model, torch.no_grad():
        ours = model(ids).logits.float()
    pm = peft.PeftModel.from_pretrained(load_base("random:small", quant=quant, device="cpu", compute="native").model,
                                        hub.registry.resolve("news"))
    with torch.no_grad():
        theirs = pm(ids).logits.float()
    assert (ours - theirs).abs().max() < tol


def test_bf16_compute_keeps_the_residual_stream_and_attention_fp32():
    """compute='bf16': the MLP matmuls get bf16 from the norms; the residual stream, rotary and
    attention stay fp32 (bf16 there moved a trained adapter's P(yes) by 0.02-0.05 on SmolLM2)."""
    from adapterhub.base import load_base
    b = load_base("random:small", quant="nf4", device="cpu", compute="bf16")
    seen = {}
    layer = b.model.get_decoder().layers[0]
    layer.self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.update(q_in=i[0].dtype, q_out=o.dtype))
    layer.mlp.gate_proj.register_forward_hook(lambda m, i, o: seen.update(mlp_in=i[0].dtype))
    layer.register_forward_hook(lambda m, i, o: seen.update(residual=(o[0] if isinstance(o, tuple) else o).dtype))
    with torch.no_grad():
        h = b.model.get_decoder()(input_ids=torch.tensor([[5, 6, 7]])).last_hidden_state
    assert seen == {"q_in": torch.bfloat16, "q_out": torch.float32, "mlp_in": torch.bfloat16,
                    "residual": torch.float32} and h.dtype == torch.float32


def test_max_resident_must_be_positive(tiny_base):
    from adapterhub.errors import ConfigError
    from adapterhub.hub import Hub
    with pytest.raises(ConfigError, match="max_resident"):
        Hub(base=tiny_base, registry="x", max_resident=0)
