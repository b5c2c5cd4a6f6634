"""The public names exist; the test extra installs what the tests need."""
from __future__ import annotations

import re
from pathlib import Path

import adapterhub

REPO = Path(__file__).resolve().parents[1]


def test_every_public_name_exists():
    for name in adapterhub.__all__:
        assert getattr(adapterhub, name) is not None, name
    namespace: dict = {}
    exec("from adapterhub import *", namespace)
    assert set(adapterhub.__all__) <= set(namespace)


def _extra(name: str) -> set[str]:
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    match = re.search(rf"^{name}\s*=\s*\[(.*?)\]", section, re.M | re.S)
    assert match, f"no '{name}' extra in pyproject.toml"
    return {re.split(r"[<>=!~\[ ;]", req.strip().strip("\"'"), maxsplit=1)[0].lower()
            for req in match.group(1).split(",") if req.strip()}


def _dependencies() -> set[str]:
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.M | re.S).group(1)
    return {re.split(r"[<>=!~\[ ;]", m, maxsplit=1)[0].lower() for m in re.findall(r"^\s*\"([^\"]+)\"", block, re.M)}


def test_the_test_extra_installs_what_tests_import_or_skip_on():
    needed = set()
    for path in (REPO / "tests").glob("*.py"):
        needed |= set(re.findall(r"importorskip\(\s*[\"']([\w.]+)[\"']", path.read_text()))
    needed = {n.split(".")[0].lower() for n in needed}
    assert "matplotlib" in _extra("test")   # the report test needs it
    assert {"torch", "bitsandbytes"} <= _dependencies()
    # the Ray engine's test, the server's fuzz and its load test are slow-marked and need the 'ray'
    # and 'loadtest' extras (large installs the default run does not need)
    allowed = _extra("test") | _dependencies() | _extra("ray") | _extra("loadtest")
    assert needed <= allowed, needed - allowed
    assert 'pip install torch==2.13.0 -e ".[test]"' in (REPO / "README.md").read_text()
