"""Input rows of a batch job, streamed from JSONL, CSV or Parquet: one Row per record, in file order.

A Row is what the file says, parsed but not yet checked (adapterhub.batch.rows checks it). A
record that cannot even be parsed (broken JSON, a CSV line with too many cells, bytes that are not
UTF-8) is a Row whose `error` says so; the job then stops or sets it aside (--skip-bad).

`scan` walks a file once (no JSON parsing for JSONL) and cuts it into parts of `part_rows` records,
each with where it starts (a byte offset, or a row number in a Parquet file), so that a part can be
read on its own (`PartReader`: the Ray engine's actors do) and the progress bar knows the total.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
           ".pq": "parquet"}
PARQUET_BATCH_ROWS = 1024  # rows decoded at a time: memory stays flat however large a row group is


@dataclass
class Row:
    index: int                 # 0-based record number in the file (bad records count)
    line: int                  # 1-based line where the record starts (Parquet: 1-based row number)
    data: dict | None          # the record's fields, as parsed
    error: str | None = None   # why the record could not be parsed
    text: str | None = None    # the raw text of an unparsable record, for the side file


@dataclass
class Part:
    """Records [first, first + rows) of the file, starting at `offset` (a byte offset; for Parquet
    the row number) on line `line`."""
    index: int
    first: int
    rows: int
    offset: int
    line: int


@dataclass
class Scan:
    path: str
    fmt: str
    rows: int
    parts: list[Part]
    header: list[str] | None = None  # CSV column names


def detect_format(path, fmt: str | None = None) -> str:
    if fmt is not None:
        if fmt not in set(FORMATS.values()):
            raise DataError(f"input format {fmt!r} is not one of jsonl, csv, parquet", file=str(path))
        return fmt
    found = FORMATS.get(Path(path).suffix.lower())
    if found is None:
        raise DataError(f"cannot tell the format from the extension {Path(path).suffix!r}: name the file "
                        ".jsonl, .csv or .parquet, or pass --in-format jsonl|csv|parquet", file=str(path))
    return found


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError("reading Parquet needs pyarrow: pip install 'adapterhub[parquet]' (or pyarrow), or give "
                        "JSONL or CSV input") from e
    return pq


# ------------------------------------------------------------------ scan
def scan(path, fmt: str, part_rows: int) -> Scan:
    """Count the file's records and cut them into parts of part_rows records."""
    path = str(path)
    parts: list[Part] = []
    n = 0

    def at(offset: int, line: int) -> None:
        nonlocal n
        if n % part_rows == 0:
            parts.append(Part(len(parts), n, 0, offset, line))
        parts[-1].rows += 1
        n += 1

    if fmt == "parquet":
        meta = _pyarrow_parquet().ParquetFile(path).metadata
        for start in range(0, meta.num_rows, part_rows):
            parts.append(Part(len(parts), start, min(part_rows, meta.num_rows - start), start, start + 1))
        return Scan(path, fmt, meta.num_rows, parts)
    with open(path, "rb") as fh:
        if fmt == "jsonl":
            offset = 0
            for line_no, raw in enumerate(fh, 1):
                if _content(raw):
                    at(offset, line_no)
                offset += len(raw)
            return Scan(path, fmt, n, parts)
        lines = _Lines(fh, 0, 1)
        header = _csv_header(lines, path)
        reader = csv.reader(lines)
        while True:
            offset, line = lines.offset, lines.line
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error:
                cells = ["?"]  # a record all the same: read_part reports it
            if any(c.strip() for c in cells):
                at(offset, line)
    return Scan(path, fmt, n, parts, header)


# ------------------------------------------------------------------ read
def read_rows(scan: Scan, parts: list[Part] | None = None):
    """Yield the Rows of `parts` (default: every part), in order."""
    reader = PartReader(scan)
    for part in scan.parts if parts is None else parts:
        yield from reader.rows(part)


def read_part(scan: Scan, part: Part):
    """Yield the part's Rows, reading the file from the part's start."""
    if scan.fmt == "parquet":
        yield from PartReader(scan).rows(part)
        return
    with open(scan.path, "rb") as fh:
        fh.seek(part.offset)
        if scan.fmt == "jsonl":
            yield from _jsonl_rows(fh, part)
        else:
            yield from _csv_rows(fh, part, scan.header, scan.path)


def _jsonl_rows(fh, part: Part):
    index, line = part.first, part.line
    while index < part.first + part.rows:
        raw = fh.readline()
        if not raw:
            raise DataError(f"ended before row {index + 1} (was it changed while the job ran?)", file=fh.name)
        this, line = line, line + 1
        stripped = _content(raw)
        if not stripped:
            continue
        try:
            text = stripped.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Row(index, this, None, f"not UTF-8 text ({e.reason} at byte {e.start})",
                      stripped.decode("utf-8", "replace"))
            index += 1
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            yield Row(index, this, None, f"not valid JSON ({e.msg} at column {e.colno})", text)
        else:
            if isinstance(data, dict):
                yield Row(index, this, data)
            else:
                yield Row(index, this, None, f"a JSON {type(data).__name__}, not an object with fields user, "
                          "history, candidates", text)
        index += 1


