"""Export an adapter for use without adapterhub.

merge_into_base=False: the PEFT folder (adapter_config.json + adapter_model.safetensors), which
  PEFT, vLLM (LoRARequest) and LoRAX load directly; its base_model_name_or_path names a model they
  can resolve (model_ids.hub_model_id: 'smollm2-135m' -> 'HuggingFaceTB/SmolLM2-135M-Instruct').
merge_into_base=True: a standalone transformers model folder, W' = W + (alpha/r) B @ A, written
  from the base's full-precision weights (never from 4-bit ones: re-quantizing a merged 4-bit base
  is lossy, logits move by 10-18 on SmolLM2). Its scores match a bf16/fp32 hub within rounding;
  against an NF4 hub they differ by the NF4 quantization error itself.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .errors import ConfigError, RegistryError
from .files import atomic_dir
from .merge import read_pairs
from .model_ids import hub_model_id

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def export(hub, ref: str, out_dir: str | os.PathLike, merge_into_base: bool = True, dtype: str = "bf16",
           overwrite: bool = False) -> Path:
    out = check_out(out_dir, dtype, overwrite)
    folder = hub.registry.resolve(ref)
    with atomic_dir(out) as tmp:
        if not merge_into_base:
            for f in ("adapter_model.safetensors", "card.json"):
                shutil.copy2(folder / f, tmp / f)
            config, _, card, _ = hub.registry.load(ref)  # verifies the checksum of what was copied
            spec = (card.get("base") or {}).get("spec") or hub.base.spec
            config = {**config, "base_model_name_or_path": hub_model_id(spec)}
            (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        else:
            _write_merged(hub, ref, tmp, DTYPES[dtype])
    return out


def check_out(out_dir, dtype: str = "bf16", overwrite: bool = False) -> Path:
    """The export arguments, checked before any model work: a known dtype, an empty or new folder."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}' (choose: {', '.join(DTYPES)})")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RegistryError(f"{out} exists and is not a folder; choose another output folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RegistryError(f"{out} exists and is not empty; choose another folder or pass overwrite=True (--overwrite)")
    return out


def _write_merged(hub, ref: str, tmp: Path, dtype: torch.dtype) -> None:
    from .base import load_base
    pairs, scale, _config, card = read_pairs(hub.registry, ref)
    full = load_base(hub.base.spec, quant="fp32", device="cpu", seed=hub.base.seed).model  # full precision
    modules = dict(full.named_modules())
    with torch.no_grad():
        for path, (A, B) in pairs.items():
            linear = modules.get(path)
            if linear is None or not hasattr(linear, "weight"):
                raise RegistryError(f"adapter '{ref}' targets '{path}', which base {hub.base.spec!r} does not have")
            linear.weight += scale * (B @ A)
    full.to(dtype)
    full.save_pretrained(tmp)
    hub.tokenizer.save_pretrained(tmp)
    (tmp / "adapterhub_export.json").write_text(json.dumps(
        {"adapter": f"{card['name']}@{card['version']}", "base": card.get("base"),
         "base_model": hub_model_id(hub.base.spec), "dtype": str(dtype)}, indent=2))
