"""The on-disk registry: adapters/<name>/v<N>/ with PEFT's files and adapterhub's card.json.

Writes are atomic and locked: a version is written into a temp folder beside its target, fsynced,
and appears with one os.replace; card.json is written last inside it. One lock per name
(flock-based, so a killed writer releases it); the next writer removes what a killed one left.
Only safetensors are read, and their sha256 is checked against the card before any tensor is
built. Nothing is read or written through a symbolic link, so nothing outside the registry is.

Storage dtype: a registry whose root holds registry.json with {"weights_dtype": "bfloat16"} (the
shipped adapters/ does) stores every published version's floating tensors in bf16, half the bytes
of fp32, and its cards say so ("weights_dtype"); the hub casts A and B to the base's compute dtype on
load either way. Measured on SmolLM2 for the shipped adapters: P(yes) within 0.00012 of their fp32
copies where the base computes in fp32, identical where it computes in bf16 (adapters/README.md).
Without that file (or with "float32") a version stores the tensors as given, bit for bit.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from . import __version__
from .errors import AdapterNotFoundError, RegistryError
from .files import atomic_write, fsync_dir, write_file
from .safetensors_io import read_header, read_safetensors, save_safetensors

if TYPE_CHECKING:
    import torch  # only for annotations: listing and resolving never import torch

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^v([1-9][0-9]{0,5})$")
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
CARD = "card.json"
PICKLES = ("adapter_model.bin", "pytorch_model.bin", "adapter_model.pt", "adapter_model.pth")
LOCK_TIMEOUT_S = 120
MAX_JSON_BYTES = 16 << 20  # a card or adapter_config.json; real ones are KBs
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
EXTRA_FILE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}\.json$")  # extra version files: plain JSON only
SETTINGS = "registry.json"  # the registry's own settings, beside the adapter folders
WEIGHTS_DTYPES = ("float32", "bfloat16")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise RegistryError(f"invalid adapter name {name!r}: use 1-64 characters of a-z, 0-9, '_' and '-', "
                            "starting with a letter or digit (e.g. 'news', 'tv-shows')")
    return name


def parse_ref(ref: str) -> tuple[str, str | None]:
    """'news' -> ('news', None); 'news@v2' -> ('news', 'v2'). Refused before touching the disk."""
    if not isinstance(ref, str):
        raise RegistryError(f"invalid adapter reference {ref!r}: expected 'name' or 'name@vN'")
    name, sep, version = ref.partition("@")
    check_name(name)
    if sep and not VERSION_RE.fullmatch(version):
        raise RegistryError(f"invalid version {version!r} in {ref!r}: expected 'vN', e.g. '{name}@v1'")
    return name, (version if sep else None)


def _read_json(path: Path) -> dict:
    """A JSON object from a regular file inside a version folder; RegistryError otherwise."""
    if path.is_symlink():
        raise RegistryError(f"{path} is a symbolic link; refusing to read it (republish the adapter)")
    try:
        size = path.stat().st_size
        data = path.read_bytes() if size <= MAX_JSON_BYTES else None
    except OSError as e:
        raise RegistryError(f"{path} is missing or unreadable ({e})") from e
    if data is None:
        raise RegistryError(f"{path} is {size} bytes, larger than any card or config should be; refusing")
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RegistryError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise RegistryError(f"{path} must hold a JSON object, not {type(value).__name__}")
    return value


def _check_ranks(config: dict, header: dict, path: Path) -> None:
    """adapter_config.json's r against the LoRA shapes in the weights' header (no data read yet)."""
    r = config.get("r")
    if type(r) is not int or r < 1:
        raise RegistryError(f"{path.parent / CONFIG}: r={r!r}; need a positive integer rank")
    if config.get("rank_pattern"):
        return  # per-module ranks: the hub refuses these with its own message
    for key, info in header.items():
        shape = info["shape"]  # A is (r, d_in), B is (d_out, r)
        if key.endswith(".lora_A.weight"):
            ok = len(shape) == 2 and shape[0] == r
        elif key.endswith(".lora_B.weight"):
            ok = len(shape) == 2 and shape[1] == r
        else:
            continue
        if not ok:
            raise RegistryError(f"{path.parent / CONFIG} says r={r}, but {path.name} holds {key!r} with shape "
                                f"{shape}: the config and the weights do not belong together")


class Registry:
    def __init__(self, root: str | os.PathLike = "adapters", weights_dtype: str | None = None):
        """weights_dtype: what publish stores floating tensors as ('float32', 'bfloat16'); None: what
        <root>/registry.json says, else the tensors as given."""
        self.root = Path(root)
        if weights_dtype is not None and weights_dtype not in WEIGHTS_DTYPES:
            raise RegistryError(f"weights_dtype {weights_dtype!r}: choose one of {', '.join(WEIGHTS_DTYPES)} (or None)")
        self._weights_dtype = weights_dtype

    def weights_dtype(self) -> str | None:
        """The dtype publish stores floating tensors in (module docstring); None: as given."""
        if self._weights_dtype is not None:
            return self._weights_dtype
        path = self.root / SETTINGS
        if not path.exists() and not path.is_symlink():
            return None
        value = _read_json(path).get("weights_dtype")
        if value is not None and value not in WEIGHTS_DTYPES:
            raise RegistryError(f"{path}: weights_dtype {value!r} is not one of {', '.join(WEIGHTS_DTYPES)}; "
                                f'fix it, e.g. {{"weights_dtype": "bfloat16"}}, or remove the key')
        return value

    # ------------------------------------------------------------ reading
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if NAME_RE.fullmatch(p.name) and p.is_dir() and not p.is_symlink() and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        """Complete versions (card.json present), oldest first."""
        folder = self.root / check_name(name)
        if folder.is_symlink():
            raise RegistryError(f"{folder} is a symbolic link; refusing to read or write through it")
        if not folder.is_dir():
            return []
        found = []
        for p in folder.iterdir():
            m = VERSION_RE.fullmatch(p.name)
            if m and not p.is_symlink() and (p / CARD).is_file():
                found.append((int(m.group(1)), p.name))
        return [v for _, v in sorted(found)]

    def current(self, name: str) -> str | None:
        versions = self.versions(name)
        v = self._current_file(name)
        if v in versions:
            return v
        if v is not None:
            log.warning("%s names %r, which is not a complete version; using the newest", self.root / name / "current", v)
        return versions[-1] if versions else None

    def _current_file(self, name: str) -> str | None:
        """What <name>/current says, read without following a link (a link is reported, never read)."""
        f = self.root / name / "current"
        if f.is_symlink():
            return "<a symbolic link, not followed>"
        if not f.is_file():
            return None
        with open(f, "rb") as fh:
            return fh.read(64).decode(errors="replace").strip()

    def resolve(self, ref: str) -> Path:
        """A reference -> its version folder, checked to lie inside the registry."""
        name, version = parse_ref(ref)
        version = version or self.current(name)
        if version is not None and (self.root / name / version).is_symlink():
            raise RegistryError(f"{self.root / name / version} is a symbolic link; refusing to read it "
                                f"(remove the link; versions are only written by publish)")
        if version is None or version not in self.versions(name):
            avail = self.names()
            hint = ""
            if name in avail:
                hint = f" Versions of '{name}': {', '.join(self.versions(name))}."
            raise AdapterNotFoundError(ref, avail, str(self.root), hint=hint)
        folder = self.root / name / version
        real_root = self.root.resolve()
        if folder.is_symlink() or real_root not in folder.resolve().parents:
            raise RegistryError(f"{folder} is a link or lies outside the registry {self.root}/; refusing to read it")
        return folder

    def card(self, ref: str) -> dict:
        path = self.resolve(ref) / CARD
        try:
            return _read_json(path)
        except RegistryError as e:
            raise RegistryError(f"{e}; remove the version with: adapterhub rm {ref}") from e

    def list(self) -> list[dict]:
        """One card per name (its current version), with 'versions' and 'current' added."""
        out = []
        for name in self.names():
            versions, current = self.versions(name), self.current(name)
            try:
                card = self.card(f"{name}@{current}")
            except RegistryError as e:
                card = {"name": name, "error": str(e)}
            out.append({**card, "versions": versions, "current": current})
        return out

    def load(self, ref: str) -> tuple[dict, dict[str, torch.Tensor], dict, Path]:
        """-> (adapter_config, tensors, card, folder). Checks shapes and sha256 before building tensors."""
        folder = self.resolve(ref)
        card = self.card(ref)
        weights = folder / WEIGHTS
        if weights.is_symlink():
            raise RegistryError(f"{weights} is a symbolic link; refusing to read it")
        if not weights.is_file():
            pickles = [p for p in PICKLES if (folder / p).exists()]
            extra = f" ({', '.join(pickles)} present but never loaded: pickles can run code)" if pickles else ""
            raise RegistryError(f"{weights} is missing{extra}; republish the adapter as safetensors")
        sha = card.get("weights_sha256")
        if not isinstance(sha, str) or not SHA256_RE.fullmatch(sha):
            raise RegistryError(f"{folder / CARD}: weights_sha256 is {sha!r}, not a sha256; the weights cannot be "
                                f"checked, so they are not loaded (republish the adapter)")
        config = _read_json(folder / CONFIG)
        _check_ranks(config, read_header(weights)[0], weights)
        tensors, _ = read_safetensors(weights, expected_sha256=sha)
        return config, tensors, card, folder

    def read_file(self, ref: str, fname: str, missing_ok: bool = False) -> bytes | None:
        """An extra file of a version (see publish(files=...)), checked against the card's sha256;
        None when the version has no such file (or, with missing_ok, when its file is absent)."""
        folder, card = self.resolve(ref), self.card(ref)
        want = (card.get("files") or {}).get(fname)
        if want is None:
            return None
        path = folder / fname
        if missing_ok and not path.exists() and not path.is_symlink():
            return None
        if path.is_symlink() or not path.is_file():
            raise RegistryError(f"{path} is missing or a symbolic link; republish the adapter")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != want:
            raise RegistryError(f"{path}: sha256 does not match the card's: changed or corrupted after publishing")
        return data

    # ------------------------------------------------------------ writing
    def _lock(self, name: str) -> FileLock:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{name}.lock"), timeout=LOCK_TIMEOUT_S)

    def publish(self, name: str, tensors: dict[str, torch.Tensor], adapter_config: dict, card: dict,
                promote: bool | None = None, metric: str | None = None, files: dict[str, bytes] | None = None) -> str:
        """Write a new version atomically; returns 'vN'.

        files: extra plain files for the version folder (e.g. facts.json), each covered by a sha256
        in the card's "files" entry; read them back with read_file(ref, name).

        promote=None: becomes current when its card's metrics.valid[metric] is at least the current
        version's (or there is no current); True: always; False: never.
        """
        check_name(name)
        folder = self.root / name
        dtype = self.weights_dtype()
        if dtype is not None:
            tensors = _stored_as(tensors, dtype)
            card = {**card, "weights_dtype": dtype}
        try:
            with self._lock(name):
                if folder.is_symlink():
                    raise RegistryError(f"{folder} is a symbolic link; refusing to write through it")
                if not folder.is_dir():
                    folder.mkdir(parents=True)
                    fsync_dir(self.root)
                self._clean_stale(folder)
                numbers = [int(m.group(1)) for p in folder.iterdir() if (m := VERSION_RE.fullmatch(p.name))]
                version = f"v{max(numbers, default=0) + 1}"
                tmp = folder / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
                tmp.mkdir()
                try:
                    digest = save_safetensors(tensors, tmp / WEIGHTS)
                    write_file(tmp / CONFIG, json.dumps(adapter_config, indent=2).encode())
                    extra = {}
                    for fname, data in (files or {}).items():
                        if fname in (WEIGHTS, CONFIG, CARD) or not EXTRA_FILE_RE.fullmatch(fname):
                            raise RegistryError(f"extra file name {fname!r} is not allowed (plain names like facts.json)")
                        write_file(tmp / fname, data)
                        extra[fname] = hashlib.sha256(data).hexdigest()
                    full = {**card, "name": name, "version": version, "weights_sha256": digest,
                            **({"files": extra} if extra else {}),
                            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                            "adapterhub_version": __version__}
                    write_file(tmp / CARD, json.dumps(full, indent=2, sort_keys=True).encode())  # card last
                    fsync_dir(tmp)
                    os.replace(tmp, folder / version)
                    fsync_dir(folder)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                if self._should_promote(name, full, promote, metric):
                    atomic_write(folder / "current", version + "\n")
                return version
        except Timeout:
            raise RegistryError(f"could not lock '{name}' in {self.root}/ within {LOCK_TIMEOUT_S} s: "
                                "another process is publishing it") from None

    def _clean_stale(self, folder: Path) -> None:
        # Under the lock, any temp folder or file belongs to a writer that died mid-publish.
        for p in folder.iterdir():
            if p.name.startswith((".tmp-", ".trash-")):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    def _should_promote(self, name: str, new_card: dict, promote: bool | None, metric: str | None) -> bool:
        if promote is not None:
            return promote
        cur = self.current(name) if self._current_file(name) is not None else None
        if cur is None or cur == new_card["version"]:
            return True
        metric = metric or new_card.get("primary_metric")
        old = _valid_metric(self.card(f"{name}@{cur}"), metric)
        new = _valid_metric(new_card, metric)
        if old is None:
            return True
        if new is None or new < old:
            log.warning("%s@%s not promoted: valid %s %s < current %s's %s (promote with: adapterhub promote %s@%s)",
                        name, new_card["version"], metric, new, cur, old, name, new_card["version"])
            return False
        return True

    def promote(self, ref: str) -> str:
        name, _ = parse_ref(ref)
        version = self.resolve(ref).name
        with self._lock(name):
            atomic_write(self.root / name / "current", version + "\n")
        return version

    def remove(self, ref: str) -> list[str]:
        """Remove one version ('news@v2') or, given a bare name, every version of it."""
        name, version = parse_ref(ref)
        if version is not None:
            self.resolve(ref)
        elif not self.versions(name):
            raise AdapterNotFoundError(ref, self.names(), str(self.root))
        with self._lock(name):
            targets = [version] if version else self.versions(name)
            folder = self.root / name
            for v in targets:
                trash = folder / f".trash-{uuid.uuid4().hex[:8]}"
                os.replace(folder / v, trash)  # atomic: readers never see a half-deleted version
                shutil.rmtree(trash, ignore_errors=True)
            left = self.versions(name)
            cur_file = folder / "current"
            if not left:
                shutil.rmtree(folder, ignore_errors=True)
            elif self._current_file(name) not in left:
                atomic_write(cur_file, left[-1] + "\n")
        return targets


def _stored_as(tensors: dict, dtype: str) -> dict:
    """Floating tensors cast to the registry's storage dtype; others (none in a LoRA file) as they are."""
    import torch
    want = getattr(torch, dtype)
    return {k: t.to(want) if t.is_floating_point() and t.dtype != want else t for k, t in tensors.items()}


def _valid_metric(card: dict, metric: str | None):
    if not metric:
        return None
    value = ((card.get("metrics") or {}).get("valid") or {}).get("adapter", {})
    value = value.get(metric) if isinstance(value, dict) else None
    return value if isinstance(value, (int, float)) else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
