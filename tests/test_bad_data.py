"""Bad interaction data: each error names the file, line and field, and nothing is published (from
the API or the CLI); a split with one label is refused. Every registry here lives in tmp_path."""
from __future__ import annotations

from pathlib import Path

import pytest

from adapterhub import datasets
from adapterhub.cli import main as cli
from adapterhub.config import TrainConfig
from adapterhub.errors import DataError
from adapterhub.registry import Registry
from conftest import toy_data
from test_datasets import write_generic


# ------------------------------------------------------------------ bad data
ITEMS = [{"id": f"i{k}", "text": f"Thing {k}", "category": "c" + str(k % 2)} for k in range(6)]
ROWS = [{"user": "u1", "history": ["i0", "i1"], "candidate": "i2", "label": 1, "split": "train"},
        {"user": "u1", "history": ["i0"], "candidate": "i3", "label": 0, "split": "train"},
        {"user": "u2", "history": ["i4"], "candidate": "i5", "label": 1, "split": "valid"},
        {"user": "u2", "history": ["i4"], "candidate": "i1", "label": 0, "split": "valid"}]


def write_data(folder: Path, fmt: str, rows=ROWS, items=ITEMS) -> Path:
    return write_generic(folder, fmt, examples=rows, items=items)


def _rows(line: int, **change):
    """ROWS with data row `line` (1-based) changed; a value None drops the field."""
    rows = [dict(r) for r in ROWS]
    rows[line - 1] = {k: v for k, v in {**rows[line - 1], **change}.items() if v is not None}
    return rows


def _set_bytes(name: str, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


# case -> (format, how to spoil the folder, file, line, field, what the error says)
BAD_DATA = {
    "jsonl empty examples": ("jsonl", _set_bytes("examples.jsonl", b"\n\n"), "examples.jsonl", None, None, "empty"),
    "jsonl empty items": ("jsonl", _set_bytes("items.jsonl", b""), "items.jsonl", None, None, "empty"),
    "jsonl missing field": ("jsonl", _rows(2, candidate=None), "examples.jsonl", 2, "candidate", "missing"),
    "jsonl history not a list": ("jsonl", _rows(2, history="i0"), "examples.jsonl", 2, "history", "list"),
    "jsonl label a string": ("jsonl", _rows(1, label="1"), "examples.jsonl", 1, "label", "0 or 1"),
    "jsonl label a bool": ("jsonl", _rows(1, label=True), "examples.jsonl", 1, "label", "0 or 1"),
    "jsonl user an object": ("jsonl", _rows(3, user={"id": 1}), "examples.jsonl", 3, "user", "string"),
    "jsonl unknown history id": ("jsonl", _rows(2, history=["i0", "nope"]), "examples.jsonl", 2, "history", "unknown item id 'nope'"),
    "jsonl one label": ("jsonl", _rows(2, label=1), "examples.jsonl", 1, "label", "both labels"),
    "jsonl not utf-8": ("jsonl", lambda f: (f / "examples.jsonl").write_bytes(
        (f / "examples.jsonl").read_bytes().replace(b'"u2"', b'"u\xff"', 1)), "examples.jsonl", 3, None, "utf-8"),
    "jsonl not JSON": ("jsonl", lambda f: (f / "examples.jsonl").write_text(
        (f / "examples.jsonl").read_text().replace("}\n", "\n", 1)), "examples.jsonl", 1, None, "invalid JSON"),
    "csv empty examples": ("csv", _set_bytes("examples.csv", b""), "examples.csv", None, None, "empty"),
    "csv missing column": ("csv", _set_bytes("examples.csv", b"user,history,candidate,split\nu1,i0,i2,train\n"),
                           "examples.csv", 2, "label", "missing"),
    "csv label not a number": ("csv", _rows(2, label="yes"), "examples.csv", 3, "label", "0 or 1"),
    "csv unknown history id": ("csv", _rows(1, history=["i0", "zz"]), "examples.csv", 2, "history", "unknown item id 'zz'"),
    "csv items missing text": ("csv", _set_bytes("items.csv", b"id,name\ni0,x\n"), "items.csv", 2, "text", "missing"),
    "csv one label": ("csv", _rows(2, label=1), "examples.csv", 2, "label", "both labels"),
    "csv not utf-8": ("csv", _set_bytes("examples.csv", b"user,history,candidate,label,split\nu1,i0,i2,1,train\nu\xe9,i0,i3,0,train\n"),
                      "examples.csv", 3, None, "utf-8"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_names_file_line_and_field(tmp_path, case):
    fmt, spoil, fname, line, field, why = BAD_DATA[case]
    folder = tmp_path / "shop"
    if callable(spoil):
        write_data(folder, fmt)
        spoil(folder)
    else:
        write_data(folder, fmt, rows=spoil)
    with pytest.raises(DataError, match=why) as err:
        datasets.load(fmt, folder)
    e = err.value
    assert Path(e.file).name == fname and e.line == line and e.field == field, (e.file, e.line, e.field)
    assert fname in str(e)
    if line is not None:
        assert f"line {line}" in str(e)
    if field is not None:
        assert f"field '{field}'" in str(e)


def test_bad_data_publishes_nothing_from_the_cli(tmp_path, capsys):
    folder = write_data(tmp_path / "shop", "jsonl", rows=_rows(2, label=1))
    root = tmp_path / "adapters"
    code = cli(["train", "shop", "--scenario", "jsonl", "--data", str(folder), "--registry", str(root),
                "--base", "random:tiny", "--quant", "fp32", "--device", "cpu", "--max-steps", "2"])
    assert code == 2 and "examples.jsonl, line 1, field 'label'" in capsys.readouterr().err
    assert Registry(root).names() == []


def _one_label(split: str):
    data = toy_data()
    data.splits[split] = [ex.__class__(**{**ex.__dict__, "label": 1}) for ex in data.splits[split]]
    return data


def test_training_on_one_label_publishes_nothing(hub):
    with pytest.raises(DataError, match="only label"):
        hub.train("toy", _one_label("train"), TrainConfig(max_steps=2, eval_every=1))
    assert hub.registry.names() == [] and not hub.registry.root.exists()


def test_one_label_valid_split_is_a_data_error(hub):
    with pytest.raises(DataError, match="valid"):
        hub.train("toy", _one_label("valid"), TrainConfig(max_steps=2, eval_every=1))
    assert hub.registry.names() == []
