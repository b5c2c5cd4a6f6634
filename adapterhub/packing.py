"""Shared-prefix packing: one row per group, the history prefix once, every candidate after it.

A ranking group is one user's history prefix and several candidate suffixes. Instead of running
prefix+suffix once per candidate, a packed row is

    [prefix][cand 1][cand 2]...[cand K][pad]

where each candidate attends to the prefix and itself only, and position ids restart at
len(prefix) for every candidate. Every candidate's last hidden state is then exactly what it would
be in its own prompt (tested), the prefix runs once, and the whole group is one differentiable
forward: the same trick serves scoring and training. The tokens every candidate's suffix starts
with (a template's '\nWill the user like "') join the prefix first (share_leading): a third of
music's and news' suffix tokens.

The attention (attend; registered with transformers as packed_attention) computes only the blocks
that are let through: the prefix causally, then each candidate's tokens against [its prefix;
itself]. A dense width x width mask would compute every blocked pair as well. On Llama-family
models two forwards are replaced per instance (use_packed_attention), each falling back to
transformers' own without a packed layout: the attention (packed_self_attention: rotary and attend
in the projections' own layout) and, at inference, the last layer (packed_last_layer: its MLP only
on the tokens whose output is read).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F


WIDTH_STEP = 32


def pad_width(width: int) -> int:
    """Round a batch's width up to a multiple of WIDTH_STEP. oneDNN (torch's CPU matmuls) builds and
    caches a kernel per input shape: with a new width every batch, an evaluation of a few thousand
    prompts grew the process by GBs (measured 5 GB on video) and paid the build each time."""
    return -(-width // WIDTH_STEP) * WIDTH_STEP


@dataclass
class Layout:
    """Where each token of the packed rows sits, for packed_attention. Indices are into the rows'
    tokens flattened to (rows * width). Pads point at token 0: a pad key comes after every real query
    that could see it (causal) or is masked, and a pad query's output is never read."""
    prefix: torch.Tensor      # (groups, P): each group's prefix tokens, P = the longest prefix
    cands: torch.Tensor       # (candidates, S): each candidate's suffix tokens, S = the longest suffix
    cand_keys: torch.Tensor   # (candidates, P + S): its keys: its group's prefix tokens, then its own
    cand_mask: torch.Tensor   # (candidates or 1, 1, S, P + S) bool: its group's prefix, then itself causally
    back: torch.Tensor        # (rows * width,): where each token's output is in [prefix out; cand out]
    read: torch.Tensor | None = None  # (rows, K): each row's read tokens (candidates' last), a shorter row
    #                                   padded with one of its unread tokens; None: every token is read
    blocks: list[Block] | None = None  # exact: the groups by shape, each attended at its own shape; then
    #                                    `back` indexes their outputs, block after block


@dataclass
class Block:
    """The groups of one shape (prefix length P, longest suffix S), attended at exactly that shape. In
    bf16 a masked pad key still moves a row's attention (the kernel's blocking follows the key length):
    padded to a longer neighbour's length, a 40-token row's logit moved by ~0.02. Attended at its own
    shape, a group gets what it gets alone, whoever shares its batch."""
    prefix: torch.Tensor          # (groups, P), no pads
    cands: torch.Tensor           # (candidates, S)
    cand_keys: torch.Tensor       # (candidates, P + S)
    cand_mask: torch.Tensor | None = None  # (1, 1, S, P + S); None when P == 0 (plain causal)


@dataclass
class Packed:
    input_ids: torch.Tensor      # (rows, width)
    position_ids: torch.Tensor   # (rows, width)
    layout: Layout
    last: tuple[torch.Tensor, torch.Tensor]  # (row, column) of each candidate's last token, flat order
    sizes: list[int]             # candidates per group
    widths: list[int]            # tokens per group, as laid out (after share_leading)


