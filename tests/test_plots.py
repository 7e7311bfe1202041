"""Figure builders: each returns a Figure with the expected panels."""

import json

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from mcl_core import plots, walkthrough

RNG = np.random.default_rng(0)


def _images(n, size=8):
    return RNG.integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def _panels(fig):
    # colour bars are axes too; count image/plot panels only
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_tsne_panels_one_axes_per_method():
    emb = {name: RNG.normal(size=(30, 2)) for name in "ABCD"}
    labels = np.repeat(np.arange(3), 10)
    fig = plots.tsne_panels(emb, labels, ["x", "y", "z"])
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == list("ABCD")
    assert len(fig.axes[0].collections) == 3  # one scatter per class


def test_tsne_embedding_is_seeded():
    z = RNG.normal(size=(40, 5))
    a = plots.tsne_embedding(z, seed=3, perplexity=30)
    b = plots.tsne_embedding(z, seed=3, perplexity=30)
    assert a.shape == (40, 2)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="at least 5"):
        plots.tsne_embedding(z[:3])


def test_score_histograms_and_roc():
    ood = {"noise": RNG.normal(-3, 1, 50), "photos": RNG.normal(-1, 1, 50)}
    fig = plots.score_histograms(RNG.normal(0, 1, 80), np.array([0.5]), ood)
    assert len(fig.axes) == 2
    assert fig.axes[0].get_title() == "OOD set: noise"
    fig = plots.roc_curves(np.array([2.0, 3.0]), {"a": np.array([0.0, 1.0]),
                                                  "b": np.array([2.5, 5.0])})
    assert len(fig.axes) == 1
    labels = [line.get_label() for line in fig.axes[0].lines]
    # separated scores give AUROC 1; b wins 3 of the 4 pairs: 0.25
    assert labels[:2] == ["a (AUROC 1.000)", "b (AUROC 0.250)"]


def test_failure_grid_shape_and_neighbours():
    fig = plots.failure_grid(_images(3), ["q0", "q1", "q2"],
                             _images(6).reshape(3, 2, 3, 8, 8),
                             [["n", "n"]] * 3, suptitle="t")
    assert len(fig.axes) == 9
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    idx = plots.nearest_neighbours(np.array([[1.0, 0.1], [0.0, 2.0]]), ref,
                                   k=2)
    np.testing.assert_array_equal(idx, [[0, 2], [1, 2]])


def test_walkthrough_figures():
    y = torch.tensor([0, 0, 1, 1])
    aux = torch.tensor([0, 1, 0, 0])
    regions = walkthrough.mask_regions(y, aux)
    fig = plots.mask_heatmap(regions, walkthrough.region_coefficients())
    assert len(fig.axes) == 1
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "alpha: same class and rotation: 0.05" in legend
    fig = plots.positives_heatmap(walkthrough.spa_candidates(y, aux),
                                  walkthrough.spa_targets(y, aux))
    assert len(fig.axes) == 1
    fig = plots.image_row(_images(8), [str(i) for i in range(8)])
    assert len(fig.axes) == 8
    fig = plots.way_scores_heatmap(-RNG.random((8, 3)), {"avg": 1},
                                   [str(i) for i in range(8)], list("abc"))
    assert len(_panels(fig)) == 1 and len(fig.axes) == 2


def test_mask_regions_follow_eq11_layout():
    # entries: (class 0, rot 0), (0, 1), (1, 0), (1, 0); views 2e, 2e+1
    regions = walkthrough.mask_regions(torch.tensor([0, 0, 1, 1]),
                                       torch.tensor([0, 1, 0, 0]))
    w = walkthrough
    assert regions[0, 0] == w.SELF and regions[0, 1] == w.PARTNER
    assert regions[0, 2] == w.BETA  # same class, other rotation
    assert regions[4, 6] == w.ALPHA  # same class and rotation
    assert regions[0, 4] == w.OTHER
    np.testing.assert_array_equal(regions, regions.T)


def test_save_figure_writes_png_pdf_and_sidecar(tmp_path):
    fig = plots.image_row(_images(2), ["a", "b"])
    paths = plots.save_figure(fig, tmp_path / "sub" / "figure9",
                              profile="smoke", parameters={"seed": 0})
    assert [p.name for p in paths] == ["figure9.png", "figure9.pdf",
                                       "figure9.json"]
    assert all(p.stat().st_size > 0 for p in paths)
    meta = json.loads(paths[2].read_text())
    assert meta["profile"] == "smoke" and meta["parameters"] == {"seed": 0}
    assert meta["files"] == ["figure9.png", "figure9.pdf"]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [
        "figure9.json", "figure9.pdf", "figure9.png"]


def test_most_disputed_finds_the_image_rules_disagree_on():
    # image 0: class 0 closest in both ways, every rule picks it; image 1:
    # max takes the single closest pair (class 0), avg the sum (class 1)
    S = torch.tensor([[[-1.0, -5.0], [-1.0, -5.0]],
                      [[-1.0, -5.0], [-10.0, -2.0]]])  # (n, M, C)
    assert walkthrough.most_disputed(S) == 1
    assert walkthrough.most_disputed(S[:1]) == 0
