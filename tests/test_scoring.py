"""Tests for mcl_core.scoring against tests/data vectors (SPEC 6, 7, 9.4-9.5)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from torch.testing import assert_close

from mcl_core.scoring import (
    AGGREGATIONS,
    WAY_ROTATIONS,
    ClassGaussians,
    GaussianFitter,
    LeeMahalanobis,
    aggregate,
    msp_score,
    odin_score,
    score_features,
    sei_views,
)

DATA = Path(__file__).parent / "data"

# vector key of each (variant, project method) pair in sei.npz
SEI_KEYS = {
    ("paper", "avg"): "avg",
    ("paper", "max"): "max",
    ("paper", "w-avg"): "wavg",
    ("official", "avg"): "mean",
    ("official", "max"): "min",
    ("official", "w-avg"): "wa",
}


@pytest.fixture(scope="module")
def maha():
    return dict(np.load(DATA / "mahalanobis.npz"))


@pytest.fixture(scope="module")
def sei():
    return dict(np.load(DATA / "sei.npz"))


def fit_vectors(maha, convention, dtype=np.float64):
    fitter = GaussianFitter(3, 4, convention=convention)
    fitter.update(
        maha["train_feats"].astype(dtype), maha["train_main"], maha["train_aux"]
    )
    return fitter.finalize()


# ---------------------------------------------------------------------------
# Gaussians and 1-way scoring (Eq. 12-14)

@pytest.mark.parametrize("convention", ["paper", "official"])
def test_gaussian_fit_matches_vectors(maha, convention):
    gs = fit_vectors(maha, convention)
    ref = {k.split("__")[1]: v for k, v in maha.items()
           if k.startswith(f"{convention}__")}
    assert gs.reg == ref["reg"]
    assert_allclose(gs.means.numpy(), ref["means"], rtol=0, atol=1e-12)
    assert_allclose(gs.covs.numpy(), ref["covs"], rtol=0, atol=1e-12)
    assert_allclose(gs.precisions.numpy(), ref["precisions"], rtol=1e-7)
    test = maha["test_feats"]
    assert_allclose(gs.sq_distances(test).numpy(), ref["d2"], rtol=1e-7)
    assert_allclose(gs.group_scores(test).numpy(), ref["scores"], rtol=1e-7)


@pytest.mark.parametrize("convention", ["paper", "official"])
def test_one_way_scoring_matches_vectors(maha, convention):
    gs = fit_vectors(maha, convention)
    scores = gs.group_scores(maha["test_feats"])[:, :3]    # rotation 0
    assert_array_equal(scores.argmax(1).numpy(),
                       maha[f"{convention}__pred_1way"])
    assert_allclose(scores.amax(1).numpy(),
                    maha[f"{convention}__score_1way"], rtol=1e-7)


@pytest.mark.parametrize("convention", ["paper", "official"])
def test_float32_features_within_loose_tolerance(maha, convention):
    gs = fit_vectors(maha, convention, dtype=np.float32)
    test = torch.from_numpy(maha["test_feats"]).float()
    assert gs.means.dtype == torch.float64
    assert_allclose(gs.precisions.numpy(),
                    maha[f"{convention}__precisions"], rtol=1e-3, atol=1e-3)
    assert_allclose(gs.group_scores(test).numpy(),
                    maha[f"{convention}__scores"], rtol=1e-3)


@pytest.mark.parametrize("convention", ["paper", "official"])
def test_streaming_in_uneven_batches_equals_one_shot(maha, convention):
    feats = maha["train_feats"]
    main, aux = maha["train_main"], maha["train_aux"]
    # one block sorted by group, so a batch holds a single group and the
    # per-group fallback path runs too
    order = np.concatenate([np.arange(300), 300 + np.argsort(
        aux[300:] * 3 + main[300:], kind="stable")])
    feats, main, aux = feats[order], main[order], aux[order]

    fitter = GaussianFitter(3, 4, convention=convention)
    edges = [0, 1, 8, 108, 111, 300, 305, 340, 480]
    for lo, hi in zip(edges[:-1], edges[1:]):
        fitter.update(torch.from_numpy(feats[lo:hi]), main[lo:hi], aux[lo:hi])
    fitter.update(feats[:0], main[:0], aux[:0])            # empty batch
    streamed = fitter.finalize()
    one_shot = fit_vectors(maha, convention)

    assert_array_equal(streamed.counts.numpy(), np.full(12, 40))
    assert_close(streamed.means, one_shot.means, rtol=0, atol=1e-13)
    assert_close(streamed.covs, one_shot.covs, rtol=0, atol=1e-13)


def test_fit_of_offset_features_is_stable():
    # large mean, small spread: raw sums of outer products would cancel
    gen = torch.Generator().manual_seed(0)
    x = 1e4 + torch.randn(2000, 3, generator=gen, dtype=torch.float64)
    fitter = GaussianFitter(1, convention="paper")
    for lo in range(0, 2000, 300):
        fitter.update(x[lo:lo + 300], torch.zeros(len(x[lo:lo + 300]),
                                                  dtype=torch.long))
    expected = torch.from_numpy(np.cov(x.numpy(), rowvar=False))
    assert_close(fitter.finalize().covs[0], expected, rtol=1e-10, atol=1e-12)


def test_group_with_one_sample_raises_naming_it(maha):
    fitter = GaussianFitter(3, 4, convention="official")
    keep = ~((maha["train_main"] == 2) & (maha["train_aux"] == 1))
    keep[np.flatnonzero(~keep)[0]] = True                  # leave one sample
    fitter.update(maha["train_feats"][keep], maha["train_main"][keep],
                  maha["train_aux"][keep])
    with pytest.raises(ValueError, match=r"class 2, aux 1 has 1 sample"):
        fitter.finalize()


def test_singular_covariance_without_regulariser_raises(maha, caplog):
    # 10 samples in D = 16: singular covariance, invertible only with reg > 0
    feats, main, aux = (maha[k][:120] for k in
                        ("train_feats", "train_main", "train_aux"))
    assert np.bincount(aux * 3 + main, minlength=12).max() <= 16
    with pytest.raises(ValueError, match=r"not positive definite"):
        GaussianFitter(3, 4, convention="paper").update(
            feats, main, aux).finalize()
    with caplog.at_level("WARNING", logger="mcl_core.scoring"):
        gs = GaussianFitter(3, 4, convention="paper", reg=1e-3).update(
            feats, main, aux).finalize()
    assert "at most D = 16 samples" in caplog.text
    assert torch.isfinite(gs.group_scores(maha["test_feats"])).all()


def test_bad_fit_inputs_raise(maha):
    feats = maha["train_feats"][:10].copy()
    main, aux = maha["train_main"][:10], maha["train_aux"][:10]
    fitter = GaussianFitter(3, 4)
    feats[3, 5] = np.nan
    with pytest.raises(ValueError, match=r"feats holds NaN values in 1 of 10"):
        fitter.update(feats, main, aux)
    with pytest.raises(ValueError, match=r"aux is required when num_aux = 4"):
        fitter.update(maha["train_feats"][:10], main)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*7"):
        fitter.update(maha["train_feats"][:10], main + 5, aux)
    with pytest.raises(ValueError, match=r"convention must be one of.*'cos'"):
        GaussianFitter(3, convention="cos")
    with pytest.raises(ValueError, match=r"feats must have shape \(n, D\)"):
        fitter.update(maha["train_feats"][0], main[:1], aux[:1])


def test_state_dict_round_trip_keeps_scores(maha, tmp_path):
    gs = fit_vectors(maha, "official")
    torch.save(gs.state_dict(), tmp_path / "gaussians.pt")
    state = torch.load(tmp_path / "gaussians.pt", weights_only=True)
    loaded = ClassGaussians.from_state_dict(state)
    assert (loaded.num_classes, loaded.num_aux, loaded.convention) == (
        3, 4, "official")
    assert_close(loaded.group_scores(maha["test_feats"]),
                 gs.group_scores(maha["test_feats"]), rtol=0, atol=0)


# ---------------------------------------------------------------------------
# SEI views and per-way scores (Eq. 15-16)

def test_sei_views_match_vectors():
    ref = np.load(DATA / "views.npz")
    img = torch.from_numpy(ref["img"]).permute(2, 0, 1)    # HWC -> CHW
    for ways in (4, 8):
        views = sei_views(img.unsqueeze(0), ways)[0]       # (M, 3, H, W)
        assert_array_equal(views.permute(0, 2, 3, 1).numpy(),
                           ref[f"views{ways}"])
        assert_array_equal(WAY_ROTATIONS[ways], ref[f"rot{ways}"])
    assert_array_equal(sei_views(img.unsqueeze(0), 1)[:, 0], img[None])


def test_sei_views_bad_inputs_raise():
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"one of \[1, 4, 8\], got 2"):
        sei_views(x, 2)
    with pytest.raises(ValueError, match=r"H == W, got \(2, 3, 4, 5\)"):
        sei_views(torch.zeros(2, 3, 4, 5), 4)


@pytest.mark.parametrize("convention", ["paper", "official"])
@pytest.mark.parametrize("ways", [4, 8])
def test_way_scores_match_pipeline_vectors(maha, sei, convention, ways):
    gs = fit_vectors(maha, convention)
    views = sei["pipe__test_views"]
    if ways == 4:
        views = views[:, ::2]                              # unflipped ways
    S = gs.way_scores(views, ways)
    assert_allclose(S.numpy(), sei[f"pipe{ways}__{convention}__S"], rtol=1e-7)
    for method in ("avg", "max", "w-avg"):
        key = f"pipe{ways}__{convention}__{SEI_KEYS[convention, method]}"
        pred, score = score_features(gs, views, ways, method, convention)
        assert_array_equal(pred.numpy(), sei[f"{key}__pred"])
        assert_allclose(score.numpy(), sei[f"{key}__score"], rtol=1e-7)


def test_way_scores_without_aux_use_one_gaussian_set(maha):
    rot0 = maha["train_aux"] == 0
    gs = GaussianFitter(3).update(maha["train_feats"][rot0],
                                  maha["train_main"][rot0]).finalize()
    views = torch.from_numpy(np.load(DATA / "sei.npz")["pipe__test_views"])
    S = gs.way_scores(views, 8)                            # (n, 8, 3)
    for m in range(8):
        assert_close(S[:, m], gs.group_scores(views[:, m]), rtol=1e-12,
                     atol=0)


def test_way_scores_bad_inputs_raise(maha):
    gs = fit_vectors(maha, "official")
    with pytest.raises(ValueError, match=r"shape \(n, 8, D\) for ways=8"):
        gs.way_scores(np.zeros((5, 4, 16)), 8)
    with pytest.raises(ValueError, match=r"D = 16 columns, got 15"):
        gs.way_scores(np.ones((5, 4, 15)), 4)
    two = ClassGaussians(gs.means[:6], gs.covs[:6], num_classes=3, num_aux=2)
    with pytest.raises(ValueError, match=r"needs 4 rotation sets.*num_aux = 2"):
        two.way_scores(np.ones((5, 4, 16)), 4)


# ---------------------------------------------------------------------------
# aggregation rules (Eq. 17-20, SPEC 7.3)

@pytest.mark.parametrize("case", ["fixed4", "fixed8", "ties4"])
@pytest.mark.parametrize("variant, method", list(SEI_KEYS))
def test_aggregation_matches_vectors(sei, case, variant, method):
    key = f"{case}__{SEI_KEYS[variant, method]}"
    pred, score = aggregate(sei[f"{case}__S"], method, variant=variant)
    assert pred.dtype == torch.int64 and score.dtype == torch.float64
    assert_array_equal(pred.numpy(), sei[f"{key}__pred"])
    assert_allclose(score.numpy(), sei[f"{key}__score"], rtol=1e-12)


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("case", ["fixed4", "fixed8", "ties4"])
def test_printed_eq19_is_available_in_both_variants(sei, case, variant):
    pred, score = aggregate(sei[f"{case}__S"], "w-avg-eq19", variant=variant)
    assert_array_equal(pred.numpy(), sei[f"{case}__wavg__pred"])
    assert_allclose(score.numpy(), sei[f"{case}__wavg__score"], rtol=1e-12)


def test_official_max_keeps_last_tie_unlike_paper(sei):
    S = sei["ties4__S"]
    official = aggregate(S, "max", variant="official").pred
    paper = aggregate(S, "max", variant="paper").pred
    assert (official != paper).any(), "ties4 must exercise the tie rules"
    # hand-made case: class 0 reaches the global maximum in way 0, class 2
    # in way 1; the released scan keeps the later one
    S_tie = torch.tensor([[[-1.0, -3.0, -2.0], [-4.0, -5.0, -1.0]]])
    assert aggregate(S_tie, "max", variant="official").pred.item() == 2
    assert aggregate(S_tie, "max", variant="paper").pred.item() == 0


def test_official_wa_is_per_class_harmonic_mean():
    S = torch.tensor([[[-1.0, -2.0], [-4.0, -2.0]]])       # (1, 2 ways, 2)
    pred, score = aggregate(S, "w-avg")
    # class 0: 2 / (1/1 + 1/4) = 1.6; class 1: 2 / (1/2 + 1/2) = 2
    assert pred.item() == 0
    assert score.item() == pytest.approx(-1.6, rel=1e-15)
    assert aggregate(S, "avg").score.item() == -4.0        # a sum


@pytest.mark.parametrize("convention", ["paper", "official"])
@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("method", AGGREGATIONS)
def test_one_way_sei_equals_plain_scoring(maha, convention, variant, method):
    gs = fit_vectors(maha, convention)
    views = maha["test_feats"][:, None]                    # (n, 1, D)
    pred, score = score_features(gs, views, 1, method, variant)
    assert_array_equal(pred.numpy(), maha[f"{convention}__pred_1way"])
    assert_allclose(score.numpy(), maha[f"{convention}__score_1way"],
                    rtol=1e-7)


def test_aggregate_bad_inputs_raise(sei):
    S = sei["fixed4__S"]
    with pytest.raises(ValueError, match=r"method must be one of.*'mean'"):
        aggregate(S, "mean")
    with pytest.raises(ValueError, match=r"variant must be one of.*'code'"):
        aggregate(S, "avg", variant="code")
    with pytest.raises(ValueError, match=r"shape \(n, M, C\).*\(200, 40\)"):
        aggregate(S.reshape(200, 40), "avg")
    with pytest.raises(ValueError, match=r"NaN"):
        aggregate(np.full((2, 4, 3), np.nan), "avg")


# ---------------------------------------------------------------------------
# post-hoc baselines

def linear_model(seed=0, dim=6, classes=3):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(classes, dim, generator=gen, dtype=torch.float64)
    bias = torch.randn(classes, generator=gen, dtype=torch.float64)
    return weight, bias


def test_msp_of_known_logits():
    logits = torch.tensor([[0.0, np.log(3.0)], [2.0, 2.0]])
    pred, score = msp_score(logits)
    assert_array_equal(pred.numpy(), [1, 0])
    assert_allclose(score.numpy(), [0.75, 0.5], rtol=1e-7)
    with pytest.raises(ValueError, match=r"shape \(N, C\), got \(4,\)"):
        msp_score(torch.zeros(4))


def test_odin_without_perturbation_is_tempered_msp():
    weight, bias = linear_model()
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    model_fn = lambda v: v @ weight.T + bias               # noqa: E731
    pred, score = odin_score(model_fn, x, temperature=10.0, epsilon=0.0)
    ref_pred, ref_score = msp_score(model_fn(x) / 10.0)
    assert_array_equal(pred.numpy(), ref_pred.numpy())
    assert_close(score, ref_score, rtol=1e-12, atol=0)


def test_odin_perturbation_matches_closed_form():
    weight, bias = linear_model()
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64)
    tau, eps = 5.0, 0.01
    pred, score = odin_score(lambda v: v @ weight.T + bias, x,
                             temperature=tau, epsilon=eps)

    # numpy: d(-log p_y)/dx = W^T (p - onehot(y)) / tau for a linear model
    W, b, X = weight.numpy(), bias.numpy(), x.numpy()
    logits = X @ W.T + b
    y = logits.argmax(1)
    p = np.exp(logits / tau - (logits / tau).max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(3)[y]) @ W / tau
    logits_adv = (X - eps * np.sign(grad)) @ W.T + b
    q = np.exp(logits_adv / tau - (logits_adv / tau).max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    assert_array_equal(pred.numpy(), y)
    assert_allclose(score.numpy(), q.max(1), rtol=1e-12)
    # the step raises the tempered confidence of the predicted class
    assert (score.numpy() >= p.max(1) - 1e-15).all()


def lee_data(seed=3, n=300, dim=5, classes=3):
    gen = np.random.default_rng(seed)
    y = gen.integers(0, classes, n)
    h = gen.normal(size=(n, dim)) @ gen.normal(size=(dim, dim))
    return h + 3.0 * y[:, None], y


def test_lee_mahalanobis_matches_numpy():
    h, y = lee_data()
    test = lee_data(seed=4, n=40)[0]
    det = LeeMahalanobis(3).fit(h, y)

    means = np.stack([h[y == c].mean(0) for c in range(3)])
    centred = h - means[y]
    precision = np.linalg.pinv(centred.T @ centred / len(h))
    diff = test[:, None] - means                          # (n, C, F)
    d2 = np.einsum("ncf,fg,ncg->nc", diff, precision, diff)
    pred, score = det.score(test)
    assert_allclose(det.means.numpy(), means, rtol=1e-12)
    assert_allclose(det.precision.numpy(), precision, rtol=1e-9, atol=1e-12)
    assert_array_equal(pred.numpy(), d2.argmin(1))
    assert_allclose(score.numpy(), -d2.min(1), rtol=1e-9)

    streamed = LeeMahalanobis(3)
    for lo in range(0, 300, 70):
        streamed.update(h[lo:lo + 70], y[lo:lo + 70])
    assert_close(streamed.finalize().score(test).score, score, rtol=1e-12,
                 atol=0)


def test_lee_input_preprocessing_matches_closed_form():
    h, y = lee_data()
    det = LeeMahalanobis(3).fit(h, y)
    gen = torch.Generator().manual_seed(5)
    A = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    x = torch.randn(10, 7, generator=gen, dtype=torch.float64)
    feature_fn = lambda v: v @ A.T                         # noqa: E731

    plain = det.score_inputs(feature_fn, x, epsilon=0.0)
    assert_close(plain.score, det.score(feature_fn(x)).score, rtol=1e-12,
                 atol=0)

    # numpy: grad_x d2_c = 2 A^T P (A x - mu_c) for a linear feature map
    eps = 0.01
    P, mu, X, An = (det.precision.numpy(), det.means.numpy(), x.numpy(),
                    A.numpy())
    c = plain.pred.numpy()
    grad = 2 * (X @ An.T - mu[c]) @ P @ An
    diff = (X - eps * np.sign(grad)) @ An.T
    d2 = np.einsum("ncf,fg,ncg->nc", diff[:, None] - mu, P,
                   diff[:, None] - mu)
    moved = det.score_inputs(feature_fn, x, epsilon=eps)
    assert_array_equal(moved.pred.numpy(), c)
    assert_allclose(moved.score.numpy(), -d2.min(1), rtol=1e-9)
    assert (moved.score >= plain.score).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_and_sei_match_cpu(maha, sei):
    feats = torch.from_numpy(maha["train_feats"]).cuda()
    fitter = GaussianFitter(3, 4).update(
        feats, maha["train_main"], maha["train_aux"])
    gs = fitter.finalize()
    assert gs.device.type == "cuda"
    views = torch.from_numpy(sei["pipe__test_views"]).cuda()
    pred, score = score_features(gs, views, 8, "w-avg")
    assert_array_equal(pred.cpu().numpy(), sei["pipe8__official__wa__pred"])
    assert_allclose(score.cpu().numpy(), sei["pipe8__official__wa__score"],
                    rtol=1e-7)
