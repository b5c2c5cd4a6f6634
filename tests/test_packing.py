"""Shared-prefix packing: one row per group must give each candidate exactly what its own
full prompt gives, in the forward and in the gradient."""
import pytest
import torch
import torch.nn.functional as F

from adapterhub import packing
from adapterhub.lora import TRAIN
from conftest import plain_logit

GROUPS = [([1, 5, 9, 14, 3, 7], [[20, 21], [22], [23, 24, 25]]), ([1, 8, 8], [[30, 31, 32, 33]]),
          ([1, 40, 41, 42, 43, 44, 45, 46, 47], [[50], [51, 52]]),
          ([1, 60, 61], [[70, 71, 72], [70, 71, 73, 74], [70, 71, 75]])]  # a common lead: 70, 71 run once


def test_pack_layout():
    p = packing.pack([([1, 2], [[3], [4, 5]])], "cpu")
    width = packing.WIDTH_STEP  # padded up to a multiple of WIDTH_STEP (few distinct shapes)
    assert p.input_ids.shape == (1, width) and p.input_ids[0, 5:].eq(0).all()
    assert p.input_ids[0, :5].tolist() == [1, 2, 3, 4, 5]
    assert p.position_ids[0, :5].tolist() == [0, 1, 2, 2, 3]  # every candidate restarts after the prefix
    lay = p.layout
    assert lay.prefix.tolist() == [[0, 1]]
    assert lay.cands.tolist() == [[2, 0], [3, 4]]            # candidate 1 is padded (to token 0, masked)
    assert lay.cand_keys.tolist() == [[0, 1, 2, 0], [0, 1, 3, 4]]  # its prefix, then itself (pad: 0, masked)
    assert lay.cand_mask.int().tolist() == [[[[1, 1, 1, 0],   # candidate token 1: the prefix and itself
                                              [1, 1, 1, 1]]]]  # one prefix length: one mask for all
    # outputs go back in place: prefix (0, 1), candidate 1 (slot 2), candidate 2 (slots 4, 5); pads read 0
    assert lay.back[:5].tolist() == [0, 1, 2, 4, 5] and lay.back[5:].eq(0).all()
    assert p.last[1].tolist() == [2, 4] and p.sizes == [2]
    assert [packing.pad_width(w) for w in (1, 32, 33, 700)] == [32, 32, 64, 704]


def test_a_groups_common_suffix_lead_runs_once_in_its_prefix():
    p = packing.pack([([1, 2], [[7, 8, 3], [7, 8, 4, 5]])], "cpu")
    assert p.input_ids[0, :7].tolist() == [1, 2, 7, 8, 3, 4, 5]          # 7, 8 once, not once per candidate
    assert p.position_ids[0, :7].tolist() == [0, 1, 2, 3, 4, 4, 5]       # the positions the full prompts have
    assert p.layout.prefix.tolist() == [[0, 1, 2, 3]] and p.last[1].tolist() == [4, 6]
    # every suffix keeps its last token (its logit's); a lone candidate has nothing to share
    assert packing.share_leading([1], [[7, 8], [7, 8]]) == ([1, 7], [[8], [8]])
    assert packing.share_leading([1], [[7, 8]]) == ([1], [[7, 8]])
    assert packing.share_leading([1], [[7, 8], [9, 8]]) == ([1], [[7, 8], [9, 8]])
    off = packing.pack([([1, 2], [[7, 8, 3], [7, 8, 4, 5]])], "cpu", share=False)
    assert off.input_ids[0, :9].tolist() == [1, 2, 7, 8, 3, 7, 8, 4, 5]


def test_pack_masks_each_rows_own_prefix():
    p = packing.pack([([1, 2, 3], [[4]]), ([5], [[6, 7]])], "cpu")
    assert p.layout.cand_mask[:, 0].int().tolist() == [[[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]],
                                                       [[1, 0, 0, 1, 0], [1, 0, 0, 1, 1]]]


def test_one_row_puts_groups_back_to_back():
    groups = [([1, 2, 3], [[4]]), ([5], [[6, 7]])]
    p = packing.pack(groups, "cpu", one_row=True)
    assert p.input_ids.shape == (1, packing.WIDTH_STEP)
    assert p.input_ids[0, :7].tolist() == [1, 2, 3, 4, 5, 6, 7]       # no padding between the groups
    assert p.position_ids[0, :7].tolist() == [0, 1, 2, 3, 0, 1, 2]    # positions restart at each group
    assert p.layout.prefix.tolist() == [[0, 1, 2], [4, 0, 0]]         # a shorter prefix is padded (masked)
    assert p.last[0].tolist() == [0, 0] and p.last[1].tolist() == [3, 6]
    rows = packing.pack(groups, "cpu")                                 # a row per group
    assert rows.input_ids.shape == (2, packing.WIDTH_STEP) and rows.last[0].tolist() == [0, 1]


