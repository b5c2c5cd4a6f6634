"""Quantization: the decoder's nn.Linear layers as bitsandbytes NF4/int8 layers, quantized on the
device they run on; their dequantized copies (compute='bf16'/'fp32'); the CPU NF4 guard.

The only module that imports bitsandbytes. A 4/8-bit layer is built from a weight that is already on
its device (a random base is generated there, a folder is streamed there tensor by tensor), so a GPU
load never round-trips a layer through the host and never holds the whole unquantized model.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
from torch import nn


def compute_dtype(dev: torch.device) -> torch.dtype:
    """What 4/8-bit layers (and the embeddings and norms beside them) compute in on a device:
    bf16 on CUDA (the memory is the point there), fp32 on CPU."""
    return torch.bfloat16 if dev.type == "cuda" else torch.float32


def storage_dtype(quant: str, dev: torch.device) -> torch.dtype:
    """The dtype a base's weights are built or read in before quantizing: the target dtype itself."""
    if quant in ("bf16", "fp32"):
        return torch.bfloat16 if quant == "bf16" else torch.float32
    return compute_dtype(dev)


def quantize_(model: nn.Module, quant: str, dev: torch.device) -> None:
    """Swap the decoder's remaining nn.Linear layers for bitsandbytes ones (nf4/int8), or cast (bf16/fp32).
    Layers a streamed load already quantized are left as they are."""
    if quant in ("bf16", "fp32"):
        model.to(storage_dtype(quant, dev))
        return
    model.to(compute_dtype(dev))  # embeddings and norms compute in the same dtype as the 4/8-bit layers
    for parent in list(model.get_decoder().modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, child_name, quantized_linear(child, quant, dev))
    guard_nf4_(model)


def quantized_linear(child: nn.Linear, quant: str, dev: torch.device) -> nn.Module:
    """One nn.Linear as a bitsandbytes nf4/int8 layer on `dev`, quantized there: the weight moves to
    `dev` once (a no-op when it is already there) and is never copied back to the host."""
    bnb = import_bitsandbytes()
    dtype = compute_dtype(dev)
    weight = child.weight.data.to(dev, dtype)
    if quant == "nf4":
        new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                compute_dtype=dtype, quant_type="nf4", device="meta")
        # Params4bit.to(dev) quantizes on dev (the data is there already: no copy)
        new.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4").to(dev)
    elif quant == "int8":
        new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                  has_fp16_weights=False, threshold=6.0, device="meta")
        # what Int8Params does on a host -> device move, done where the weight already is
        cb, scb, _ = bnb.functional.int8_vectorwise_quant(weight.to(torch.float16))
        param = bnb.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False)
        param.CB, param.SCB = cb, scb
        new.weight = param
    else:
        raise ValueError(f"quantized_linear: quant {quant!r} is not nf4 or int8")
    if child.bias is not None:
        new.bias = nn.Parameter(child.bias.data.to(dev, dtype), requires_grad=False)
    return new


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


@contextmanager
def _quiet(logger_name: str, start: str):
    """Drop one known log message of one library logger, for the duration of a call only."""
    logger, f = logging.getLogger(logger_name), _DropMessage(start)
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


def import_bitsandbytes():
    """bitsandbytes, imported without its CPU note about an optional `kernels` package (it falls
    back to its own kernel, and adapterhub does not use the repacked path anyway)."""
    with _quiet("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"):
        import bitsandbytes
    # int8 on CPU casts fp32 inputs to fp16 and says so on every forward: expected, not news.
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_DropMessage("MatMul8bitLt: inputs will be cast"))
    return bitsandbytes


class DequantizedLinear(nn.Linear):
    """A 4/8-bit Linear's weights, dequantized once, kept in `weight.dtype` (bf16 or fp32). The
    matmul runs in that dtype; input and output keep the model's dtype, so the residual stream and
    the norms stay fp32 and only the matmul inputs are rounded (bf16: P(yes) within ~0.01)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        # an nn.Linear (so that PEFT and others accept it), built empty on meta, then given the weights
        super().__init__(weight.shape[1], weight.shape[0], bias=False, device="meta", dtype=weight.dtype)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.to(weight.dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out), x's dtype
        return nn.functional.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)


def dequantize_(model: nn.Module, dtype: torch.dtype) -> None:
    """Replace every 4/8-bit Linear by a DequantizedLinear holding the values its kernels compute with."""
    bnb = import_bitsandbytes()
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                w = bnb.functional.dequantize_4bit(child.weight.data, child.weight.quant_state)
            elif isinstance(child, bnb.nn.Linear8bitLt):
                w = bnb.functional.int8_vectorwise_dequant(child.weight.data, child.weight.SCB)
            else:
                continue
            setattr(parent, child_name, DequantizedLinear(w.to(dtype), None if child.bias is None else child.bias.data))


def _to_bf16(module, inputs, output):
    return output.to(torch.bfloat16)


def _to_fp32(module, inputs, output):
    return output.float()


def bf16_layer_inputs_(model: nn.Module) -> None:
    """compute='bf16': every RMSNorm inside a decoder layer hands its (fp32-computed) output on in
    bf16, so the layer's matmuls need no input casts; the query, key and value projections hand
    theirs on in fp32, so rotary and attention stay fp32, as do the residual stream and the final
    norm.
    Measured on SmolLM2 with a trained adapter: P(yes) within 0.005 of the NF4 kernels; with q/k/v
    left in bf16 (rotary and attention in bf16) it was 0.043 off."""
    for layer in model.get_decoder().layers:
        for name, m in layer.named_modules():
            if type(m).__name__.endswith("RMSNorm"):
                m.register_forward_hook(_to_bf16)
            elif name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj"):
                m.register_forward_hook(_to_fp32)


def guard_nf4_(model: nn.Module) -> int:
    """Neutralise the CPU NF4 trap (DESIGN.md section 2).

    On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights on the first forward; a later
    state_dict() (which PEFT calls in load_adapter/save_pretrained) then scrambles them: logits
    off by ~47 with no error. Turning the repacking off makes every case exact (~1.3x slower).
    """
    n = 0
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def param_bytes(model: nn.Module, where: str = "all") -> int:
    """Bytes of parameters and buffers as stored (4-bit weights count as their packed bytes + absmax;
    8-bit ones their int8 bytes + row scales). where: 'all', or 'linear' (the decoder's Linear
    layers: what quantization shrinks; embeddings, head and norms stay in the compute dtype)."""
    tensors = list(model.parameters()) + list(model.buffers())
    if where == "linear":
        tensors = [p for m in model.get_decoder().modules() if hasattr(m, "in_features") and hasattr(m, "weight")
                   for p in m.parameters(recurse=False)]
    seen, total = set(), 0
    for t in tensors:
        if t.data_ptr() in seen:
            continue  # tied embeddings count once
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
        qs = getattr(t, "quant_state", None)
        if qs is not None and getattr(qs, "absmax", None) is not None:
            total += qs.absmax.numel() * qs.absmax.element_size()
        scb = getattr(t, "SCB", None)
        if isinstance(scb, torch.Tensor) and scb.data_ptr() not in seen:
            total += scb.numel() * scb.element_size()
    return total
