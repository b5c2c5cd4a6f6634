"""CLI options and behaviours: checks before the base loads, closed pipes, and train options generated from TrainConfig."""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal

import pytest

from adapterhub import cli
from adapterhub.cli import main
from adapterhub.config import TrainConfig

from conftest import toy_data, write_jsonl_folder
from conftest import publish_random

TINY = ["--base", "random:tiny", "--quant", "fp32", "--device", "cpu"]


@pytest.fixture
def reg(hub):
    publish_random(hub, "news", seed=0)
    return str(hub.registry.root)


@pytest.fixture
def no_base(monkeypatch):
    """Loading a base fails the test: the command had to say no before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the base was loaded before the arguments were checked")
    monkeypatch.setattr("adapterhub.hub.Hub.__init__", refuse)


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("error: "), captured.err
    return captured.err


# ------------------------------------------------------------------ one-class split: error, not traceback
def test_eval_on_a_one_class_split_exits_2(tmp_path, capsys):
    data = toy_data()
    data.splits["test"] = [dataclasses.replace(e, label=1) for e in data.splits["test"]]
    folder = write_jsonl_folder(tmp_path / "one", data)
    code = main(["eval", "base", "--format", "jsonl", "--data", str(folder), "--split", "test",
                 "--registry", str(tmp_path / "reg"), *TINY])
    assert code == 2
    assert "test split of scenario 'toy' has only label 1" in one_error_line(capsys)


def test_expected_os_errors_exit_2(reg, tmp_path, capsys):
    assert main(["score", "news", "--file", str(tmp_path / "nope.txt"), "--registry", reg, *TINY]) == 2
    assert "nope.txt" in one_error_line(capsys)


# ------------------------------------------------------------------ fail fast: nothing loads before the checks
@pytest.mark.parametrize("argv, message", [
    (["train", "Books", "--format", "jsonl"], "invalid adapter name 'Books'"),
    (["train", "books", "--format", "jsonl", "--init-from", "nosuch"], "adapter 'nosuch' not found"),
    (["train", "books", "--format", "jsonl", "--lr", "-1"], "lr=-1.0 must be > 0"),
    (["train", "books", "--scenario", "books"], "scenario 'books' is not built in"),
    (["train", "books", "--format", "csv"], "items.csv"),
    (["score", "nosuch", "--prompt", "x"], "adapter 'nosuch' not found"),
    (["score", "news@v9", "--prompt", "x"], "adapter 'news@v9' not found"),
    (["recommend", "news", "--history", "a|b", "--candidates", ""], "--candidates '' names no item"),
    (["recommend", "news", "--history", "a", "--candidates", " | "], "names no item"),
    (["recommend", "nosuch", "--history", "a", "--candidates", "x"], "adapter 'nosuch' not found"),
    (["eval", "nosuch", "--format", "jsonl"], "adapter 'nosuch' not found"),
    (["merge", "news=0.5", "nosuch=0.5"], "adapter 'nosuch' not found"),
    (["merge", "news=0.5", "news@v1=0.5", "--method", "tie"], "Did you mean 'ties'"),
    (["merge", "news=0.5", "news@v1=0.5", "--name", "../x"], "invalid adapter name"),
    (["export", "nosuch", "out"], "adapter 'nosuch' not found"),
])
def test_bad_arguments_fail_before_the_base_loads(argv, message, reg, toy_folder, no_base, capsys):
    if "--format" in argv:
        argv += ["--data", str(toy_folder)]
    assert main(argv + ["--registry", reg, *TINY]) == 2
    assert message in one_error_line(capsys)


def test_export_into_a_full_folder_fails_before_the_base_loads(reg, tmp_path, no_base, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    assert main(["export", "news", str(tmp_path / "out"), "--registry", reg, *TINY]) == 2
    assert "is not empty" in one_error_line(capsys)


# ------------------------------------------------------------------ score output tells prompts apart
def test_score_shows_index_and_the_end_of_each_prompt(reg, capsys):
    history = "The user watched and liked these movies, oldest first: " + ", ".join(f'"Movie {i}"' for i in range(12))
    prompts = [f'{history}.\nWill the user like the movie "{title}"? Answer:' for title in ("Alien", "Emma")]
    args = ["score", "news", "--registry", reg, *TINY, "--prompt", prompts[0], "--prompt", prompts[1]]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [l.split("\t")[0] for l in lines] == ["1", "2"]
    assert lines[0].endswith('"Alien"? Answer:') and lines[1].endswith('"Emma"? Answer:')
    assert main(args + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["index"], r["prompt"]) for r in rows] == [(1, prompts[0]), (2, prompts[1])]
    assert all(0 < r["score"] < 1 for r in rows)


# ------------------------------------------------------------------ help and defaults
def _commands():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_option_and_positional_has_help():
    missing = [f"{name} {action.option_strings or action.dest}" for name, p in _commands().items()
               for action in p._actions if not action.help]
    assert missing == []


def test_registry_defaults_to_the_environment_then_adapters(hub, reg, tmp_path, monkeypatch, capsys):
    assert "$ADAPTERHUB_REGISTRY, else ./adapters" in " ".join(_commands()["list"].format_help().split())
    assert main(["list"]) == 0                      # ./adapters: the hub fixture's registry (cwd = tmp_path)
    assert capsys.readouterr().out.splitlines()[1].split()[0] == "news"
    other = tmp_path / "other"
    publish_random(type(hub)(base=hub.base, registry=other), "music")
    monkeypatch.setenv("ADAPTERHUB_REGISTRY", str(other))
    assert main(["list", "--json"]) == 0
    assert [c["name"] for c in json.loads(capsys.readouterr().out)] == ["music"]
    assert main(["list", "--registry", reg, "--json"]) == 0   # the flag wins over the environment
    assert [c["name"] for c in json.loads(capsys.readouterr().out)] == ["news"]


def test_list_of_a_missing_registry_says_it_does_not_exist(tmp_path, capsys):
    assert main(["list", "--registry", str(tmp_path / "nope")]) == 2
    assert "registry '" + str(tmp_path / "nope") + "' does not exist" in one_error_line(capsys)


# ------------------------------------------------------------------ a closed pipe is not an error
@pytest.mark.parametrize("command", ["show", "list"])
def test_closed_stdout_ends_quietly(reg, command):
    argv = [sys.executable, "-m", "adapterhub", command, *(["news"] if command == "show" else []), "--registry", reg]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the command writes (like `| head -0`)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == "", err


# ------------------------------------------------------------------ train options from TrainConfig
def test_every_train_config_field_is_an_option():
    train = _commands()["train"]
    options = {o for a in train._actions for o in a.option_strings}
    assert {"--" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)} <= options
    args = train.parse_args(["x", "--weight-decay", "0.1", "--warmup-steps", "5", "--max-grad-norm", "0.5",
                             "--targets", "q_proj, v_proj", "--n-valid", "none", "--max-steps", "7", "--seed", "3"])
    cfg = TrainConfig.from_dict(cli._config_overrides(args, TrainConfig))
    assert (cfg.weight_decay, cfg.warmup_steps, cfg.max_grad_norm, cfg.targets) == (0.1, 5, 0.5, ("q_proj", "v_proj"))
    assert (cfg.n_valid, cfg.max_steps, cfg.seed, cfg.r) == (None, 7, 3, TrainConfig().r)
    assert "AdamW weight decay (default: 0.0)" in " ".join(train.format_help().split())
    with pytest.raises(SystemExit):
        train.parse_args(["x", "--max-steps", "many"])


@dataclass(frozen=True)
class Extended(TrainConfig):
    is_fancy: bool = field(default=False, metadata={"help": "a new flag"})
    mode: Literal["fast", "slow"] = field(default="fast", metadata={"help": "a new choice"})
    layers: tuple[int, ...] = field(default=(0, 1), metadata={"help": "a new list"})
    budget_s: float | None = field(default=None, metadata={"help": "a new optional number"})


def test_new_config_fields_become_options_without_touching_the_cli(monkeypatch):
    monkeypatch.setattr("adapterhub.config.TrainConfig", Extended)
    train = _commands()["train"]
    help_text = " ".join(train.format_help().split())
    assert "--is-fancy, --no-is-fancy a new flag (default: off)" in help_text and "a new choice (default: fast)" in help_text
    args = train.parse_args(["x", "--is-fancy", "--mode", "slow", "--layers", "2,3", "--budget-s", "1.5", "--r", "4"])
    assert cli._config_overrides(args, Extended) == {"is_fancy": True, "mode": "slow", "layers": (2, 3), "budget_s": 1.5,
                                                     "r": 4, "seed": 0}
    assert cli._config_overrides(train.parse_args(["x"]), Extended) == {"seed": 0}
    with pytest.raises(SystemExit):
        train.parse_args(["x", "--mode", "medium"])
