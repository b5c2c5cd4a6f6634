import math

import pytest

from adapterhub import metrics as M
from adapterhub.errors import DataError


def test_auc_hand_computed_with_ties():
    # pairs (pos, neg): (0.8,0.1) win, (0.8,0.4) win, (0.4,0.1) win, (0.4,0.4) tie -> 3.5 / 4
    assert M.auc([1, 0, 1, 0], [0.8, 0.1, 0.4, 0.4]) == pytest.approx(0.875)
    assert M.auc([1, 0], [0.2, 0.9]) == 0.0
    assert M.auc([1, 1, 0, 0], [0.5] * 4) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        M.auc([1, 1], [0.2, 0.3])


def test_logloss():
    assert M.logloss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert M.logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))


def test_rank_metrics():
    assert M.rank_of_positive(0.5, [0.9, 0.5, 0.1]) == 3   # tie counted against the positive
    assert M.hr_at_k(3, 3) == 1.0 and M.hr_at_k(4, 3) == 0.0
    assert M.ndcg_at_k(1, 5) == 1.0 and M.ndcg_at_k(3, 5) == pytest.approx(0.5)
    assert M.ndcg_at_k(6, 5) == 0.0
    assert M.mrr([1, 2, 4]) == pytest.approx((1 + 0.5 + 0.25) / 3)


def test_multi_positive_mind_definitions():
    labels, scores = [0, 1, 0, 1], [0.9, 0.8, 0.7, 0.1]   # clicks at ranks 2 and 4
    assert M.mrr_multi(labels, scores) == pytest.approx((1 / 2 + 1 / 4) / 2)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3)
    assert M.ndcg_at_k_multi(labels, scores, 10) == pytest.approx(dcg / idcg)
    assert M.ndcg_at_k_multi(labels, scores, 2) == pytest.approx((1 / math.log2(3)) / idcg)
    assert M.mrr_multi([1, 0], [0.5, 0.5]) == 0.5   # pessimistic tie: the click goes second


def test_group_auc_skips_single_class_groups():
    labels = [1, 0, 1, 0, 1, 1]
    scores = [0.9, 0.1, 0.2, 0.8, 0.5, 0.5]
    assert M.group_auc(labels, scores, ["a", "a", "b", "b", "c", "c"]) == pytest.approx(0.5)


def test_group_auc_is_each_groups_auc_bit_for_bit_averaged_in_order_of_appearance():
    """group_auc sorts all groups at once; it gives exactly what auc() over each group in turn gives,
    with ties (within a group and across groups), NaN scores, groups of one class, interleaved rows."""
    import random

    import numpy as np
    rng = random.Random(7)
    for trial in range(200):
        n = rng.randrange(1, 60)
        labels = [int(rng.random() < 0.4) for _ in range(n)]
        scores = [rng.choice([0.1, 0.5, 0.9, float("nan")]) if trial % 3 == 0 else rng.random() for _ in range(n)]
        groups = [f"u{rng.randrange(1 + n // 4)}" for _ in range(n)]
        y, s, g = np.asarray(labels), np.asarray(scores), np.asarray(groups)
        each = [M.auc(y[g == name], s[g == name]) for name in dict.fromkeys(groups)
                if 0 < y[g == name].sum() < (g == name).sum()]
        if not each:
            with pytest.raises(DataError, match="no group has both"):
                M.group_auc(labels, scores, groups)
            continue
        assert M.group_auc(labels, scores, groups) == float(np.mean(each))   # exactly


def test_undefined_metrics_are_data_errors():
    with pytest.raises(DataError, match="2 positives and 0 negatives"):
        M.auc([1, 1], [0.2, 0.3])
    with pytest.raises(DataError, match="no group has both"):
        M.group_auc([1, 0], [0.5, 0.4], ["a", "b"])
    with pytest.raises(DataError, match=r"labels must be 0 or 1, got \[2.0\]"):
        M.group_auc([1, 0, 2], [0.5, 0.4, 0.3], ["a", "a", "a"])
