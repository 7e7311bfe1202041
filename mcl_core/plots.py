"""Figures of the companion: every function takes arrays, returns a Figure.

Notebooks decide where a figure goes (``save_figure`` writes PNG + PDF and
a JSON sidecar atomically). ``set_theme`` fixes one seaborn theme and the
colour-blind-safe palette for every figure. Figure numbers refer to the
paper: Figure 1 (t-SNE of projections), Figure 4 (failure cases), Figure 5
(score distributions). The walkthrough figures illustrate Eq. 3-11 (masks)
and Eq. 15-20 (SEI).

Score convention: higher = more in-distribution (Eq. 14), so ROC curves
take the in-distribution set as the positive class.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import seaborn as sns
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from sklearn.metrics import roc_auc_score, roc_curve

from mcl_core.tables import write_sidecar

log = logging.getLogger(__name__)

PALETTE = "colorblind"  # seaborn's colour-blind-safe qualitative palette

# walkthrough mask regions, in the order of REGION_NAMES
REGION_NAMES = ("self (excluded)", "partner view", "alpha: same class and "
                "rotation", "beta: same class, other rotation",
                "1/tau: other class")


def set_theme() -> list[tuple[float, float, float]]:
    """Apply the companion's seaborn theme; returns the palette colours."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE,
                  rc={"figure.dpi": 100, "savefig.dpi": 150,
                      "axes.titlesize": "medium", "legend.fontsize": "small"})
    return sns.color_palette(PALETTE)


def _figure(nrows: int, ncols: int, figsize: tuple[float, float],
            **kwargs: Any) -> tuple[Figure, np.ndarray]:
    # a pyplot-free Figure: nothing is shown unless the caller displays it
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def class_colours(num: int) -> list[tuple[float, float, float]]:
    """num distinct colours: the palette, extended with husl past ten."""
    base = sns.color_palette(PALETTE)
    if num <= len(base):
        return base[:num]
    return sns.color_palette("husl", num)


