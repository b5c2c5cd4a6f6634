"""Load-time composition: hub.load("a+b") serves the sum of the parents' deltas."""
import pytest
import torch

from adapterhub.errors import ConfigError, IncompatibleAdapterError
from adapterhub.merge import read_pairs

from conftest import PROMPTS, publish_random


def test_composition_is_the_published_cat_merge(hub):
    publish_random(hub, "a", seed=1, scale=0.2)
    publish_random(hub, "b", seed=2, scale=0.2)
    merged = hub.merge({"a": 1.0, "b": 1.0}, method="cat", name="ab")
    composed = hub.load("a+b")
    assert composed.key == "a@v1+b@v1" and composed.card["scenario"] == "toy+toy"
    got, want = hub.score([("a+b", p) for p in PROMPTS]), hub.score([(merged.key, p) for p in PROMPTS])
    assert got == pytest.approx(want, abs=1e-6)
    # and it is not either parent alone, nor the base
    for other in ("a", "b", None):
        assert hub.score([(other, PROMPTS[0])]) != pytest.approx(got[:1], abs=1e-4)
    assert "ab" in hub.registry.names() and "a+b" not in str(hub.registry.names())  # nothing new published


def test_composition_weights_scale_each_delta(hub):
    publish_random(hub, "a", seed=1, scale=0.2)
    publish_random(hub, "b", seed=2, scale=0.2)
    composed = hub.load("0.5*a+2*b@v1")
    assert composed.key == "0.5*a@v1+2*b@v1"
    pa, sa, _, _ = read_pairs(hub.registry, "a")
    pb, sb, _, _ = read_pairs(hub.registry, "b")
    path = next(iter(pa))
    A, B = composed.pairs[hub.wrapped[path].index]
    want = 0.5 * sa * pa[path][1] @ pa[path][0] + 2 * sb * pb[path][1] @ pb[path][0]
    assert torch.allclose((B.float() @ A.float()), want, atol=1e-5)


def test_composition_per_row_in_a_mixed_batch_and_unload(hub):
    publish_random(hub, "a", seed=1, scale=0.2)
    publish_random(hub, "b", seed=2, scale=0.2)
    alone = [hub.score([(ref, p)])[0] for ref, p in (("a+b", PROMPTS[0]), ("a", PROMPTS[1]), (None, PROMPTS[2]))]
    mixed = hub.score([("a+b", PROMPTS[0]), ("a", PROMPTS[1]), (None, PROMPTS[2])])
    assert mixed == pytest.approx(alone, abs=1e-5)
    assert hub.unload("a+b") == ["a@v1+b@v1"] and "a@v1+b@v1" not in hub.resident()


def test_bad_compositions_are_named(hub):
    publish_random(hub, "a", seed=1)
    publish_random(hub, "c", seed=3, fingerprint="other-base")
    with pytest.raises(ConfigError, match="two adapters or more"):
        hub.load("2*a")
    with pytest.raises(ConfigError, match="invalid composition"):
        hub.load("a++a")
    with pytest.raises(IncompatibleAdapterError, match="different bases"):
        hub.load("a+c")
