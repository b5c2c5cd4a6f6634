"""`adapterhub demo` (the main job) on the random tiny base: shipped adapters recommend, and the
train -> publish -> load example runs and says whether it beats the base."""
from adapterhub.cli import main
from adapterhub.registry import Registry

from conftest import publish_random


def test_demo_recommends_with_shipped_adapters_and_trains_the_example(tmp_path, capsys, hub):
    shipped = tmp_path / "shipped"
    publish_random(hub, "video", scale=0.2)            # a 'shipped' adapter over this base (card without facts)
    Registry(hub.registry.root).root.rename(shipped)
    rc = main(["demo", "--base", "random:tiny", "--quant", "fp32", "--device", "cpu", "--train-steps", "3",
               "--registry", str(shipped)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "[video@v1]" in out and "1. " in out and "6. " in out        # ranked all six candidates
    assert "trained 3 steps" in out and "podcasts@v1" in out
    assert "test AUC: adapter" in out
    assert "beats the bare base" in out or "does NOT beat the bare base" in out  # says which, plainly
    assert "loaded by name" in out and out.rstrip().splitlines()[-1].startswith("done in")


def test_demo_without_shipped_adapters_says_so(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["demo", "--base", "random:tiny", "--quant", "fp32", "--device", "cpu", "--train-steps", "2",
                 "--registry", str(empty)]) == 0
    assert f"no shipped adapters in {empty}" in capsys.readouterr().out
