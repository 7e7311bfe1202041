"""Tests for mcl_core.metrics against tests/data/metrics.npz (SPEC 8, 9.6)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from mcl_core.metrics import accuracy, official_metrics, ood_metrics

DATA = Path(__file__).parent / "data"
CASES = ["balanced", "unbalanced_ties", "n333"]
# project key -> vector key of the released Metric values
OFFICIAL_KEYS = {"fpr": "fpr", "auroc": "aur", "aupr_in": "auprin",
                 "aupr_out": "auprout"}


@pytest.fixture(scope="module")
def vec():
    return dict(np.load(DATA / "metrics.npz"))


@pytest.mark.parametrize("case", CASES)
def test_ood_metrics_match_sklearn_vectors(vec, case):
    got = ood_metrics(vec[f"{case}__ind"], vec[f"{case}__ood"])
    assert set(got) == {"auroc", "fpr95", "aupr_in", "aupr_out"}
    for key, value in got.items():
        assert_allclose(value, vec[f"{case}__paper__{key}"], rtol=0,
                        atol=1e-12, err_msg=key)


@pytest.mark.parametrize("case", CASES)
def test_official_metrics_match_released_vectors(vec, case):
    got = official_metrics(vec[f"{case}__ind"], vec[f"{case}__ood"])
    for key, ref_key in OFFICIAL_KEYS.items():
        assert_allclose(got[key], vec[f"{case}__official__{ref_key}"],
                        rtol=0, atol=1e-9, err_msg=key)


def test_official_fpr_is_100_when_tpr_misses_95(vec):
    # 333 IND scores: 333 // 20 leaves a TPR of 0.952, outside the window
    assert official_metrics(vec["n333__ind"], vec["n333__ood"])["fpr"] == 100
    assert official_metrics(vec["balanced__ind"],
                            vec["balanced__ood"])["fpr"] < 100


def released_walk_auroc(ind, ood):
    """Step-by-step merge walk of SPEC 9.6, written out as a reference."""
    ind, ood = np.sort(ind), np.sort(ood)
    i = j = 0
    points = []
    for _ in range(ind.size + ood.size):
        if ind[i] >= ood[j]:
            j = min(j + 1, ood.size - 1)
        else:
            i = min(i + 1, ind.size - 1)
        points.append(((ood.size - j) / ood.size, (ind.size - i) / ind.size))
    area = 0.0
    for (f_new, t_new), (f_old, _) in zip(points[-2::-1], points[::-1]):
        if f_new != f_old:
            area += t_new * (f_new - f_old)
    return 100 * area


@pytest.mark.parametrize("seed", range(6))
def test_official_auroc_equals_explicit_walk(seed):
    gen = np.random.default_rng(seed)
    n_in, n_out = gen.integers(1, 30, size=2)
    shift = [-3.0, 0.0, 0.5, 3.0, 10.0, -10.0][seed]
    ind = np.round(gen.normal(shift, 1.0, n_in), 1)        # with ties
    ood = np.round(gen.normal(0.0, 1.0, n_out), 1)
    if np.ptp(np.concatenate([ind, ood])) == 0:
        ood = ood - 1.0
    got = official_metrics(ind, ood)["auroc"]
    assert_allclose(got, released_walk_auroc(ind, ood), rtol=0, atol=1e-9)


def test_official_auroc_misses_the_end_columns():
    # perfectly separated: the walk's curve only spans FPR 1/100 to 99/100
    ind, ood = np.arange(100.0, 200.0), np.arange(100.0)
    assert ood_metrics(ind, ood)["auroc"] == 1.0
    assert official_metrics(ind, ood)["auroc"] == pytest.approx(98.0, abs=1e-9)


def test_perfect_and_reversed_separation():
    ind, ood = np.linspace(1.0, 2.0, 50), np.linspace(-2.0, -1.0, 40)
    perfect = ood_metrics(ind, ood)
    assert perfect == {"auroc": 1.0, "fpr95": 0.0, "aupr_in": 1.0,
                       "aupr_out": 1.0}
    reversed_ = ood_metrics(ood, ind)
    assert reversed_["auroc"] == 0.0
    assert reversed_["fpr95"] == 1.0


def test_higher_score_means_in_distribution():
    # IND is the positive class: shifting IND scores up raises AUROC
    gen = np.random.default_rng(0)
    ood = gen.normal(size=500)
    low = ood_metrics(gen.normal(0.2, 1, 500), ood)["auroc"]
    high = ood_metrics(gen.normal(2.0, 1, 500), ood)["auroc"]
    assert 0.5 < low < high
    assert ood_metrics(np.zeros(3), np.zeros(4))["auroc"] == 0.5


def test_torch_and_numpy_inputs_agree(vec):
    ind, ood = vec["balanced__ind"], vec["balanced__ood"]
    assert ood_metrics(torch.from_numpy(ind), torch.from_numpy(ood).float()) \
        == ood_metrics(ind, ood.astype(np.float32))
    assert official_metrics(torch.from_numpy(ind), list(ood)) == \
        official_metrics(ind, ood)


@pytest.mark.parametrize("fn", [ood_metrics, official_metrics])
def test_bad_score_inputs_raise(fn):
    good = np.array([0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match=r"ind_scores is empty"):
        fn(np.array([]), good)
    with pytest.raises(ValueError, match=r"ood_scores holds 1 NaN"):
        fn(good, np.array([0.2, np.nan]))
    with pytest.raises(ValueError, match=r"ind_scores must be 1-D, got shape "
                                         r"\(3, 1\)"):
        fn(good[:, None], good)
    with pytest.raises(ValueError, match=r"ood_scores holds 1 NaN or inf"):
        fn(good, np.array([np.inf]))


def test_official_metrics_reject_constant_scores():
    with pytest.raises(ValueError, match=r"all scores equal 1.0"):
        official_metrics(np.ones(5), np.ones(3))


def test_accuracy():
    pred = torch.tensor([0, 1, 2, 2])
    assert accuracy(pred, np.array([0, 1, 1, 2])) == 0.75
    with pytest.raises(ValueError, match=r"same shape, got \(4,\) and \(3,\)"):
        accuracy(pred, [0, 1, 2])
    with pytest.raises(ValueError, match=r"pred must be 1-D and non-empty"):
        accuracy([], [])