def _content(raw: bytes) -> bytes:
    """A JSONL line without its whitespace and a leading UTF-8 byte-order mark; b"" for a blank line."""
    return raw.strip().removeprefix(b"\xef\xbb\xbf").strip()


class _Lines:
    """Text lines of a binary file from its current position, counting bytes and lines, so that a
    CSV record's start is known (csv.reader asks for one line at a time and reads none ahead)."""

    def __init__(self, fh, offset: int, line: int):
        self.fh, self.offset, self.line = fh, offset, line
        self.bad: str | None = None  # a line that was not UTF-8, in the record being read

    def __iter__(self):
        return self

    def __next__(self) -> str:
        raw = self.fh.readline()
        if not raw:
            raise StopIteration
        self.offset += len(raw)
        self.line += 1
        try:
            return raw.decode("utf-8-sig" if self.offset == len(raw) else "utf-8")
        except UnicodeDecodeError as e:
            self.bad = f"not UTF-8 text ({e.reason} at byte {e.start} of line {self.line - 1})"
            return raw.decode("utf-8", "replace")


def _csv_header(lines: _Lines, path: str) -> list[str]:
    try:
        header = next(csv.reader(lines))
    except (StopIteration, csv.Error) as e:
        raise DataError(f"no CSV header row ({e or 'empty file'}): the first line names the columns, e.g. "
                        "user,history,candidates", file=path, line=1) from None
    return [h.strip() for h in header]


def _csv_rows(fh, part: Part, header: list[str], path: str):
    lines = _Lines(fh, part.offset, part.line)
    reader = csv.reader(lines)
    index = part.first
    while index < part.first + part.rows:
        start, lines.bad = lines.line, None
        try:
            cells = next(reader)
        except StopIteration:
            raise DataError(f"ended before row {index + 1} (was it changed while the job ran?)", file=path) from None
        except csv.Error as e:
            yield Row(index, start, None, f"not a valid CSV record ({e})")
            index += 1
            continue
        if not any(c.strip() for c in cells):
            continue
        text = _csv_text(cells)
        if lines.bad:
            yield Row(index, start, None, lines.bad, text)
        elif len(cells) != len(header):
            yield Row(index, start, None, f"{len(cells)} cells under a header of {len(header)} columns "
                      f"({', '.join(header)}); quote cells that hold commas", text)
        else:
            yield Row(index, start, dict(zip(header, cells)))
        index += 1


def _csv_text(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(cells)
    return out.getvalue().rstrip("\r\n")


class PartReader:
    """Reads the parts of one scanned file. A Parquet file stays open and is read forward, so parts
    asked for in order (the local engine; mostly, a Ray actor) decode each batch once: a part read on
    its own decodes its row group from the start, which for one big row group is quadratic in the
    file. JSONL and CSV parts are found by seeking (read_part)."""

    def __init__(self, scan: Scan):
        self.scan = scan
        self._batches = None  # Parquet record batches from the current row group on
        self._batch = None    # the batch being read; it starts at row self._at
        self._at = 0

    def rows(self, part: Part):
        """Yield the part's Rows."""
        if self.scan.fmt != "parquet":
            yield from read_part(self.scan, part)
            return
        if self._batches is None or part.first < self._at:
            self._open(part.first)
        index, end = part.first, part.first + part.rows
        while index < end:
            if self._batch is None or index >= self._at + self._batch.num_rows:
                if self._batch is not None:
                    self._at += self._batch.num_rows
                self._batch = next(self._batches, None)
                if self._batch is None:
                    self._batches = None
                    raise DataError(f"ended before row {index + 1} (was it changed while the job ran?)",
                                    file=self.scan.path)
                continue  # (skipped batches are never turned into Python objects)
            take = min(end, self._at + self._batch.num_rows) - index
            for data in self._batch.slice(index - self._at, take).to_pylist():
                yield Row(index, index + 1, data)
                index += 1

    def _open(self, first: int) -> None:
        """Batches from the row group holding row `first` on."""
        pf = _pyarrow_parquet().ParquetFile(self.scan.path)
        meta, seen, start = pf.metadata, 0, None
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if start is None and seen + n > first:
                start, self._at = g, seen
            seen += n
        groups = [] if start is None else list(range(start, meta.num_row_groups))
        self._batches = iter(pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=groups)) if groups else iter(())
        self._batch = None
