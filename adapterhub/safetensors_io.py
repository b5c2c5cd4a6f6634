"""Read and write safetensors files, checking the header before any memory is allocated.

Reading builds every tensor as a view into one buffer holding the file, so a resident adapter
costs exactly its file's bytes, and dropping the tensors gives that one buffer back. torch is
imported only to build or save tensors, so checking a header (and `adapterhub list`) stays fast.
"""
from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import RegistryError

if TYPE_CHECKING:
    import torch

# safetensors dtype -> (torch dtype name, bytes per element)
DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
          "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
          "U8": ("uint8", 1), "BOOL": ("bool", 1)}
MAX_HEADER_BYTES = 16 << 20
MAX_FILE_BYTES = 4 << 30  # a LoRA adapter is MBs; anything near this is hostile or a mistake
MAX_DIM, MAX_NDIM = 1 << 40, 8  # beyond these a shape is hostile (and torch would overflow on it)


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> str:
    """Write (fsynced) and return the sha256 of the bytes written."""
    from safetensors.torch import save as _st_save
    data = _st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return hashlib.sha256(data).hexdigest()


def read_header(path: Path) -> tuple[dict, int]:
    """-> (tensor entries, data start). Every claim is checked against the file's real size."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise RegistryError(f"{path} is {size} bytes, larger than any adapter should be; refusing")
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
            (_, itemsize), shape, (begin, end) = DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
            ok = (isinstance(shape, list) and len(shape) <= MAX_NDIM and all(type(d) is int and 0 <= d < MAX_DIM for d in shape)
                  and type(begin) is int and type(end) is int)
        except (KeyError, TypeError, ValueError):
            raise RegistryError(f"{path}: tensor {name!r} has a malformed header entry {str(info)[:200]} "
                                f"(dtypes read: {', '.join(DTYPES)})") from None
        want = math.prod(shape) * itemsize if ok else -1
        if not ok or not 0 <= begin <= end <= data_bytes or end - begin != want:
            raise RegistryError(f"{path}: tensor {name!r} claims shape {str(shape)[:200]} at bytes {begin}..{end}, "
                                f"but the file holds {data_bytes} data bytes: truncated or hostile file")
    return header, 8 + n


def read_safetensors(path: Path, expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """-> (tensors as views into one buffer, sha256). Raises RegistryError on any mismatch."""
    import torch
    path = Path(path)
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
        dtype, shape, begin = getattr(torch, DTYPES[info["dtype"]][0]), info["shape"], info["data_offsets"][0]
        n = math.prod(shape)
        t = torch.frombuffer(buf, dtype=dtype, count=n, offset=start + begin) if n else torch.empty(0, dtype=dtype)
        tensors[name] = t.view(shape)
    return tensors, digest