def save_figure(
    fig: Figure,
    path: Path | str,
    *,
    profile: str,
    parameters: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write <path>.png, <path>.pdf and <path>.json (atomic, no timestamp)."""
    stem = Path(path).with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in ("png", "pdf"):
        final = stem.with_suffix(f".{fmt}")
        fd, tmp = tempfile.mkstemp(dir=stem.parent, prefix=f".{final.name}.",
                                   suffix=".tmp")
        os.close(fd)
        try:
            fig.savefig(tmp, format=fmt, bbox_inches="tight",
                        metadata={"CreationDate": None} if fmt == "pdf"
                        else None)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(final)
    written.append(write_sidecar(stem.with_suffix(".json"), profile=profile,
                                 parameters=parameters, files=written,
                                 extra=extra))
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return written


def _to_hwc(img: np.ndarray) -> np.ndarray:
    """(3, H, W) uint8 or float in [0, 1] -> (H, W, 3) float for imshow."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    return np.clip(np.transpose(img, (1, 2, 0)), 0.0, 1.0)


# ------------------------------------------------------------- Figure 1


def tsne_embedding(z: np.ndarray, *, seed: int = 0,
                   perplexity: float = 30.0) -> np.ndarray:
    """2-d openTSNE embedding of projections z (n, D) with a fixed seed."""
    from openTSNE import TSNE

    z = np.asarray(z, dtype=np.float64)
    if len(z) < 5:
        raise ValueError(f"z must hold at least 5 points, got {len(z)}")
    # openTSNE needs 3 * perplexity < n
    perp = float(min(perplexity, max(2.0, (len(z) - 1) / 3.0 - 1.0)))
    tsne = TSNE(n_components=2, perplexity=perp, random_state=seed,
                n_jobs=1, verbose=False)
    return np.asarray(tsne.fit(z))


def tsne_panels(
    embeddings: Mapping[str, np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Figure 1: one scatter panel per method, points coloured by class."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    colours = class_colours(len(classes))
    names = class_names or [str(c) for c in classes]
    n = len(embeddings)
    fig, axes = _figure(1, n, figsize=(3.2 * n, 3.4))
    for ax, (title, emb) in zip(axes[0], embeddings.items()):
        for colour, c in zip(colours, classes):
            sel = labels == c
            ax.scatter(emb[sel, 0], emb[sel, 1], s=4, color=colour,
                       label=names[int(c)] if int(c) < len(names) else str(c),
                       rasterized=True)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5),
                       markerscale=3, frameon=False, title="class")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------- Figure 5


def score_histograms(
    ind_correct: np.ndarray,
    ind_wrong: np.ndarray,
    ood: Mapping[str, np.ndarray],
) -> Figure:
    """Figure 5: IND-score densities of right/wrong IND and OOD, per OOD set."""
    colours = sns.color_palette(PALETTE, 3)
    n = len(ood)
    fig, axes = _figure(1, n, figsize=(4.4 * n, 3.4))
    groups = [("IND, correct", np.asarray(ind_correct), colours[0]),
              ("IND, wrong", np.asarray(ind_wrong), colours[1])]
    for ax, (name, scores) in zip(axes[0], ood.items()):
        allv = np.concatenate([g[1] for g in groups] + [np.asarray(scores)])
        bins = np.histogram_bin_edges(allv, bins=30)
        for label, vals, colour in groups + [(f"OOD: {name}",
                                              np.asarray(scores),
                                              colours[2])]:
            if len(vals) == 0:
                continue
            # a density curve needs two distinct values
            kde = len(vals) > 1 and float(np.std(vals)) > 0
            sns.histplot(vals, bins=bins, stat="density", kde=kde, ax=ax,
                         color=colour, alpha=0.35, label=f"{label} "
                         f"(n={len(vals)})", element="step")
        ax.set_title(f"OOD set: {name}")
        ax.set_xlabel("IND score (higher = more in-distribution)")
        ax.legend(frameon=False, fontsize="x-small", loc="upper left")
    fig.tight_layout()
    return fig


def roc_curves(ind_scores: np.ndarray, ood: Mapping[str, np.ndarray]) -> Figure:
    """ROC curve per OOD set, in-distribution as the positive class."""
    fig, axes = _figure(1, 1, figsize=(4.2, 4.0))
    ax = axes[0, 0]
    ind_scores = np.asarray(ind_scores)
    for (name, scores), colour in zip(ood.items(),
                                      class_colours(len(ood))):
        y = np.r_[np.ones(len(ind_scores)), np.zeros(len(scores))]
        s = np.r_[ind_scores, np.asarray(scores)]
        fpr, tpr, _ = roc_curve(y, s)
        auc = roc_auc_score(y, s)
        ax.plot(fpr, tpr, color=colour, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate (OOD accepted)")
    ax.set_ylabel("true positive rate (IND accepted)")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", frameon=False)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------- Figure 4


def nearest_neighbours(query: np.ndarray, reference: np.ndarray,
                       k: int = 3) -> np.ndarray:
    """Indices (n, k) of the k most cosine-similar reference rows."""
    q = np.asarray(query, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    sim = q @ r.T  # (n, M)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def failure_grid(
    images: np.ndarray,
    titles: Sequence[str],
    neighbours: np.ndarray,
    neighbour_titles: Sequence[Sequence[str]],
    *,
    suptitle: str | None = None,
) -> Figure:
    """Figure 4: one row per query image, followed by its neighbours.

    images (K, 3, H, W); neighbours (K, k, 3, H, W); uint8 or float.
    """
    num, k = neighbours.shape[:2]
    fig, axes = _figure(num, 1 + k,
                        figsize=(1.6 * (1 + k) + 0.4, 1.75 * num))
    for i in range(num):
        axes[i, 0].imshow(_to_hwc(images[i]), interpolation="nearest")
        axes[i, 0].set_title(titles[i], fontsize="x-small")
        for j in range(k):
            axes[i, 1 + j].imshow(_to_hwc(neighbours[i, j]),
                                  interpolation="nearest")
            axes[i, 1 + j].set_title(neighbour_titles[i][j],
                                     fontsize="x-small")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    for ax in axes[:, 0]:
        for side in ax.spines.values():
            side.set_edgecolor("black")
            side.set_linewidth(2)
    if suptitle:
        fig.suptitle(suptitle, fontsize="medium")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------- walkthrough


def mask_heatmap(regions: np.ndarray, coefficients: Mapping[int, str],
                 tick_labels: Sequence[str] | None = None) -> Figure:
    """Heatmap of a (2N, 2N) region-code matrix (codes as in REGION_NAMES).

    ``coefficients`` maps a region code to the coefficient text shown in the
    legend (e.g. ``{2: "0.05"}``).
    """
    colours = ["#ffffff"] + list(sns.color_palette(PALETTE, 4))
    cmap = ListedColormap(colours)
    size = 0.28 * len(regions) + 2.5
    fig, axes = _figure(1, 1, figsize=(size + 2.5, size))
    ax = axes[0, 0]
    ax.imshow(regions, cmap=cmap, vmin=-0.5, vmax=4.5,
              interpolation="nearest")
    _view_axes(ax, tick_labels)
    ax.set_xlabel("view k (denominator term)")
    ax.set_ylabel("anchor view i")
    handles = [
        Patch(facecolor=colours[c], edgecolor="grey",
              label=f"{REGION_NAMES[c]}: {coefficients.get(c, '-')}")
        for c in range(len(REGION_NAMES)) if (regions == c).any()
    ]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5),
              frameon=False)
    fig.tight_layout()
    return fig


