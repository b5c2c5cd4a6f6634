"""Read and write safetensors files, checking the header before any memory is allocated.

Reading builds every tensor as a view into one buffer holding the file, so a resident adapter
costs exactly its file's bytes, and dropping the tensors gives that one buffer back.
"""
from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import save as _st_save

from .errors import RegistryError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
          "U8": torch.uint8, "BOOL": torch.bool}
MAX_HEADER_BYTES = 16 << 20
MAX_FILE_BYTES = 4 << 30  # a LoRA adapter is MBs; anything near this is hostile or a mistake


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> str:
    """Write (fsynced) and return the sha256 of the bytes written."""
    data = _st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return hashlib.sha256(data).hexdigest()


def read_header(path: Path) -> tuple[dict, int]:
    """-> (tensor entries, data start). Every claim is checked against the file's real size."""
    size = path.stat().st_size
    if size < 8:
        raise RegistryError(f"{path} is empty or truncated ({size} bytes): not a safetensors file")
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise RegistryError(f"{path}: header claims {n} bytes but the file has {size}: truncated or corrupt")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RegistryError(f"{path}: header is not valid JSON ({e}): corrupt file") from e
    if not isinstance(header, dict):
        raise RegistryError(f"{path}: header is not a JSON object")
    header.pop("__metadata__", None)
    data_bytes = size - 8 - n
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
            ok = all(isinstance(d, int) and d >= 0 for d in shape) and isinstance(begin, int) and isinstance(end, int)
        except (KeyError, TypeError, ValueError):
            raise RegistryError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
        want = math.prod(shape) * torch.empty((), dtype=dtype).element_size() if ok else -1
        if not ok or not 0 <= begin <= end <= data_bytes or end - begin != want:
            raise RegistryError(f"{path}: tensor {name!r} claims shape {shape} at bytes {begin}..{end}, "
                                f"but the file holds {data_bytes} data bytes: truncated or hostile file")
    return header, 8 + n


def read_safetensors(path: Path, expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """-> (tensors as views into one buffer, sha256). Raises RegistryError on any mismatch."""
    path = Path(path)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise RegistryError(f"{path} is {path.stat().st_size} bytes, larger than any adapter should be; refusing")
    header, start = read_header(path)
    size = path.stat().st_size
    # An anonymous mapping rather than bytes/bytearray: one copy of the file, and unmapped (given
    # back to the OS, not kept by malloc) when the last tensor viewing it is dropped.
    buf = mmap.mmap(-1, max(size, 1))
    with open(path, "rb") as fh:
        if fh.readinto(buf) != size:
            raise RegistryError(f"{path} changed while being read; try again")
    digest = hashlib.sha256(buf).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise RegistryError(f"{path}: sha256 {digest[:12]}... does not match the card's {expected_sha256[:12]}...: "
                            "the weights were changed or corrupted after publishing")
    tensors = {}
    for name, info in header.items():
        dtype, shape, (begin, _end) = DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
        n = math.prod(shape)
        t = torch.frombuffer(buf, dtype=dtype, count=n, offset=start + begin) if n else torch.empty(0, dtype=dtype)
        tensors[name] = t.view(shape)
    return tensors, digest
