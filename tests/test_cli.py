import json
import subprocess
import sys

import pytest

from adapterhub.cli import main
from conftest import publish_random


@pytest.fixture
def reg(hub):
    publish_random(hub, "news", seed=0)
    publish_random(hub, "music", seed=1)
    publish_random(hub, "music", seed=2)
    return str(hub.registry.root)


def test_list_prints_the_table(reg, capsys):
    assert main(["list", "--registry", reg]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["NAME", "CURRENT", "VERSIONS", "SCENARIO"]
    assert out[1].split()[:3] == ["music", "v2", "2"] and out[2].split()[:3] == ["news", "v1", "1"]
    assert main(["list", "--registry", reg, "--json"]) == 0
    assert [c["name"] for c in json.loads(capsys.readouterr().out)] == ["music", "news"]


def test_unknown_name_exits_2_with_one_line(reg, capsys):
    assert main(["show", "newz", "--registry", reg]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: adapter 'newz' not found") and "Did you mean 'news'" in err


def test_bad_name_exits_2(reg, capsys):
    assert main(["show", "../etc", "--registry", reg]) == 2
    assert "invalid adapter name" in capsys.readouterr().err


def test_show_promote_rm(reg, capsys):
    assert main(["show", "music@v1", "--registry", reg]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v1"
    assert main(["promote", "music@v1", "--registry", reg]) == 0
    assert capsys.readouterr().out.strip() == "music -> v1"
    assert main(["list", "--registry", reg, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["current"] == "v1"
    assert main(["rm", "music", "--registry", reg]) == 2  # a bare name needs --all
    assert main(["rm", "music@v2", "--registry", reg]) == 0
    assert main(["rm", "music", "--all", "--registry", reg]) == 0
    capsys.readouterr()
    assert main(["list", "--registry", reg, "--json"]) == 0
    assert [c["name"] for c in json.loads(capsys.readouterr().out)] == ["news"]


def test_score_prompts_and_file(reg, tmp_path, capsys):
    f = tmp_path / "prompts.txt"
    f.write_text("first prompt Answer:\n\nsecond Answer:\n")
    args = ["score", "news", "--registry", reg, "--base", "random:tiny", "--quant", "fp32"]
    assert main(args + ["--prompt", "hello Answer:", "--file", str(f)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [l.split("\t")[0] for l in lines] == ["1", "2", "3"] and all(0 < float(l.split("\t")[1]) < 1 for l in lines)
    assert main(args) == 2
    assert "nothing to score" in capsys.readouterr().err


def test_help_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "adapterhub", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for cmd in ("list", "show", "score", "promote", "rm", "train", "eval", "recommend", "demo"):
        assert cmd in out.stdout
    out = subprocess.run([sys.executable, "-m", "adapterhub", "train", "--help"], capture_output=True, text=True, timeout=120)
    assert "--max-steps" in out.stdout and "LoRA rank" in out.stdout


def test_train_eval_recommend_from_the_command_line(tmp_path, capsys):
    from conftest import toy_data, write_jsonl_folder
    write_jsonl_folder(tmp_path / "toy", toy_data())
    model = ["--base", "random:tiny", "--quant", "fp32", "--device", "cpu", "--registry", str(tmp_path / "reg")]
    data = ["--scenario", "jsonl", "--data", str(tmp_path / "toy")]
    assert main(["train", "toy", *data, *model, "--max-steps", "4", "--eval-every", "2", "--n-valid", "24",
                 "--n-test", "24"]) == 0
    out = capsys.readouterr().out
    assert "published toy@v1 (current)" in out and "| adapter |" in out and "| random |" in out
    assert main(["eval", "toy", *data, *model, "--split", "test", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "test" and {"adapter", "base", "random", "most-popular"} <= set(report["metrics"])
    assert 0 <= report["metrics"]["adapter"]["auc"] <= 1
    assert main(["recommend", "toy", *model, "--history", "red thing 1|red thing 3",
                 "--candidates", "red thing 5|blue thing 6|red thing 7", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("  1.")
    assert main(["train", "toy", "--scenario", "jsonl", "--data", str(tmp_path / "missing"), *model]) == 2
    assert "missing" in capsys.readouterr().err


def test_merge_and_export_commands(reg, tmp_path, capsys):
    model = ["--base", "random:tiny", "--quant", "fp32", "--device", "cpu", "--registry", reg]
    assert main(["merge", "news=0.5", "music=0.5", "--method", "cat", "--name", "nm", *model]) == 0
    assert "published nm@v1" in capsys.readouterr().out
    assert main(["export", "nm", str(tmp_path / "out"), "--peft", *model]) == 0
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert main(["merge", "news=abc", "music", *model]) == 2


def test_data_options_are_parsed_and_bad_ones_named():
    from adapterhub.cli import _data_options
    from adapterhub.errors import ConfigError
    assert _data_options(["full_train=true", "n=3", "tag=x", "flag=No", "valid_from_train=0.15"]) == {
        "full_train": True, "n": 3, "tag": "x", "flag": False, "valid_from_train": 0.15}
    with pytest.raises(ConfigError, match="--data-option 'full_train'.*KEY=VALUE"):
        _data_options(["full_train"])