def _view_axes(ax, tick_labels: Sequence[str] | None) -> None:
    """Label both axes of a (2N, 2N) view-pair heatmap, without a grid."""
    if tick_labels is not None:
        ticks = np.arange(len(tick_labels))
        ax.set_xticks(ticks, tick_labels, rotation=90, fontsize="x-small")
        ax.set_yticks(ticks, tick_labels, fontsize="x-small")
    ax.grid(False)


def positives_heatmap(candidates: np.ndarray, drawn: np.ndarray | None = None,
                      tick_labels: Sequence[str] | None = None) -> Figure:
    """SPA positives (Eq. 7): candidate set B_i+ and, if given, drawn j_i."""
    side = 0.28 * len(candidates)
    fig, axes = _figure(1, 1, figsize=(side + 3, side + 2.5))
    ax = axes[0, 0]
    blue = sns.color_palette(PALETTE)[0]
    ax.imshow(candidates.astype(float), cmap=ListedColormap(["white", blue]),
              vmin=0, vmax=1, interpolation="nearest")
    if drawn is not None:
        rows = np.flatnonzero(drawn >= 0)
        ax.scatter(drawn[rows], rows, marker="x", color="black", s=30,
                   label="drawn positive j_i")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12),
                  frameon=False)
    _view_axes(ax, tick_labels)
    ax.set_xlabel("candidate view k")
    ax.set_ylabel("anchor view i")
    fig.tight_layout()
    return fig


def image_row(images: np.ndarray, titles: Sequence[str]) -> Figure:
    """One row of images (M, 3, H, W), e.g. the SEI views of one image."""
    m = len(images)
    fig, axes = _figure(1, m, figsize=(1.4 * m, 1.7))
    for ax, img, title in zip(axes[0], images, titles):
        ax.imshow(_to_hwc(img), interpolation="nearest")
        ax.set_title(title, fontsize="x-small")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    fig.tight_layout()
    return fig


def way_scores_heatmap(
    scores: np.ndarray,
    picks: Mapping[str, int],
    way_labels: Sequence[str],
    class_names: Sequence[str],
) -> Figure:
    """Per-way class scores S (M, C) of one image and each rule's label."""
    num_ways, num_classes = scores.shape
    fig, axes = _figure(1, 1, figsize=(1.1 * num_classes + 3.5,
                                       0.45 * num_ways + 1.8))
    ax = axes[0, 0]
    sns.heatmap(scores, annot=True, fmt=".1f", cmap="viridis", ax=ax,
                xticklabels=class_names, yticklabels=way_labels,
                cbar_kws={"label": "S (higher = closer)"})
    ax.set_xlabel("class i")
    ax.set_ylabel("way m")
    ax.set_title("picked class: " + ", ".join(
        f"{name} {class_names[pick]}" for name, pick in picks.items()),
        fontsize="small")
    fig.tight_layout()
    return fig