def share_leading(prefix: list[int], suffixes: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Move the tokens every suffix of a group starts with into its prefix, where they run once. A
    prompt template's lead ('\nWill the user listen to the artist "': 9 of music's 27 suffix tokens)
    is the same for every candidate. Positions and what each token attends to do not change, so
    neither does any candidate's output; each suffix keeps at least its last token (its logit's)."""
    if len(suffixes) < 2:
        return prefix, suffixes
    first, most = suffixes[0], min(map(len, suffixes)) - 1
    k = 0
    while k < most and all(s[k] == first[k] for s in suffixes):
        k += 1
    return (list(prefix) + list(first[:k]), [s[k:] for s in suffixes]) if k else (prefix, suffixes)


def pack(groups: list[tuple[list[int], list[list[int]]]], device, one_row: bool = False,
         share: bool = True, exact: bool = False) -> Packed:
    """groups: [(prefix ids, [suffix ids, ...]), ...] -> one packed row per group, or (one_row) every
    group back to back in a single row: no padding between groups of unequal length. Rows matter only
    to a mixed batch, whose adapters each take a slice of rows. share: a group's common suffix lead
    joins its prefix (share_leading); off, every token given is one token of the rows. exact: each
    group's attention at its own shape (Block), so that its scores do not depend on its batch; off
    (training), one attention call over every group, padded to the longest."""
    if share:
        groups = [share_leading(p, sufs) for p, sufs in groups]
    widths = [len(p) + sum(len(s) for s in sufs) for p, sufs in groups]
    n = len(groups)
    starts = list(accumulate([0] + widths[:-1])) if one_row else [0] * n  # each group's first column
    n_rows, width = (1, pad_width(sum(widths))) if one_row else (n, pad_width(max(widths)))
    P = max(len(p) for p, _ in groups)
    S = max(len(s) for _, sufs in groups for s in sufs)
    n_cands = sum(len(sufs) for _, sufs in groups)
    input_ids = torch.zeros(n_rows * width, dtype=torch.long)
    position_ids = torch.zeros(n_rows * width, dtype=torch.long)
    prefix_idx = torch.zeros((n, P), dtype=torch.long)
    cand_idx = torch.zeros((n_cands, S), dtype=torch.long)
    cand_group, prefix_len = [], []
    back = torch.zeros(n_rows * width, dtype=torch.long)  # the row's pads read output 0: never used
    last = []
    for g, (prefix, suffixes) in enumerate(groups):
        p = len(prefix)
        at = (0 if one_row else g * width) + starts[g]  # flat index of the group's first token
        input_ids[at:at + p] = torch.tensor(prefix, dtype=torch.long)
        position_ids[at:at + p] = torch.arange(p)
        prefix_idx[g, :p] = torch.arange(at, at + p)
        back[at:at + p] = torch.arange(g * P, g * P + p)
        at += p
        for suf in suffixes:
            m, c = len(suf), len(cand_group)
            input_ids[at:at + m] = torch.tensor(suf, dtype=torch.long)
            position_ids[at:at + m] = torch.arange(p, p + m)
            cand_idx[c, :m] = torch.arange(at, at + m)
            back[at:at + m] = torch.arange(n * P + c * S, n * P + c * S + m)
            cand_group.append(g)
            prefix_len.append(p)
            last.append(at + m - 1)
            at += m
    per_row = [[] for _ in range(n_rows)]  # each row's read tokens, for packed_last_layer
    for i in last:
        per_row[i // width].append(i)
    k = max(map(len, per_row))
    read = [t + [_unread(t, r * width, width)] * (k - len(t)) if len(t) < k else t for r, t in enumerate(per_row)]
    lens = torch.tensor(prefix_len)
    if bool((lens == P).all()):
        lens = lens[:1]  # one prefix length: one mask for every candidate
    last = torch.tensor(last)
    cand_keys = torch.cat([prefix_idx[torch.tensor(cand_group, dtype=torch.long)], cand_idx], dim=1)
    shapes, blocks = [], []
    if exact:
        shapes, blocks, back = by_shape(groups, prefix_idx, cand_idx, cand_group, n_rows * width)
    (input_ids, position_ids, prefix_idx, cand_idx, cand_keys, back, read, rows, cols, lens, *blocks) = ship(
        [input_ids.view(n_rows, width), position_ids.view(n_rows, width), prefix_idx, cand_idx, cand_keys, back,
         torch.tensor(read), last // width, last % width, lens, *blocks], device)
    # a candidate's query i sees its group's prefix and its own tokens up to i; its pads come after its
    # last token, so no real query sees them, and no query is left with nothing to attend to. Built
    # where it is used, from the prefix lengths: no (candidates x S x (P + S)) mask crosses to the device
    own = torch.ones(S, S, dtype=torch.bool, device=lens.device).tril()
    seen = torch.arange(P, device=lens.device)[None, :] < lens[:, None]  # (c or 1, P)
    cand_mask = torch.cat([seen[:, None, :].expand(-1, S, -1), own.expand(len(lens), -1, -1)], dim=2)[:, None]
    layout = Layout(prefix_idx, cand_idx, cand_keys, cand_mask, back, read,
                    [_block(blocks[3 * i:3 * i + 3], P_b, S_b) for i, (P_b, S_b) in enumerate(shapes)] if exact else None)
    return Packed(input_ids, position_ids, layout, (rows, cols), [len(s) for _, s in groups], widths)


def by_shape(groups, prefix_idx, cand_idx, cand_group: list[int], n_tokens: int):
    """pack(exact=True): the candidates by shape -> (shapes, [prefix, cands, cand_keys] per shape
    flattened, back), `back` indexing the blocks' outputs in order: each block's prefix tokens, then
    its candidates' (S per candidate, pads included and never read). A group with a prefix (one
    user's candidates) is one shape, (prefix length, its longest suffix); without one, each of its
    candidates is a plain prompt of its own length (the batcher packs several callers' rows into one
    such group: padded to the longest, a row would depend on its neighbours)."""
    members: dict[tuple[int, int], tuple[list[int], list[int]]] = {}   # shape -> (groups, candidates)
    c = 0
    for g, (prefix, suffixes) in enumerate(groups):
        P, longest = len(prefix), max(map(len, suffixes))
        for suf in suffixes:
            gs, cs = members.setdefault((P, longest) if P else (0, len(suf)), ([], []))
            if P and (not gs or gs[-1] != g):
                gs.append(g)
            cs.append(c)
            c += 1
    owner = torch.tensor(cand_group, dtype=torch.long)
    lengths = torch.tensor([len(s) for _, sufs in groups for s in sufs], dtype=torch.long)
    back, parts, at = torch.zeros(n_tokens, dtype=torch.long), [], 0
    for (P_b, S_b), (gs, cs) in members.items():
        gs, cs = torch.tensor(gs, dtype=torch.long), torch.tensor(cs, dtype=torch.long)
        prefix, cands = prefix_idx[gs, :P_b], cand_idx[cs, :S_b]
        parts += [prefix, cands, torch.cat([prefix_idx[owner[cs], :P_b], cands], dim=1)]
        back[prefix.reshape(-1)] = torch.arange(at, at + prefix.numel())
        at += prefix.numel()
        real = torch.arange(S_b)[None, :] < lengths[cs][:, None]  # a shorter candidate's pads point at token 0
        back[cands[real]] = (at + torch.arange(cands.numel())).view_as(cands)[real]
        at += cands.numel()
    return list(members), parts, back


def _block(parts: list[torch.Tensor], P: int, S: int) -> Block:
    prefix, cands, cand_keys = parts
    own = torch.ones(S, S, dtype=torch.bool, device=cands.device).tril()
    mask = torch.cat([own.new_ones(S, P), own], dim=1)[None, None] if P else None
    return Block(prefix, cands, cand_keys, mask)


def ship(parts: list[torch.Tensor], device) -> list[torch.Tensor]:
    """pack()'s int64 tensors on `device` in one host-to-device copy: one buffer, pinned on CUDA so
    the copy does not block the host, split back into views there (ten blocking copies per pack()
    before). On the CPU the tensors are returned as they are."""
    device = torch.device(device)
    if device.type == "cpu":
        return parts
    flat = torch.cat([p.reshape(-1) for p in parts])
    if device.type == "cuda":
        flat = flat.pin_memory()
    flat = flat.to(device, non_blocking=True)
    out, at = [], 0
    for p in parts:
        out.append(flat[at:at + p.numel()].view(p.shape))
        at += p.numel()
    return out


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     packed_layout: Layout | None = None, **kwargs):
    """The decoder's attention over packed rows (attend). Registered with transformers as ATTENTION;
    without a layout (a plain prompt) it is sdpa.
    query (rows, heads, width, dim), key/value (rows, kv_heads, width, dim) -> (rows, width, heads, dim)."""
    if packed_layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows, heads, width, dim = query.shape

    def flat(t):  # (rows, h, width, dim) -> (rows * width, h, dim)
        return t.transpose(1, 2).reshape(rows * width, t.shape[1], dim)

    out = attend(flat(query), flat(key), flat(value), packed_layout, scaling, dropout)
    return out.view(rows, width, heads, dim), None


def attend(q, k, v, lay: Layout, scaling=None, dropout: float = 0.0) -> torch.Tensor:
    """Attention over packed rows, computing only the blocks the packing lets through: each group's
    prefix causally, then each candidate against [its group's prefix; itself]. A dense (width x width)
    mask computed every blocked pair too: 32% of a 20-candidate ranking forward.
    q (tokens, heads, dim), k/v (tokens, kv_heads, dim), tokens = rows * width -> (tokens, heads, dim)."""
    heads, dim = q.shape[1:]
    out_dtype = q.dtype
    # scoring attends in the matmuls' dtype. Training on CPU in fp32: CPU flash attention's backward
    # ran 3.6x slower in bf16; on CUDA in the matmuls' dtype too: flash and cuDNN refuse fp32
    dtype = torch.float32 if torch.is_grad_enabled() and not _is_cuda(q) else out_dtype
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)

    def gather(t, idx):  # -> (batch, h, len, dim). index_select: its backward is index_add_, which on
        # CPU was 10x faster than advanced indexing's index_put_ (22% of a training step)
        return t.index_select(0, idx.view(-1)).view(*idx.shape, t.shape[1], dim).transpose(1, 2)

    # each candidate's keys and values in one gather (its prefix's, then its own): no per-candidate copy of
    # the prefix's keys and no cat (3.5% of a music or news ranking, in-process A/B)
    if lay.blocks is not None:   # exact: each shape on its own
        outs = []
        for b in lay.blocks:
            if b.prefix.shape[1]:
                op = sdpa(gather(q, b.prefix), gather(k, b.prefix), gather(v, b.prefix), causal=True,
                          dropout=dropout, scale=scaling)
                outs.append(op.transpose(1, 2).reshape(-1, heads, dim))
            oc = sdpa(gather(q, b.cands), gather(k, b.cand_keys), gather(v, b.cand_keys), mask=b.cand_mask,
                      causal=b.cand_mask is None, dropout=dropout, scale=scaling)
            outs.append(oc.transpose(1, 2).reshape(-1, heads, dim))
        return torch.cat(outs).index_select(0, lay.back).to(out_dtype)
    qc, kc, vc = gather(q, lay.cands), gather(k, lay.cand_keys), gather(v, lay.cand_keys)
    outs = []
    if lay.prefix.shape[1]:
        qp, kp, vp = gather(q, lay.prefix), gather(k, lay.prefix), gather(v, lay.prefix)
        outs.append(sdpa(qp, kp, vp, causal=True, dropout=dropout, scale=scaling).transpose(1, 2).reshape(-1, heads, dim))
        oc = sdpa(qc, kc, vc, mask=lay.cand_mask, dropout=dropout, scale=scaling)
    else:  # no prefix: every candidate is a plain prompt and its mask is plain causal
        oc = sdpa(qc, kc, vc, causal=True, dropout=dropout, scale=scaling)
    outs.append(oc.transpose(1, 2).reshape(-1, heads, dim))
    return torch.cat(outs).index_select(0, lay.back).to(out_dtype)


def _is_cuda(t: torch.Tensor) -> bool:
    return t.device.type == "cuda"


def sdpa(q, k, v, mask=None, causal: bool = False, dropout: float = 0.0, scale=None) -> torch.Tensor:
    """F.scaled_dot_product_attention, with K/V laid out so that CUDA's fast kernels can take it.
    q (batch, heads, L, dim), k/v (batch, kv_heads, S, dim). With GQA (kv_heads < heads) PyTorch's
    CUDA backends allow only flash (no mask, fp16/bf16) and math; where flash cannot run (a mask, or
    fp32), K/V are expanded to every query head, so the memory-efficient kernel (masks, any float
    dtype) is eligible instead of math. The CPU keeps the grouped heads (its kernels take them)."""
    gqa = k.shape[1] != q.shape[1]
    if gqa and _is_cuda(q) and (mask is not None or q.dtype not in (torch.float16, torch.bfloat16)):
        rep = q.shape[1] // k.shape[1]
        k, v, gqa = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=scale,
                                          enable_gqa=gqa)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as transformers' Llama applies it, x * cos + rotate_half(x) * sin, where
    rotate_half(x) = [-x2, x1]: in three kernels instead of seven, with no cat (2.6x faster on a
    480-token ranking). x (tokens, heads, dim); cos, sin (tokens, 1, dim)."""
    h = x.shape[-1] // 2
    out = x * cos
    out[..., :h].addcmul_(x[..., h:], sin[..., :h], value=-1)
    out[..., h:].addcmul_(x[..., :h], sin[..., h:])
    return out


def packed_self_attention(attn, original, hidden_states, position_embeddings=None, attention_mask=None,
                          packed_layout: Layout | None = None, **kwargs):
    """A Llama attention module's forward over packed rows: its own projections (LoRA and hooks
    included), rotary and attend() in the (tokens, heads, dim) layout the projections give, without
    the transposes to (rows, heads, width, dim) and back. Without a layout: `original`."""
    if packed_layout is None:
        return original(hidden_states, position_embeddings=position_embeddings, attention_mask=attention_mask,
                        **kwargs)
    rows, width, _ = hidden_states.shape
    n, d = rows * width, attn.head_dim
    q, k, v = (proj(hidden_states).view(n, -1, d) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    cos, sin = (t.expand(rows, width, d).reshape(n, 1, d) for t in position_embeddings)
    out = attend(rotate(q, cos, sin), rotate(k, cos, sin), v, packed_layout, attn.scaling,
                 attn.attention_dropout if attn.training else 0.0)
    return attn.o_proj(out.view(rows, width, -1)), None


def packed_last_layer(layer, original, hidden_states, packed_layout: Layout | None = None, **kwargs):
    """The last decoder layer's forward at inference, when only some tokens' outputs are read
    (layout.read): attention over every token, as their keys are all needed, then the MLP only on
    the read tokens (20 of a music ranking's 480). The other tokens keep their attention-only state:
    nothing may read them. 1-3% of a music ranking (in-process A/B, near its noise). Otherwise
    (training, no `read`): `original`."""
    read = None if packed_layout is None else packed_layout.read
    if read is None or torch.is_grad_enabled():
        return original(hidden_states, packed_layout=packed_layout, **kwargs)
    h, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), packed_layout=packed_layout, **kwargs)
    h = (hidden_states + h).view(-1, hidden_states.shape[-1])
    r = h.index_select(0, read.view(-1)).view(*read.shape, -1)  # (rows, K, hidden): rows kept for mixed batches
    r = r + layer.mlp(layer.post_attention_layernorm(r))
    return h.index_copy_(0, read.view(-1), r.view(-1, r.shape[-1])).view_as(hidden_states)


