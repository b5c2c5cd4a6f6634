import json
import math
import random

import pytest

from adapterhub import fused
from adapterhub.datasets import Example
from adapterhub.errors import DataError
from adapterhub.evaluation import evaluate
from adapterhub.metrics import auc


def toy(n=400, seed=0):
    rng = random.Random(seed)
    X, y = [], []
    for _ in range(n):
        a, b = rng.gauss(0, 1), rng.gauss(5, 3)      # b on another scale: standardisation matters
        p = 1 / (1 + math.exp(-(2 * a - 0.5 * (b - 5) / 3)))
        X.append([a, b, 7.0])                       # a constant feature
        y.append(int(rng.random() < p))
    return X, y


def test_fit_recovers_signs_is_deterministic_and_json():
    X, y = toy()
    model = fused.fit(X, y, names=["llm_logit", "pop", "const"])
    assert model == fused.fit(X, y, names=["llm_logit", "pop", "const"])
    assert json.loads(json.dumps(model)) == model
    assert set(model) == {"features", "mean", "std", "weights", "bias", "fit"} and model["fit"] == "pointwise"
    w = model["weights"]
    assert w[0] > 1.0 and w[1] < -0.2 and w[2] == 0.0 and model["std"][2] == 1.0
    scores = fused.apply(model, X)
    assert auc(y, scores) > max(auc(y, [r[0] for r in X]), 0.75)


def test_fit_matches_a_closed_form_one_feature_case():
    # one binary feature, no penalty: the fit reproduces the empirical log-odds per value
    X = [[0.0]] * 4 + [[1.0]] * 4
    y = [1, 0, 0, 0, 1, 1, 1, 0]   # P(y|x=0) = 1/4, P(y|x=1) = 3/4
    model = fused.fit(X, y, l2=0.0)
    lo, hi = fused.apply(model, [[0.0], [1.0]])
    assert lo == pytest.approx(math.log(1 / 3), abs=1e-5) and hi == pytest.approx(math.log(3), abs=1e-5)
    assert fused.sigmoid(hi) == pytest.approx(0.75, abs=1e-6)


def test_fit_and_apply_refuse_bad_input():
    with pytest.raises(DataError, match="both labels"):
        fused.fit([[1.0], [2.0]], [1, 1])
    with pytest.raises(DataError, match="feature names"):
        fused.fit([[1.0], [2.0]], [1, 0], names=["a", "b"])
    model = fused.fit([[1.0], [2.0]], [1, 0])
    with pytest.raises(DataError, match="takes 1 features"):
        fused.apply(model, [[1.0, 2.0]])


def test_bootstrap_pointwise_and_grouped():
    rng = random.Random(1)
    ex = [Example(f"u{i}", (), f"i{i}", i % 2) for i in range(200)]
    scores = [e.label + rng.gauss(0, 1) for e in ex]
    metric = lambda e, s: evaluate("pointwise", e, s)["auc"]  # noqa: E731
    lo, hi = fused.bootstrap_ci(metric, ex, scores, n=200)
    point = metric(ex, scores)
    assert lo < point < hi and 0.05 < hi - lo < 0.3
    assert (lo, hi) == fused.bootstrap_ci(metric, ex, scores, n=200)

    # impressions: whole groups are drawn; a group drawn twice counts twice
    groups = [Example("u", (), f"c{k}", int(k == 0), group=f"g{g}") for g in range(30) for k in range(5)]
    gscores = [rng.random() + (e.label if int(e.group[1:]) % 3 else 0) for e in groups]
    gmetric = lambda e, s: evaluate("impression", e, s)["auc"]  # noqa: E731
    seen = []
    def spy(e, s):
        seen.append(len({x.group for x in e}))
        return gmetric(e, s)
    lo, hi = fused.bootstrap_ci(spy, groups, gscores, n=50)
    assert all(n == 30 for n in seen) and lo < gmetric(groups, gscores) < hi


def test_bootstrap_skips_undefined_resamples():
    ex = [Example("u", (), "a", 1), Example("u", (), "b", 0)]
    metric = lambda e, s: evaluate("pointwise", e, s)["auc"]  # noqa: E731
    lo, hi = fused.bootstrap_ci(metric, ex, [0.9, 0.1], n=50)   # half the resamples have one class
    assert lo == hi == 1.0


def test_listwise_fit_ignores_what_differs_between_groups():
    """With groups, the weights rank within a group: a feature that only shifts whole groups (one
    user's prompts all scoring higher) gets no weight, while the pointwise fit leans on it; then one
    scale and bias calibrate, so the mean P(yes) matches the positive rate."""
    rng = random.Random(1)
    X, y, groups = [], [], []
    for g in range(150):
        shift = rng.gauss(0, 2)
        pos = rng.randrange(8)
        for j in range(8):
            signal = rng.gauss(0, 1) + (1.5 if j == pos else 0.0)
            X.append([signal + shift, shift])      # the second feature is only the group's shift
            y.append(int(j == pos))
            groups.append(g)
    point = fused.fit(X, y, names=["a", "shift"])
    lw = fused.fit(X, y, names=["a", "shift"], groups=groups)
    assert lw["fit"] == "listwise"
    # the shift is constant within a group: it cannot rank, so the listwise fit gives it no weight;
    # the pointwise fit spends weight on it (to undo the shift in a's scale across groups)
    assert abs(lw["weights"][1]) < 1e-3 and lw["weights"][0] > 0.3
    assert point["weights"][1] < -0.3
    probs = [fused.sigmoid(z) for z in fused.apply(lw, X)]
    assert sum(probs) / len(probs) == pytest.approx(sum(y) / len(y), abs=0.01)
    with pytest.raises(DataError, match="both a positive and a negative"):
        fused.fit([[0.0], [1.0]], [0, 1], groups=["a", "b"])