def test_one_row_and_a_row_per_group_give_the_same_hidden_states(hub):
    with torch.no_grad(), hub.use(None):
        one = packing.last_hidden(hub.decoder, packing.pack(GROUPS, hub.device, one_row=True))
        rows = packing.last_hidden(hub.decoder, packing.pack(GROUPS, hub.device))
    assert torch.allclose(one, rows, atol=1e-5)


def test_packed_attention_is_the_models_attention(hub):
    assert hub.model.config._attn_implementation == packing.ATTENTION


def test_packed_logits_equal_full_prompts(hub):
    full = [p + s for p, sufs in GROUPS for s in sufs]
    with torch.no_grad():
        packed = hub.packed_logits(None, GROUPS)
        alone = torch.cat([plain_logit(hub, None, ids) for ids in full])
    assert torch.allclose(packed, alone, atol=1e-5), (packed, alone)


def test_packed_gradients_equal_full_prompt_gradients(hub):
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    full = [p + s for p, sufs in GROUPS for s in sufs]
    grads = []
    for run in ("packed", "full"):
        torch.manual_seed(0)
        with hub.trainable(4, 8.0, 0.0, ("q_proj", "v_proj")) as pairs, hub.use(TRAIN):
            for p in pairs.params[1::2]:  # B starts at zero: give it values so A gets a gradient too
                torch.nn.init.normal_(p, std=0.1)
            logits = (hub.packed_logits(TRAIN, GROUPS) if run == "packed"
                      else torch.cat([plain_logit(hub, TRAIN, ids) for ids in full]))
            F.binary_cross_entropy_with_logits(logits, labels).backward()
            grads.append([p.grad.clone() for p in pairs.params])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)
    assert all(m.lora_A is None for m in hub.wrapped.values())  # the pairs are gone after the with


def test_ranking_uses_packing_and_matches_full_prompts(hub):
    prefix, suffixes = "The user liked a b c", [" x?", " yy?", " zzz?", " w?", " v?"]
    packed = hub.score_candidates(None, prefix, suffixes, batch_size=2)  # 3 packed rows
    full = hub.score_candidates(None, prefix, suffixes, reuse_prefix=False)
    assert packed == pytest.approx(full, abs=1e-6)


def test_rotate_is_transformers_rotary():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 7, 8), torch.randn(2, 2, 7, 8)  # (rows, heads, width, dim)
    cos, sin = torch.randn(2, 7, 8), torch.randn(2, 7, 8)    # not [c, c]: rotate must not assume it
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)

    def flat(t):
        return t.transpose(1, 2).reshape(14, t.shape[1], 8)
    c, s = cos.reshape(14, 1, 8), sin.reshape(14, 1, 8)
    assert torch.allclose(packing.rotate(flat(q), c, s), flat(want_q), atol=1e-6)
    assert torch.allclose(packing.rotate(flat(k), c, s), flat(want_k), atol=1e-6)


def test_the_last_layer_runs_its_mlp_on_read_tokens_only(hub):
    """At inference the last layer's MLP sees each row's read tokens (a shorter row padded with an
    unread one), and every candidate's output is what the full layer gives, also in a mixed batch of
    adapters that target the MLP (each adapter's tokens one span of the row)."""
    from conftest import publish_random
    mlp = ("gate_proj", "up_proj", "down_proj")
    for i, name in enumerate(("m1", "m2")):
        publish_random(hub, name, seed=i, targets=mlp + ("q_proj",))
    keys = [hub.load(n).key for n in ("m1", "m2", "m1", "m2")]
    seen = []
    hook = hub.decoder.layers[-1].mlp.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    try:
        with torch.no_grad():
            mixed = hub.packed_logits(keys, GROUPS)  # a row per group: 3, 1, 2 and 3 candidates
            full = torch.cat([plain_logit(hub, k, p + s) for k, (p, sufs) in zip(keys, GROUPS) for s in sufs])
            one = hub.packed_logits(keys[0], GROUPS)
            one_full = torch.cat([plain_logit(hub, keys[0], p + s) for p, sufs in GROUPS for s in sufs])
    finally:
        hook.remove()
    # (rows, read, hidden): the mixed batch and (after its 9 full prompts) one adapter, each packed in one row
    assert seen[0] == (1, 9, hub.model.config.hidden_size) and seen[1 + 9][:2] == (1, 9)
    assert torch.allclose(mixed, full, atol=1e-5) and torch.allclose(one, one_full, atol=1e-5)
    packed = packing.pack(GROUPS, "cpu")
    with torch.no_grad(), hub.use(None):  # prune=False: the MLP sees every token (RegMean's statistics)
        seen.clear()
        hook = hub.decoder.layers[-1].mlp.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
        packing.last_hidden(hub.decoder, packed, prune=False)
        hook.remove()
    assert seen == [(4, packed.input_ids.shape[1], hub.model.config.hidden_size)]


