"""The on-disk registry: adapters/<name>/v<N>/ with PEFT's files and adapterhub's card.json.

Writes are atomic and locked: a version is written into a temp folder beside its target, fsynced,
and appears with one os.replace; card.json is written last inside it. One lock per name
(fcntl-based, so a killed writer releases it). Only safetensors are read, and their sha256 is
checked against the card before any tensor is built.
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

import torch
from filelock import FileLock, Timeout

from . import __version__
from .errors import AdapterNotFoundError, RegistryError
from .safetensors_io import read_safetensors, save_safetensors

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^v([1-9][0-9]{0,5})$")
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
CARD = "card.json"
PICKLES = ("adapter_model.bin", "pytorch_model.bin", "adapter_model.pt", "adapter_model.pth")
LOCK_TIMEOUT_S = 120


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    _write_file(tmp, text.encode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Registry:
    def __init__(self, root: str | os.PathLike = "adapters"):
        self.root = Path(root)

    # ------------------------------------------------------------ reading
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if NAME_RE.fullmatch(p.name) and p.is_dir() and not p.is_symlink() and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        """Complete versions (card.json present), oldest first."""
        folder = self.root / check_name(name)
        if not folder.is_dir():
            return []
        found = []
        for p in folder.iterdir():
            m = VERSION_RE.fullmatch(p.name)
            if m and (p / CARD).is_file():
                found.append((int(m.group(1)), p.name))
        return [v for _, v in sorted(found)]

    def current(self, name: str) -> str | None:
        versions = self.versions(name)
        f = self.root / name / "current"
        if f.is_file():
            v = f.read_text().strip()
            if v in versions:
                return v
            log.warning("%s names %r, which is not a complete version; using the newest", f, v)
        return versions[-1] if versions else None

    def resolve(self, ref: str) -> Path:
        """A reference -> its version folder, checked to lie inside the registry."""
        name, version = parse_ref(ref)
        version = version or self.current(name)
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
            card = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RegistryError(f"{path} is not valid JSON ({e}); remove the version with: adapterhub rm {ref}") from e
        if not isinstance(card, dict):
            raise RegistryError(f"{path} must hold a JSON object")
        return card

    def list(self) -> list[dict]:
        """One card per name (its current version), with 'versions' and 'current' added."""
        out = []
        for name in self.names():
            try:
                card = self.card(name)
            except RegistryError as e:
                card = {"name": name, "error": str(e)}
            card["versions"] = self.versions(name)
            card["current"] = self.current(name)
            out.append(card)
        return out

    def load(self, ref: str) -> tuple[dict, dict[str, torch.Tensor], dict, Path]:
        """-> (adapter_config, tensors, card, folder). Checks sha256 before building tensors."""
        folder = self.resolve(ref)
        card = self.card(ref)
        weights = folder / WEIGHTS
        for p in (weights, folder / CONFIG):
            if p.is_symlink():
                raise RegistryError(f"{p} is a symbolic link; refusing to read it")
        if not weights.is_file():
            pickles = [p for p in PICKLES if (folder / p).exists()]
            extra = f" ({', '.join(pickles)} present but never loaded: pickles can run code)" if pickles else ""
            raise RegistryError(f"{weights} is missing{extra}; republish the adapter as safetensors")
        try:
            config = json.loads((folder / CONFIG).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RegistryError(f"{folder / CONFIG} is missing or not valid JSON ({e})") from e
        tensors, digest = read_safetensors(weights, expected_sha256=card.get("weights_sha256"))
        return config, tensors, card, folder

    # ------------------------------------------------------------ writing
    def _lock(self, name: str) -> FileLock:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{name}.lock"), timeout=LOCK_TIMEOUT_S)

    def publish(self, name: str, tensors: dict[str, torch.Tensor], adapter_config: dict, card: dict,
                promote: bool | None = None, metric: str | None = None) -> str:
        """Write a new version atomically; returns 'vN'.

        promote=None: becomes current when its card's metrics.valid[metric] is at least the current
        version's (or there is no current); True: always; False: never.
        """
        check_name(name)
        folder = self.root / name
        try:
            with self._lock(name):
                folder.mkdir(parents=True, exist_ok=True)
                self._clean_stale(folder)
                numbers = [int(m.group(1)) for p in folder.iterdir() if (m := VERSION_RE.fullmatch(p.name))]
                version = f"v{max(numbers, default=0) + 1}"
                tmp = folder / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
                tmp.mkdir()
                try:
                    digest = save_safetensors(tensors, tmp / WEIGHTS)
                    _write_file(tmp / CONFIG, json.dumps(adapter_config, indent=2).encode())
                    full = {**card, "name": name, "version": version, "weights_sha256": digest,
                            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                            "adapterhub_version": __version__}
                    _write_file(tmp / CARD, json.dumps(full, indent=2, sort_keys=True).encode())  # card last
                    _fsync_dir(tmp)
                    os.replace(tmp, folder / version)
                    _fsync_dir(folder)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                if self._should_promote(name, full, promote, metric):
                    _atomic_write_text(folder / "current", version + "\n")
                return version
        except Timeout:
            raise RegistryError(f"could not lock '{name}' in {self.root}/ within {LOCK_TIMEOUT_S} s: "
                                "another process is publishing it") from None

    def _clean_stale(self, folder: Path) -> None:
        # Under the lock, any temp folder belongs to a writer that died mid-publish.
        for p in folder.iterdir():
            if p.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True)

    def _should_promote(self, name: str, new_card: dict, promote: bool | None, metric: str | None) -> bool:
        if promote is not None:
            return promote
        cur = self.current(name) if (self.root / name / "current").is_file() else None
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
            _atomic_write_text(self.root / name / "current", version + "\n")
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
            elif not cur_file.is_file() or cur_file.read_text().strip() not in left:
                _atomic_write_text(cur_file, left[-1] + "\n")
        return targets


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