ATTENTION = "adapterhub_packed"


def use_packed_attention(model) -> None:
    """Route the model's attention through packed_attention. Forwards without a layout (a padded
    batch with a 2-D attention_mask, the causal-LM warm-up) keep sdpa's masks and kernels."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    AttentionInterface.register(ATTENTION, packed_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
    model.set_attn_implementation(ATTENTION)
    if model.config._attn_implementation != ATTENTION:
        raise RuntimeError(f"{type(model).__name__} did not take the packed attention")
    for layer in model.get_decoder().layers:  # the Llama family's attention: packed_self_attention
        attn = getattr(layer, "self_attn", None)
        if type(attn).__name__ == "LlamaAttention":
            attn.forward = functools.partial(packed_self_attention, attn, attn.forward)
    last = model.get_decoder().layers[-1]
    if type(last).__name__ == "LlamaDecoderLayer":
        last.forward = functools.partial(packed_last_layer, last, last.forward)


def last_hidden(decoder, packed: Packed, prune: bool = True) -> torch.Tensor:
    """Final hidden state at each candidate's last token -> (candidates, hidden), groups in order.
    prune: at inference, the last layer's MLP runs on those tokens only (packed_last_layer); off, on
    every token (RegMean's statistics count them all)."""
    layout = packed.layout if prune else dataclasses.replace(packed.layout, read=None)
    h = decoder(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False,
                attention_mask=_unused_mask(packed.input_ids.device),
                packed_layout=layout).last_hidden_state  # (rows, width, hidden)
    return h[packed.last]


@functools.lru_cache(maxsize=None)
def _unused_mask(device) -> torch.Tensor:
    """A 4-D mask that transformers hands on as it is. The packed attention reads the layout, never a
    mask; without one, every forward built a causal mask and searched the position ids for packed
    sequences (~10% of a light request on a small base), only for the attention to ignore it."""
    return torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)


def _unread(read: list[int], start: int, width: int) -> int:
    """A token of the row [start, start + width) whose output is not read: a shorter row's padding in
    Layout.read (a repeated index would make index_copy_ pick one of two writes)."""
    taken = set(read)
    return next(i for i in range(start, start + width) if i not in taken)
