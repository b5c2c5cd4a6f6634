"""A user's own scenario: items + examples as JSONL or CSV (format in docs/DATA.md).

folder/items.jsonl     {"id": "i1", "text": "Blue kettle", "category": "kitchen"}
folder/examples.jsonl  {"user": "u1", "history": ["i1"], "candidate": "i2", "label": 1, "split": "train"}
folder/meta.json       optional {"scenario": "podcasts", "task": "ranking",
                                 "templates": {"history": "... {items}.", "question": "... {item}?"}}
CSV: items.csv (id,text[,category]) and examples.csv (user,history,candidate,label,split[,group,disliked]),
lists separated by "|".
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import DataError, did_you_mean
from .common import Example, Item, ScenarioData, finish, one_line, read_lines, read_text

SPLITS = ("train", "valid", "test")
TASKS = ("pointwise", "ranking", "impression")
TEMPLATE_KEYS = ("history", "question")


def read_records(path: Path, fmt: str) -> list[tuple[int, dict]]:
    """(1-based line, record) per non-empty line (JSONL) or data row (CSV)."""
    lines = read_lines(path)
    if not any(line.strip() for line in lines):
        raise DataError("the file is empty", file=str(path))
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        return [(reader.line_num, {k: v for k, v in row.items() if k is not None}) for row in reader]
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON ({e.msg})", file=str(path), line=n) from None
        if not isinstance(record, dict):
            raise DataError(f"expected a JSON object, got {type(record).__name__}", file=str(path), line=n)
        out.append((n, record))
    return out


def load(path, *, fmt: str = "jsonl", seed: int = 0, n_candidates: int = 20,
         max_examples=None, scenario: str | None = None) -> ScenarioData:
    """scenario: the scenario's name; default meta.json's "scenario", else the folder's name.

    meta.json's "templates" ({"history": ..., "question": ...}) land in extra["templates"]; they
    take effect once prompts.register_templates(data.scenario, **data.extra["templates"]) runs.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such folder or file: pass the folder holding items.{fmt} and examples.{fmt} with "
                        "--data PATH (see docs/DATA.md)", file=str(path))
    folder = path if path.is_dir() else path.parent
    items_file = folder / f"items.{fmt}"
    examples_file = path if path.is_file() else folder / f"examples.{fmt}"
    for f in (items_file, examples_file):
        if not f.is_file():
            raise DataError(f"'{f}' not found; a {fmt} scenario needs items.{fmt} and examples.{fmt} "
                            "(see docs/DATA.md). Pass the folder with --data PATH", file=str(f))

    def get(record, key, where, *, kind=str, required=True, default=None):
        file, line = where
        if key not in record or record[key] in (None, ""):
            if required:
                raise DataError(f"missing '{key}'", file=str(file), line=line, field=key)
            return default
        value = record[key]
        if kind is str:
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise DataError(f"expected a string, got {value!r}", file=str(file), line=line, field=key)
            return str(value).strip()
        if kind is list:
            if fmt == "csv":
                return [v.strip() for v in str(value).split("|") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
                raise DataError(f"expected a list of item ids, got {value!r}", file=str(file), line=line, field=key)
            return [str(v) for v in value]
        return value

    items: dict[str, Item] = {}
    for line, rec in read_records(items_file, fmt):
        where = (items_file, line)
        item_id = get(rec, "id", where)
        if item_id in items:
            raise DataError(f"duplicate item id {item_id!r}", file=str(items_file), line=line, field="id")
        items[item_id] = Item(item_id, one_line(get(rec, "text", where)), get(rec, "category", where, required=False, default=""))

    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    first_train_line = None
    for line, rec in read_records(examples_file, fmt):
        where = (examples_file, line)
        history = get(rec, "history", where, kind=list, required=False, default=[])
        disliked = get(rec, "disliked", where, kind=list, required=False, default=[])
        candidate = get(rec, "candidate", where)
        for key, ids in (("history", history), ("disliked", disliked), ("candidate", [candidate])):
            unknown = [i for i in ids if i not in items]
            if unknown:
                raise DataError(f"unknown item id {unknown[0]!r} (not in {items_file.name})",
                                file=str(examples_file), line=line, field=key)
        label = get(rec, "label", where, kind=None)
        if str(label) not in ("0", "1") or (fmt == "jsonl" and type(label) is not int):
            raise DataError(f"label must be 0 or 1, got {label!r}", file=str(examples_file), line=line, field="label")
        split = get(rec, "split", where)
        if split not in SPLITS:
            raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}",
                            file=str(examples_file), line=line, field="split")
        if split == "train" and first_train_line is None:
            first_train_line = line
        splits[split].append(Example(get(rec, "user", where), tuple(history), candidate, int(label),
                                     tuple(disliked), get(rec, "group", where, required=False, default="")))

    labels = {ex.label for ex in splits["train"]}
    if len(labels) < 2:
        raise DataError(f"the train split needs both labels 0 and 1, found only {sorted(labels) or 'no examples'}",
                        file=str(examples_file), line=first_train_line, field="label")

    meta_file = folder / "meta.json"
    meta = read_meta(meta_file) if meta_file.is_file() else {}
    has_groups = any(ex.group for s in splits.values() for ex in s)
    task = meta.get("task") or ("ranking" if has_groups else "pointwise")
    if task not in TASKS:
        raise DataError(f"task must be one of {', '.join(TASKS)}, got {task!r}", file=str(meta_file), field="task")
    files = [items_file, examples_file] + ([meta_file] if meta_file.is_file() else [])
    params = {"seed": seed, "max_examples": max_examples}
    scenario = scenario or meta.get("scenario") or folder.name
    extra = {"templates": dict(meta["templates"])} if meta.get("templates") else {}
    return finish(scenario, f"{fmt}:{folder.name}", items, splits, task, files, params, extra)


def read_meta(meta_file: Path) -> dict:
    """meta.json: an object; "scenario" and "task" strings, "templates" an object of strings."""
    try:
        meta = json.loads(read_text(meta_file))
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON ({e.msg})", file=str(meta_file), line=e.lineno) from None
    if not isinstance(meta, dict):
        raise DataError(f"expected a JSON object, got {type(meta).__name__}", file=str(meta_file))
    for key in ("scenario", "task"):
        if key in meta and not isinstance(meta[key], str):
            raise DataError(f"expected a string, got {meta[key]!r}", file=str(meta_file), field=key)
    templates = meta.get("templates")
    if templates is None:
        return meta
    if not isinstance(templates, dict):
        raise DataError(f"expected an object like {{\"history\": \"... {{items}}.\", \"question\": \"... {{item}}?\"}}, "
                        f"got {templates!r}", file=str(meta_file), field="templates")
    for key, text in templates.items():
        if key not in TEMPLATE_KEYS:
            raise DataError(f"unknown template {key!r} (valid: {', '.join(TEMPLATE_KEYS)}).{did_you_mean(key, TEMPLATE_KEYS)}",
                            file=str(meta_file), field=f"templates.{key}")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"expected a non-empty string, got {text!r}", file=str(meta_file), field=f"templates.{key}")
    return meta
