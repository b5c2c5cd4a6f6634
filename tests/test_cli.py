import json
import subprocess
import sys

import pytest

from adapterhub.cli import main
from test_hub import publish_random


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
    assert len(lines) == 3 and all(0 < float(l.split("\t")[0]) < 1 for l in lines)
    assert main(args) == 2
    assert "nothing to score" in capsys.readouterr().err


def test_help_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "adapterhub", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for cmd in ("list", "show", "score", "promote", "rm", "train", "eval", "recommend", "demo"):
        assert cmd in out.stdout
    out = subprocess.run([sys.executable, "-m", "adapterhub", "train", "--help"], capture_output=True, text=True, timeout=120)
    assert "--max-steps" in out.stdout and "LoRA rank" in out.stdout
