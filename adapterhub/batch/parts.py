"""The output folder of a batch job: parts committed whole, so a killed job resumes where it stopped.

    OUT/_manifest.json        the job: input file (path, size, mtime), options, base, pinned versions
    OUT/part-000000.jsonl     the ranked rows of input records [0, part_rows), in file order
    OUT/part-000001.jsonl     ... (or .parquet with out_format="parquet")
    OUT/_bad_rows.jsonl       rows set aside with skip_bad (line, error, row), once the job is done
    OUT/_SUCCESS              written last: the job's summary

Each part is written under a temporary name, flushed and renamed into place (adapterhub.files), so
it is there whole or not at all; a part that is there is never scored again. Its bad rows are
committed just before it (`.bad-000000.jsonl`), so they too are written exactly once. Names that
start with '_' or '.' are skipped by Parquet and Arrow dataset readers, so `pandas.read_parquet(OUT)`
reads the parts alone. One job at a time per folder (a lock file).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import ConfigError
from ..files import atomic_write, fsync_dir

MANIFEST, SUCCESS, BAD_ROWS, LOCK = "_manifest.json", "_SUCCESS", "_bad_rows.jsonl", ".lock"
PART_RE = re.compile(r"part-(\d{6})\.(jsonl|parquet)")
OURS = re.compile(r"(part-\d{6}\.(jsonl|parquet)|\.bad-\d{6}\.jsonl|_manifest\.json|_SUCCESS|_bad_rows\.jsonl|"
                  r"\.lock|\.tmp-.*)")
OUT_FORMATS = ("jsonl", "parquet")


def _json_line(obj) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


class Output:
    def __init__(self, path, out_format: str = "jsonl"):
        if out_format not in OUT_FORMATS:
            raise ConfigError(f"out_format {out_format!r} is not one of {', '.join(OUT_FORMATS)}")
        if out_format == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise ConfigError("out_format='parquet' needs pyarrow: pip install 'adapterhub[parquet]' (or "
                                  "pyarrow), or write JSONL parts") from None
        self.path, self.out_format = Path(path), out_format
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path} is a file; OUT is a folder of parts (give a new folder name, e.g. "
                              f"{self.path.with_suffix('')}-scored/)")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path / LOCK))
        self.manifest: dict = {}

    def __enter__(self):
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise ConfigError(f"another score-file job is writing to {self.path} (it holds {self.path / LOCK}); "
                              "wait for it, or give another OUT") from None
        for tmp in self.path.glob(".tmp-*"):  # what a killed writer left
            tmp.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc):
        self._lock.release()

    # ------------------------------------------------------------ the job
    def start(self, job: dict, overwrite: bool = False) -> dict:
        """Begin, or resume the same job. -> the manifest ({"job": ..., "pins": {...}}).
        A folder holding another job's parts is refused, unless overwrite (which removes them)."""
        foreign = [p.name for p in self.path.iterdir() if not OURS.fullmatch(p.name)]
        if foreign:
            raise ConfigError(f"{self.path} holds files that are not a score-file job's "
                              f"({', '.join(sorted(foreign)[:5])}); give a new or empty folder as OUT")
        old = self._read(MANIFEST)
        if old is not None and old.get("job") != job:
            if not overwrite:
                diff = [f"{k}: {old.get('job', {}).get(k)!r} -> {job.get(k)!r}" for k in job
                        if old.get("job", {}).get(k) != job.get(k)]
                raise ConfigError(f"{self.path} holds the parts of another job ({'; '.join(diff)}). Resuming needs "
                                  "the same input file and options; give another OUT, or pass --overwrite "
                                  "(overwrite=True) to start again")
            old = None
        if old is None:
            for p in self.path.iterdir():
                if p.name != LOCK:
                    p.unlink()
            old = {"job": job, "pins": {}}
            atomic_write(self.path / MANIFEST, json.dumps(old, indent=1))
        self.manifest = old
        return old

    def done(self) -> set[int]:
        """The parts already committed."""
        return {int(m.group(1)) for m in map(PART_RE.fullmatch, os.listdir(self.path)) if m}

    def complete(self) -> dict | None:
        """The summary of a finished job, or None."""
        return self._read(SUCCESS)

    def _read(self, name: str) -> dict | None:
        try:
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self.path / name} is unreadable ({e}); remove the folder to start again") from e

    # ------------------------------------------------------------ parts
    def commit(self, index: int, records: list[dict], bad: list[dict], pins: dict) -> None:
        """Write one part whole: new pins first, then its bad rows, then the part itself."""
        known = self.manifest["pins"]
        clash = {ref: (known[ref], key) for ref, key in pins.items() if ref in known and known[ref] != key}
        if clash:
            raise ConfigError(f"adapter versions changed during the job: {clash} (ref: (pinned, used)); the job "
                              "scores each reference with the version it first resolved to")
        if set(pins) - set(known):
            known.update(pins)
            atomic_write(self.path / MANIFEST, json.dumps(self.manifest, indent=1))
        bad_path = self.path / f".bad-{index:06d}.jsonl"
        if bad:
            atomic_write(bad_path, "".join(map(_json_line, bad)))
        else:  # one an earlier, killed try left (its rows may be good now: an adapter published since)
            bad_path.unlink(missing_ok=True)
        name = f"part-{index:06d}.{self.out_format}"
        atomic_write(self.path / name, _jsonl(records) if self.out_format == "jsonl" else _parquet(records))

    def finish(self, summary: dict) -> dict:
        """All parts are in: gather the bad rows into one file, then mark the job done."""
        bad = sorted(self.path.glob(".bad-*.jsonl"))
        if bad:  # (none left over: a kill after this write redoes it from the same files)
            atomic_write(self.path / BAD_ROWS, b"".join(p.read_bytes() for p in bad))
        n_bad = 0
        if (self.path / BAD_ROWS).exists():
            with open(self.path / BAD_ROWS, "rb") as fh:
                n_bad = sum(1 for _ in fh)
        summary.update(scored=summary["rows"] - n_bad, bad=n_bad,
                       bad_file=str(self.path / BAD_ROWS) if n_bad else None)
        atomic_write(self.path / SUCCESS, json.dumps(summary, indent=1))
        for p in bad:
            p.unlink()
        fsync_dir(self.path)
        return summary

    def tidy(self) -> None:
        """A finished job's leftovers (a kill between _SUCCESS and the removal of the per-part bad rows)."""
        for p in self.path.glob(".bad-*.jsonl"):
            p.unlink()


def _jsonl(records: list[dict]) -> bytes:
    return "".join(map(_json_line, records)).encode("utf-8")


def _text(item) -> str:
    """An item as Parquet text: a dict item by its id (else its JSON)."""
    if isinstance(item, dict):
        return str(item["id"]) if "id" in item else json.dumps(item, ensure_ascii=False, sort_keys=True)
    return str(item)


def _parquet(records: list[dict]) -> bytes:
    """Users and items as text: a Parquet column has one type, a JSONL file may mix ids and titles."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [{"line": r["line"], "user": str(r["user"]), "adapter": r["adapter"],
             "ranked": [{"item": _text(c["item"]), "score": c["score"], "raw": c["raw"]} for c in r["ranked"]]}
            for r in records]
    schema = pa.schema([("line", pa.int64()), ("user", pa.string()), ("adapter", pa.string()),
                        ("ranked", pa.list_(pa.struct([("item", pa.string()), ("score", pa.float64()),
                                                       ("raw", pa.float64())])))])
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
    return sink.getvalue().to_pybytes()
