"""Packed attention takes CUDA's fast kernels, checked on CPU with the device test mocked: every
scaled_dot_product_attention call that attend() makes "on CUDA" must be one that flash or the
memory-efficient kernel accepts (PyTorch: with GQA only flash and math; flash takes no mask and no
fp32), plain prompts use is_causal instead of a mask, training stays in bf16 on CUDA, and the
results equal the CPU path's."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adapterhub import packing

REAL_SDPA = F.scaled_dot_product_attention
HEADS, KV_HEADS, DIM = 4, 2, 16  # grouped-query attention, as Llama 3 and SmolLM2 have
WITH_PREFIX = [([1, 5, 9, 14, 3], [[20, 21], [22], [23, 24, 25]]), ([1, 8], [[30, 31, 32]])]
PLAIN = [([], [[1, 2, 3, 4]]), ([], [[5, 6]]), ([], [[7, 8, 9]])]  # how hub.score packs prompts


def cuda_kernels(call: dict) -> list[str]:
    """The fast CUDA kernels PyTorch's dispatcher lets take this call (its documented constraints)."""
    half = call["dtype"] in (torch.float16, torch.bfloat16)
    out = []
    if half and call["mask"] is None:
        out.append("flash")                      # takes GQA, no mask, fp16/bf16
    if not call["enable_gqa"]:
        out.append("efficient")                  # takes masks and fp32, not GQA
    return out


@pytest.fixture
def calls(monkeypatch):
    """Every SDPA call attend() makes, as if its tensors were on CUDA."""
    seen = []

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        seen.append({"dtype": q.dtype, "mask": attn_mask, "causal": is_causal, "enable_gqa": enable_gqa,
                     "q_heads": q.shape[1], "kv_heads": k.shape[1]})
        return REAL_SDPA(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                         enable_gqa=enable_gqa)
    monkeypatch.setattr(packing.F, "scaled_dot_product_attention", spy)
    return seen


def qkv(groups, dtype, grad=False):
    p = packing.pack(groups, "cpu")
    n = p.input_ids.numel()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, h, DIM, generator=g, dtype=torch.float32).to(dtype).requires_grad_(grad)
               for h in (HEADS, KV_HEADS, KV_HEADS))
    return p.layout, q, k, v


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("groups", [WITH_PREFIX, PLAIN], ids=["prefix", "plain"])
def test_every_call_on_cuda_has_a_fast_kernel_and_the_same_result(calls, monkeypatch, groups, dtype):
    lay, q, k, v = qkv(groups, dtype)
    with torch.no_grad():
        want = packing.attend(q, k, v, lay)                          # the CPU path (grouped heads, masks)
        monkeypatch.setattr(packing, "_is_cuda", lambda t: True)
        calls.clear()
        got = packing.attend(q, k, v, lay)
    assert calls and all(cuda_kernels(c) for c in calls), calls
    for c in calls:
        if c["mask"] is not None or dtype == torch.float32:          # flash cannot: every query head has its K/V
            assert c["kv_heads"] == c["q_heads"] and not c["enable_gqa"]
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert torch.allclose(got.float(), want.float(), atol=tol), (got.float() - want.float()).abs().max()


def test_plain_prompts_take_is_causal_not_a_mask(calls, monkeypatch):
    """No prefix: each candidate's mask is plain causal, so no mask is built or passed (flash can run,
    GQA kept)."""
    monkeypatch.setattr(packing, "_is_cuda", lambda t: True)
    lay, q, k, v = qkv(PLAIN, torch.bfloat16)
    with torch.no_grad():
        packing.attend(q, k, v, lay)
    assert len(calls) == 1 and calls[0]["causal"] and calls[0]["mask"] is None and calls[0]["enable_gqa"]
    assert cuda_kernels(calls[0]) == ["flash"]


def test_ranking_runs_the_prefix_on_flash_and_the_candidates_on_the_efficient_kernel(calls, monkeypatch):
    monkeypatch.setattr(packing, "_is_cuda", lambda t: True)
    lay, q, k, v = qkv(WITH_PREFIX, torch.bfloat16)
    with torch.no_grad():
        packing.attend(q, k, v, lay)
    prefix, cands = calls
    assert prefix["causal"] and prefix["enable_gqa"] and cuda_kernels(prefix)[0] == "flash"
    assert cands["mask"] is not None and cuda_kernels(cands) == ["efficient"]


def test_training_stays_bf16_on_cuda_and_fp32_on_cpu(calls, monkeypatch):
    """CPU training attends in fp32 (CPU flash attention's backward ran 3.6x slower in bf16); on CUDA
    an fp32 cast would rule out flash and cuDNN."""
    lay, q, k, v = qkv(WITH_PREFIX, torch.bfloat16, grad=True)
    packing.attend(q, k, v, lay).float().sum().backward()
    assert {c["dtype"] for c in calls} == {torch.float32}
    calls.clear()
    monkeypatch.setattr(packing, "_is_cuda", lambda t: True)
    out = packing.attend(q, k, v, lay)
    out.float().sum().backward()
    assert {c["dtype"] for c in calls} == {torch.bfloat16} and out.dtype == torch.bfloat16
    assert all(cuda_kernels(c) for c in calls)


def test_the_hubs_forward_uses_it(hub, calls, monkeypatch):
    """Through the model: a hub's score (plain prompts) makes only causal, mask-free calls, one per
    layer and prompt length (each row attended at its own shape)."""
    monkeypatch.setattr(packing, "_is_cuda", lambda t: True)
    hub.score([(None, "a plain prompt"), (None, "another one, longer than the first")])
    n_layers = hub.model.config.num_hidden_layers
    assert len(calls) == 2 * n_layers and all(c["causal"] and c["mask"] is None for c in calls)
