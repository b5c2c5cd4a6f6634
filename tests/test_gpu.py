"""GPU checks (pytest -m gpu on a CUDA machine; skipped cleanly without CUDA). The random bases have
Llama's architecture (grouped-query attention included), so nothing is downloaded. NF4 needs
bitsandbytes (on the GPU machine: the carried wheel, benchmarks/gpu.sh's header)."""
import pytest
import torch

from conftest import PROMPTS, plain_logit, publish_random

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine: -m gpu)")]

GROUPS = [([1, 5, 9, 14, 3, 7], [[20, 21], [22], [23, 24, 25]]), ([1, 8, 8], [[30, 31, 32, 33]]),
          ([1, 60, 61], [[70, 71, 72], [70, 71, 73, 74]])]


@pytest.fixture
def cuda_hub(tmp_path):
    from adapterhub.hub import Hub
    return Hub(base="random:tiny", registry=tmp_path / "adapters", quant="bf16", device="cuda")


@pytest.fixture
def nf4_hub(tmp_path):
    pytest.importorskip("bitsandbytes")
    from adapterhub.hub import Hub
    return Hub(base="random:small", registry=tmp_path / "adapters", quant="nf4", device="cuda")


def fast_kernels_only():
    """SDPA with the math backend ruled out: a call only flash or the memory-efficient kernel cannot
    take raises 'No available kernel' instead of quietly running the slow path."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])


def test_mixed_batch_on_cuda_equals_one_adapter_at_a_time(cuda_hub):
    publish_random(cuda_hub, "a", seed=1, scale=0.2)
    publish_random(cuda_hub, "b", seed=2, scale=0.2)
    rows = [("a", PROMPTS[0]), ("b", PROMPTS[1]), (None, PROMPTS[2]), ("a+b", PROMPTS[0])]
    alone = [cuda_hub.score([row])[0] for row in rows]
    assert cuda_hub.score(rows) == pytest.approx(alone, abs=2e-3)
    assert cuda_hub.device.type == "cuda"


def test_training_step_on_cuda_publishes_a_loadable_adapter(cuda_hub, toy):
    from adapterhub.config import TrainConfig
    adapter, card = cuda_hub.train("toy", toy, TrainConfig(max_steps=3, eval_every=3, n_valid=16, n_test=16),
                                   progress=False)
    assert card["train"]["steps"] == 3 and adapter.key == "toy@v1"
    assert 0.0 < cuda_hub.score([("toy", PROMPTS[0])])[0] < 1.0


def test_nf4_base_is_quantized_on_the_gpu_and_scores_like_the_models_own_forward(nf4_hub):
    """Every decoder Linear is a 4-bit layer on the GPU; the hub's packed forward gives what the
    model's own causal forward gives for each prompt."""
    import bitsandbytes as bnb
    layers = [m for m in nf4_hub.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7 and all(m.weight.device.type == "cuda" for m in layers)
    assert nf4_hub.base.compute == "native" and nf4_hub.base.compute_dtype == torch.bfloat16
    publish_random(nf4_hub, "a", seed=1, scale=0.1)
    key = nf4_hub.load("a").key
    with fast_kernels_only():
        got = nf4_hub.score([(key, p) for p in PROMPTS])
    want = [torch.sigmoid(plain_logit(nf4_hub, key, nf4_hub.encode(p))).item() for p in PROMPTS]
    assert got == pytest.approx(want, abs=1e-2)


def test_nf4_packed_groups_equal_their_full_prompts_on_cuda(nf4_hub):
    publish_random(nf4_hub, "a", seed=3, scale=0.1)
    key = nf4_hub.load("a").key
    with torch.no_grad(), fast_kernels_only():
        packed = nf4_hub.packed_logits(key, GROUPS)
    alone = torch.cat([plain_logit(nf4_hub, key, p + s) for p, sufs in GROUPS for s in sufs])
    assert torch.allclose(packed.float(), alone.float(), atol=0.1), (packed - alone).abs().max()


def test_one_qlora_step_on_cuda_trains_the_pair_and_leaves_the_base(nf4_hub, toy):
    """A QLoRA step (NF4 base, LoRA in fp32) with the fast attention kernels only: the loss is finite,
    the 4-bit weights are untouched, the published adapter scores."""
    import bitsandbytes as bnb
    from adapterhub.config import TrainConfig
    layer = next(m for m in nf4_hub.model.modules() if isinstance(m, bnb.nn.Linear4bit))
    before = layer.weight.data.clone()
    with fast_kernels_only():
        adapter, card = nf4_hub.train("toy", toy, TrainConfig(max_steps=2, eval_every=2, n_valid=16, n_test=16),
                                      progress=False)
    assert card["train"]["steps"] == 2 and torch.isfinite(torch.tensor(card["train"]["log"][-1]["loss"]))
    assert torch.equal(layer.weight.data, before)
    assert 0.0 < nf4_hub.score([("toy", PROMPTS[0])])[0] < 1.0


def test_nf4_base_memory_is_a_fraction_of_bf16_and_never_a_full_precision_copy():
    """Built on the GPU tensor by tensor, each Linear quantized as it is made: the load's peak stays
    near the NF4 size (before: the whole model in fp32 first)."""
    pytest.importorskip("bitsandbytes")
    from transformers import LlamaConfig
    from adapterhub.base_build import build_random
    from adapterhub.memory import free_gpu, gpu_allocated_bytes, gpu_peak
    cfg = LlamaConfig(vocab_size=2048, hidden_size=1024, intermediate_size=4096, num_hidden_layers=4,
                      num_attention_heads=16, num_key_value_heads=4, tie_word_embeddings=False)
    dev = torch.device("cuda")
    steady, peak = {}, {}
    for quant in ("nf4", "bf16"):
        free_gpu(dev)
        before = gpu_allocated_bytes(dev)
        with gpu_peak(dev) as m:
            model = build_random(cfg, dev, quant, seed=0)
        steady[quant], peak[quant] = gpu_allocated_bytes(dev) - before, m["peak_bytes"] - before
        del model
    assert steady["nf4"] < 0.4 * steady["bf16"], steady
    assert peak["nf4"] < 0.7 * steady["bf16"], (peak, steady)   # no unquantized copy of the model
    assert peak["bf16"] < 1.2 * steady["bf16"]                  # no fp32 copy either


def test_one_pack_is_one_copy_and_the_layout_lives_on_the_gpu():
    from adapterhub import packing
    p = packing.pack(GROUPS, "cuda")
    lay = p.layout
    for t in (p.input_ids, p.position_ids, lay.prefix, lay.cands, lay.cand_keys, lay.cand_mask, lay.back, lay.read):
        assert t.device.type == "cuda"
    cpu = packing.pack(GROUPS, "cpu")
    assert torch.equal(lay.cand_mask.cpu(), cpu.layout.cand_mask) and torch.equal(lay.cand_keys.cpu(), cpu.layout.cand_keys)
