"""Build a base's model in its target dtype on its device, one tensor at a time.

The model is created empty (parameters on 'meta'), then each weight is generated (random presets)
or read (a safetensors folder, one file or sharded) straight into the dtype the base is kept in
(bf16 on CUDA for nf4/int8/bf16) and onto the device, and each decoder Linear is quantized there
as soon as its weights are in. The peak is the model being built plus one tensor, never an fp32
copy of the whole model: an 8B base in NF4 loads in ~6 GB of GPU memory, not 32 GB.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from .errors import BaseModelError
from .quantize import quantized_linear, storage_dtype

INIT_STD = 0.02  # LlamaConfig.initializer_range: what transformers' own init draws the weights with


def build_random(config, dev: torch.device, quant: str, seed: int) -> nn.Module:
    """A Llama model of `config`'s shape with random weights, generated on `dev` in the target dtype
    (N(0, 0.02) matrices, unit norms, as transformers initialises). The values come from the device's
    generator seeded per tensor: the same seed gives the same base on one device for every quant
    mode (up to its rounding); CPU and CUDA draw different values (speed and memory do not care)."""
    model = _empty(config, storage_dtype(quant, dev))

    # listed first: fill() replaces the Linear modules while the weights are generated
    shapes = [(name, p.shape) for name, p in model.named_parameters()]  # tied weights once

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for i, (name, shape) in enumerate(shapes):
            if len(shape) == 1:
                yield name, torch.ones(shape, device=dev)
            else:
                g = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + i)
                yield name, torch.empty(shape, device=dev).normal_(0.0, INIT_STD, generator=g)
    return fill(model, tensors(), quant, dev, where="random weights")


def build_from_folder(folder: Path, quant: str, dev: torch.device) -> nn.Module:
    """A Hugging Face model folder (model.safetensors, or shards named by model.safetensors.index.json),
    read tensor by tensor with plain reads. from_pretrained maps the files and casts on the host: an
    NF4 load of SmolLM2 peaked at ~1.4 GB RSS that way, and a sharded 8B one would hold 32 GB in fp32."""
    from transformers import AutoConfig
    files = shard_files(folder)
    model = _empty(AutoConfig.from_pretrained(folder), storage_dtype(quant, dev))
    return fill(model, (t for f in files for t in read_tensors(f)), quant, dev, where=str(folder))


def shard_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder: the index's shards in order, or the one file."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise BaseModelError(f"{index}: not a safetensors index ({e}); re-save the model with save_pretrained") from e
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise BaseModelError(f"{index} names shards that are not in {folder}: {missing[:3]}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise BaseModelError(f"{folder} holds {len(files)} *.safetensors files and no model.safetensors.index.json "
                             "saying how they belong together; re-save the model with save_pretrained")
    return files


def read_tensors(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of one safetensors file, in file order, each read into its own host tensor."""
    from .safetensors_io import DTYPES, read_header
    header, start = read_header(file)
    with open(file, "rb") as fh:
        for name, info in header.items():
            t = torch.empty(info["shape"], dtype=getattr(torch, DTYPES[info["dtype"]][0]))
            fh.seek(start + info["data_offsets"][0])
            if t.numel() and fh.readinto(t.view(-1).view(torch.uint8).numpy()) != t.numel() * t.element_size():
                raise BaseModelError(f"{file}: tensor {name!r} is truncated")
            yield name, t


def _empty(config, dtype: torch.dtype) -> nn.Module:
    """The model of `config` with its parameters on 'meta' (no memory) and its buffers (rotary) real."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def fill(model: nn.Module, tensors: Iterable[tuple[str, torch.Tensor]], quant: str, dev: torch.device,
         where: str) -> nn.Module:
    """Put each (name, tensor) into the empty model, cast and moved to `dev`; quantize each decoder
    Linear (nf4/int8) on `dev` as soon as all its parameters are in."""
    dtype = storage_dtype(quant, dev)
    decoder_prefix = next(n for n, m in model.named_modules() if m is model.get_decoder()) + "."
    linears = {n for n, m in model.named_modules() if type(m) is nn.Linear}
    for name, t in tensors:
        model.load_state_dict({name: t.to(dev, dtype)}, strict=False, assign=True)
        del t
        path = name.rsplit(".", 1)[0]
        if quant in ("nf4", "int8") and path.startswith(decoder_prefix) and path in linears:
            module = model.get_submodule(path)
            if all(p.device.type != "meta" for p in module.parameters()):
                parent, _, child = path.rpartition(".")
                setattr(model.get_submodule(parent), child, quantized_linear(module, quant, dev))
    model.tie_weights()
    empty = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if empty:
        raise BaseModelError(f"{where} has no weights for {len(empty)} parameter(s) of the model, e.g. {empty[:3]}")
    for module in model.modules():  # buffers (rotary frequencies) were built on the host
        for key, buf in module._buffers.items():
            if buf is not None and buf.device != dev:
                module._buffers[key] = buf.to(dev)
    return model