def test_pack_copies_to_the_device_once(monkeypatch):
    """Every index tensor of a pack() crosses to the device in one copy ('meta' stands in for a GPU),
    and the candidates' mask is built there from the prefix lengths."""
    copies = []
    real_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        out = real_to(self, *args, **kwargs)
        if out.device.type == "meta" and self.device.type == "cpu":
            copies.append(kwargs.get("non_blocking"))
        return out
    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    p = packing.pack(GROUPS, "meta")
    assert copies == [True]
    lay = p.layout
    for t in (p.input_ids, p.position_ids, lay.prefix, lay.cands, lay.cand_keys, lay.cand_mask, lay.back, lay.read,
              *p.last):
        assert t.device.type == "meta"
    cpu = packing.pack(GROUPS, "cpu")
    assert lay.cand_mask.shape == cpu.layout.cand_mask.shape and lay.cand_mask.dtype == torch.bool


def test_ship_pins_the_buffer_on_cuda(monkeypatch):
    """On CUDA the one buffer is pinned, so the copy is asynchronous (no CUDA here: both mocked)."""
    pinned, moved = [], []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.numel()) or self)
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if args and str(args[0]).startswith("cuda"):
            moved.append(kwargs.get("non_blocking"))
            return self
        return real_to(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "to", to)
    parts = [torch.arange(6).view(2, 3), torch.tensor([7, 8]), torch.zeros(0, dtype=torch.long)]
    out = packing.ship(parts, torch.device("cuda"))
    assert pinned == [8] and moved == [True]
    assert [o.tolist() for o in out] == [p.tolist() for p in parts]
    assert packing.ship(parts, "cpu") is parts  # nothing to copy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exact_packing_gives_a_group_what_it_gets_alone(hub, dtype):
    """pack(exact=True), the scoring path: each group attended at its own shape, so a group's hidden
    states inside a batch of longer and shorter neighbours equal its own batch's: bit for bit through
    every layer, in bf16 too (padded to the longest, a bf16 row moved with its neighbours); with the
    last layer's MLP on the read tokens only, to the rounding of a matmul over more rows."""
    decoder = hub.decoder.to(dtype)

    def hidden(groups, prune, exact=True):
        return packing.last_hidden(decoder, packing.pack(groups, hub.device, one_row=True, exact=exact), prune).float()
    try:
        with torch.no_grad(), hub.use(None):
            for prune in (False, True):
                batch, alone = hidden(GROUPS, prune), torch.cat([hidden([g], prune) for g in GROUPS])
                if prune:
                    assert torch.allclose(batch, alone, atol=1e-6 if dtype == torch.float32 else 1e-2, rtol=0)
                else:
                    assert torch.equal(batch, alone)
            padded = hidden(GROUPS, False, exact=False)
    finally:
        hub.decoder.to(torch.float32)
    assert torch.allclose(batch, padded, atol=1e-5 if dtype == torch.float32 else 0.1)
    lay = packing.pack(GROUPS, "cpu", exact=True).layout
    assert [tuple(b.cand_keys.shape) for b in lay.blocks] == [(3, 9), (1, 7), (2, 11), (3, 7)]
    two = packing.pack([GROUPS[1], GROUPS[1]], "cpu", exact=True).layout.blocks   # one shape: one block
    assert len(two) == 1 and two[0].prefix.shape == (2, 3)


def test_exact_packing_keeps_plain_rows_packed_together_apart(hub):
    """Rows without a prefix packed side by side as one group (the batcher's score rows): under exact
    each is attended at its own length, so a row gets what it gets alone whoever shares its group."""
    rows = [[1, 5, 9, 14, 3, 7], [2, 8], [1, 40, 41, 42, 43, 44, 45, 46, 47, 48], [3]]
    decoder = hub.decoder.to(torch.bfloat16)
    try:
        with torch.no_grad(), hub.use(None):
            together = packing.last_hidden(decoder, packing.pack([([], rows)], hub.device, exact=True), False)
            alone = torch.cat([packing.last_hidden(decoder, packing.pack([([], [r])], hub.device, exact=True), False)
                               for r in rows])
    finally:
        hub.decoder.to(torch.float32)
    assert torch.equal(together, alone)
    assert len(packing.pack([([], rows)], "cpu", exact=True).layout.blocks) == 4
