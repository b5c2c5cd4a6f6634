"""Custom scenarios are first-class (meta.json templates, --format beside --scenario)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterhub import prompts
from adapterhub.cli import main
from adapterhub.datasets import Example, Item, load
from adapterhub.errors import DataError

from conftest import toy_data, write_jsonl_folder

REPO = Path(__file__).resolve().parents[1]
TINY = ["--base", "random:tiny", "--quant", "fp32", "--device", "cpu"]
TEMPLATES = {"history": "The listener subscribed to these podcasts, oldest first: {items}.",
             "question": "Will the listener subscribe to the podcast {item}?"}
ITEMS = {"a": Item("a", "Space Stories"), "b": Item("b", "Quantum Weekly")}


def test_registered_templates_render_and_built_ins_stay():
    ex = Example("u", ("a",), "b", 1)
    assert prompts.render("casts", ex, ITEMS) == ('The user interacted with these items, oldest first: "Space Stories".',
                                                  '\nWill the user interact with the item "Quantum Weekly"? Answer:')
    prompts.register_templates("casts", **TEMPLATES)
    assert prompts.render("casts", ex, ITEMS) == (
        'The listener subscribed to these podcasts, oldest first: "Space Stories".',
        '\nWill the listener subscribe to the podcast "Quantum Weekly"? Answer:')
    assert prompts.registered_templates("casts") == TEMPLATES
    prompts.register_templates("half", question="Subscribe to {item}?")   # the other one stays generic
    assert prompts.templates("half") == (prompts.TEMPLATES["generic"][0], "Subscribe to {item}?")
    with pytest.raises(DataError, match="built in"):
        prompts.register_templates("news", question="Read {item}?")
    for bad, part in (("no placeholder", "history"), ("{items} and {user}", "history"), ("Like {items}?", "question"),
                      ("Like {item?", "question")):
        with pytest.raises(DataError) as err:
            prompts.register_templates("casts", **{part: bad})
        assert err.value.field == f"templates.{part}"


def test_meta_json_templates_are_read_and_checked(tmp_path):
    folder = write_jsonl_folder(tmp_path / "d", toy_data(), meta={"scenario": "casts", "templates": TEMPLATES})
    data = load("jsonl", folder)
    assert data.scenario == "casts" and data.extra["templates"] == TEMPLATES
    (folder / "meta.json").write_text(json.dumps({"templates": {"questoin": "x {item}"}}))
    with pytest.raises(DataError, match="Did you mean 'question'") as err:
        load("jsonl", folder)
    assert err.value.file.endswith("meta.json") and err.value.field == "templates.questoin"
    (folder / "meta.json").write_text(json.dumps({"templates": "Will they like {item}?"}))
    with pytest.raises(DataError, match="expected an object"):
        load("jsonl", folder)


def test_train_a_custom_scenario_from_the_command_line(tmp_path, capsys):
    folder = write_jsonl_folder(tmp_path / "podcast-data", toy_data(), meta={"templates": TEMPLATES})
    reg = ["--registry", str(tmp_path / "reg")]
    common = ["--format", "jsonl", "--data", str(folder), *TINY, *reg]
    assert main(["train", "casts", "--scenario", "casts", *common, "--max-steps", "2", "--eval-every", "1",
                 "--n-valid", "24", "--n-test", "24"]) == 0
    assert "published casts@v1" in capsys.readouterr().out
    card = json.loads((tmp_path / "reg" / "casts" / "v1" / "card.json").read_text())
    assert card["scenario"] == "casts" and card["data"]["source"] == "jsonl:podcast-data"
    assert prompts.templates("casts") == (TEMPLATES["history"], TEMPLATES["question"])  # what training rendered with
    # without --scenario the name is meta.json's, else the folder's
    assert main(["eval", "casts", "--format", "jsonl", "--data", str(folder), *TINY, *reg, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["adapter"]["auc"] >= 0
    assert prompts.templates("podcast-data") == (TEMPLATES["history"], TEMPLATES["question"])
    # the format is its own flag: a custom name without it is refused, the old spelling still works
    assert main(["eval", "casts", "--scenario", "casts", "--data", str(folder), *TINY, *reg]) == 2
    assert "add --format jsonl|csv" in capsys.readouterr().err
    assert main(["eval", "casts", "--scenario", "jsonl", "--data", str(folder), *TINY, *reg, "--json"]) == 0


def test_docs_show_the_default_generic_prompt():
    prefix, suffix = prompts.render("my-scenario", Example("u", ("i7", "i3"), "i1", 1),
                                    {"i7": Item("i7", "Tea towel"), "i3": Item("i3", "Teapot, 1 l"),
                                     "i1": Item("i1", "Blue kettle, 1.7 l")})
    for doc in ("README.md", "docs/DATA.md"):
        text = (REPO / doc).read_text()
        assert prefix + suffix in text, doc
        assert '"templates"' in text and "{items}" in text and "--format jsonl" in text, doc
