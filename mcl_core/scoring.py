"""Class-conditional Mahalanobis scoring, self-ensemble inference, baselines.

Implements Eq. 12-14 (one Gaussian per class, or per class and rotation) and
self-ensemble inference, SEI (Eq. 15-20), of Cho, Seol and Lee, "Masked
Contrastive Learning for Anomaly Detection" (IJCAI 2021), in two flavours:

* ``convention="official"`` / ``variant="official"`` (the default) follows the
  released code: L2-normalised projections, covariance + 1e-9 I, the square
  root of the quadratic form, and the aggregation rules 'mean', 'min' and 'wa'
  (SPEC sections 7.3, 9.4, 9.5);
* ``"paper"`` reads the equations literally: raw projections, no regulariser,
  squared distances, Eq. 17, 18 and 19-20.

Also holds three post-hoc baselines: maximum softmax probability (Hendrycks &
Gimpel 2017), ODIN (Liang et al. 2018) and the tied-covariance Mahalanobis
detector of Lee et al. (2018).

Dimension letters: N test images, M SEI ways per image (1, 4 or 8), C known
classes, A auxiliary transformations (rotations), G = C * A Gaussians, D
feature dimension, F encoder feature dimension.

Sign convention: every ``score`` returned here is higher = more
in-distribution (the paper's IND score, Eq. 14). Functions that work on
distances say so. The Gaussian of (class i, rotation j) has index
``g = j * C + i``.
"""

from __future__ import annotations

import logging
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

# rotation index (Gaussian set) used by each SEI way, SPEC section 7.1
WAY_ROTATIONS: dict[int, tuple[int, ...]] = {
    1: (0,),
    4: (0, 1, 2, 3),
    8: (0, 0, 1, 1, 2, 2, 3, 3),
}
AGGREGATIONS = ("avg", "max", "w-avg", "w-avg-eq19")
CONVENTIONS = ("official", "paper")
VARIANTS = ("official", "paper")

# regulariser added to every covariance by the released code (SPEC 9.4)
OFFICIAL_REG = 1e-9
# test features per scoring block and width of the whitening column blocks
_ROW_BLOCK = 1024
_TRI_STEP = 32


class Prediction(NamedTuple):
    """Predicted class and IND score per image; unpacks as (pred, score)."""

    pred: Tensor   # (N,) int64
    score: Tensor  # (N,) float64, higher = more in-distribution


# ---------------------------------------------------------------------------
# input helpers

def _as_tensor(x, name: str, dtype=None) -> Tensor:
    """Return ``x`` as a tensor (numpy arrays and lists are accepted)."""
    if isinstance(x, Tensor):
        return x if dtype is None else x.to(dtype)
    try:
        return torch.as_tensor(np.asarray(x), dtype=dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{name} must be a tensor or array, got {type(x).__name__}"
        ) from err


def _check_ways(ways: int) -> tuple[int, ...]:
    if ways not in WAY_ROTATIONS:
        raise ValueError(
            f"ways must be one of {sorted(WAY_ROTATIONS)}, got {ways!r}"
        )
    return WAY_ROTATIONS[ways]


def _check_finite(x: Tensor, name: str) -> None:
    # one cheap reduction first: NaN and inf survive a sum
    if torch.isfinite(x.sum()):
        return
    bad = ~torch.isfinite(x)
    if bad.any():
        rows = bad.reshape(len(x), -1).any(dim=1).sum().item()
        kind = "NaN" if torch.isnan(x).any() else "infinite"
        raise ValueError(
            f"{name} holds {kind} values in {rows} of {len(x)} rows; "
            "only finite features are accepted"
        )


def _check_labels(y, n: int, high: int, name: str, device) -> Tensor:
    y = _as_tensor(y, name)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(
            f"{name} must have shape ({n},), got {tuple(y.shape)}"
        )
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{name} must be integers, got dtype {y.dtype}")
    y = y.to(device=device, dtype=torch.int64)
    if n and (y.min() < 0 or y.max() >= high):
        raise ValueError(
            f"{name} must lie in [0, {high}), got values in "
            f"[{y.min().item()}, {y.max().item()}]"
        )
    return y


def _first_index(mask: Tensor, dim: int) -> Tensor:
    """Index of the first True along ``dim`` (numpy ``argmax`` tie rule)."""
    size = mask.shape[dim]
    shape = [1] * mask.ndim
    shape[dim] = size
    idx = torch.arange(size, device=mask.device).view(shape)
    return torch.where(mask, idx, size).amin(dim=dim)


def _last_index(mask: Tensor, dim: int) -> Tensor:
    """Index of the last True along ``dim``."""
    size = mask.shape[dim]
    shape = [1] * mask.ndim
    shape[dim] = size
    idx = torch.arange(size, device=mask.device).view(shape)
    return torch.where(mask, idx, -1).amax(dim=dim)


# ---------------------------------------------------------------------------
# SEI views (SPEC 7.1)

def sei_views(x: Tensor, ways: int) -> Tensor:
    """Stack the SEI test-time views of each image (SPEC 7.1, Eq. 15).

    Way m of 4-way is ``rot90^m(x)``; 8-way interleaves each rotation of
    ``x`` with the same rotation of its horizontal mirror,
    ``[x, fl x, rot(x), rot(fl x), ...]`` (mirror first, then rotate).
    Rotations are counter-clockwise, ``torch.rot90(x, k, dims=(-2, -1))``,
    the CHW equivalent of ``numpy.rot90`` on HWC images.

    Args:
        x: images (N, 3, H, W) with H == W.
        ways: 1, 4 or 8.

    Returns:
        (N, M, 3, H, W) with M = ways; way m uses Gaussian set
        ``WAY_ROTATIONS[ways][m]``.
    """
    _check_ways(ways)
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"x must have shape (N, C, H, W) with H == W, got {tuple(x.shape)}"
        )
    if ways == 1:
        return x.unsqueeze(1)                              # (N, 1, 3, H, W)

    # one image per rotation, optionally followed by its mirrored copy
    sources = [x] if ways == 4 else [x, x.flip(-1)]
    views = [
        torch.rot90(src, k, dims=(-2, -1))
        for k in range(4)
        for src in sources
    ]
    return torch.stack(views, dim=1)                       # (N, M, 3, H, W)


# ---------------------------------------------------------------------------
# Gaussians (Eq. 12-14, SPEC 6 and 9.4)

class _GroupMoments:
    """Streaming per-group count, sum and scatter in float64.

    Each group's samples are shifted by a reference point (the mean of the
    group's samples in the first batch that holds any) before the sums are
    taken; this keeps ``S2 - S1 S1^T / n`` free of the cancellation that raw
    sums of outer products suffer when the mean is large relative to the
    spread (as for L2-normalised features).
    """

    def __init__(self, num_groups: int) -> None:
        self.num_groups = num_groups
        self.count: Tensor | None = None   # (G,) int64
        self.shift: Tensor | None = None   # (G, D)
        self.sum1: Tensor | None = None    # (G, D)   sum of shifted x
        self.sum2: Tensor | None = None    # (G, D, D) sum of shifted x x^T

    def update(self, x: Tensor, g: Tensor) -> None:
        """Add float64 rows ``x`` (n, D) belonging to groups ``g`` (n,)."""
        G, D = self.num_groups, x.shape[1]
        if self.count is None:
            kw = dict(dtype=torch.float64, device=x.device)
            self.count = torch.zeros(G, dtype=torch.int64, device=x.device)
            self.shift = torch.zeros(G, D, **kw)
            self.sum1 = torch.zeros(G, D, **kw)
            self.sum2 = torch.zeros(G, D, D, **kw)
        elif x.shape[1] != self.sum1.shape[1]:
            raise ValueError(
                f"feats must have {self.sum1.shape[1]} columns as in earlier "
                f"batches, got {x.shape[1]}"
            )
        x, g = x.to(self.sum1.device), g.to(self.sum1.device)
        batch_count = torch.bincount(g, minlength=G)                # (G,)

        # groups seen for the first time take this batch's mean as shift
        new = (self.count == 0) & (batch_count > 0)
        if new.any():
            batch_sum = torch.zeros_like(self.sum1).index_add_(0, g, x)
            mean = batch_sum / batch_count.clamp(min=1).unsqueeze(1)
            self.shift[new] = mean[new]

        xs = x - self.shift[g]                                      # (n, D)
        self.sum1.index_add_(0, g, xs)

        # scatter of all groups present in one batched product: rows sorted
        # by group and zero-padded to (P, k_max, D); no loop over samples
        present = torch.nonzero(batch_count).flatten()              # (P,)
        slot = torch.full((G,), -1, dtype=torch.int64, device=g.device)
        slot[present] = torch.arange(len(present), device=g.device)
        g_sorted, order = torch.sort(g, stable=True)
        starts = torch.cumsum(batch_count, 0) - batch_count         # (G,)
        pos = torch.arange(len(g), device=g.device) - starts[g_sorted]
        k_max = int(batch_count.max())
        if len(present) * k_max <= 4 * len(g):
            padded = xs.new_zeros(len(present), k_max, D)          # (P, k, D)
            padded[slot[g_sorted], pos] = xs[order]
            self.sum2[present] += torch.bmm(padded.transpose(1, 2), padded)
        else:
            # very uneven batch: one product per group present is cheaper
            xs, ends = xs[order], torch.cumsum(batch_count, 0).tolist()
            for group in present.tolist():
                block = xs[ends[group] - int(batch_count[group]):ends[group]]
                self.sum2[group] += block.T @ block
        self.count += batch_count

    def mean_and_scatter(self) -> tuple[Tensor, Tensor]:
        """Return per-group means (G, D) and centred scatter (G, D, D)."""
        n = self.count.to(torch.float64).clamp(min=1)               # (G,)
        mean_shifted = self.sum1 / n.unsqueeze(1)                   # (G, D)
        scatter = self.sum2 - n.view(-1, 1, 1) * (
            mean_shifted.unsqueeze(2) * mean_shifted.unsqueeze(1)
        )                                                           # (G, D, D)
        scatter = 0.5 * (scatter + scatter.transpose(1, 2))
        return self.shift + mean_shifted, scatter


def _prepare_feats(feats, convention: str, name: str = "feats") -> Tensor:
    """Validate features (n, D), cast to float64, L2-normalise if official."""
    x = _as_tensor(feats, name)
    if x.ndim != 2:
        raise ValueError(
            f"{name} must have shape (n, D), got {tuple(x.shape)}"
        )
    x = x.to(torch.float64)
    _check_finite(x, name)
    if convention == "official":
        x = F.normalize(x, dim=1, eps=1e-12)
    return x


class GaussianFitter:
    """Streaming fit of one Gaussian per (class, rotation) group (Eq. 12).

    Sums are accumulated in float64 per group, so the training features never
    have to sit in memory together; call ``update`` once per batch, then
    ``finalize``. Group of (class i, aux j) is ``g = j * num_classes + i``.

    Args:
        num_classes: C, number of known classes.
        num_aux: A, number of auxiliary labels (rotations); 1 for a model
            trained without the rotation task.
        convention: "official" L2-normalises features (SPEC 9.4); "paper"
            keeps the raw projections (SPEC 6, [A6]).
        reg: added to every covariance diagonal; default 1e-9 for official
            and 0 for paper.

    Every group needs at least 2 samples (unbiased covariance). A group with
    at most D samples has a singular sample covariance: with ``reg = 0`` it
    cannot be inverted and ``finalize`` raises; with ``reg > 0`` it is kept,
    as in the released code, and a warning is logged.
    """

    def __init__(
        self,
        num_classes: int,
        num_aux: int = 1,
        *,
        convention: str = "official",
        reg: float | None = None,
    ) -> None:
        if convention not in CONVENTIONS:
            raise ValueError(
                f"convention must be one of {CONVENTIONS}, got {convention!r}"
            )
        if num_classes < 1 or num_aux < 1:
            raise ValueError(
                "num_classes and num_aux must be >= 1, got "
                f"{num_classes} and {num_aux}"
            )
        if reg is None:
            reg = OFFICIAL_REG if convention == "official" else 0.0
        if not reg >= 0:
            raise ValueError(f"reg must be >= 0, got {reg!r}")
        self.num_classes = num_classes
        self.num_aux = num_aux
        self.convention = convention
        self.reg = float(reg)
        self._moments = _GroupMoments(num_classes * num_aux)

    def update(self, feats, labels, aux=None) -> "GaussianFitter":
        """Add feats (n, D) with labels (n,) in [0, C) and aux (n,) in [0, A)."""
        x = _prepare_feats(feats, self.convention)
        n = len(x)
        y = _check_labels(labels, n, self.num_classes, "labels", x.device)
        if aux is None:
            if self.num_aux != 1:
                raise ValueError(
                    f"aux is required when num_aux = {self.num_aux}, got None"
                )
            a = torch.zeros_like(y)
        else:
            a = _check_labels(aux, n, self.num_aux, "aux", x.device)
        if n:
            self._moments.update(x, a * self.num_classes + y)
        return self

    def finalize(self) -> "ClassGaussians":
        """Return the fitted Gaussians (unbiased covariance + reg I)."""
        m = self._moments
        if m.count is None:
            raise ValueError("no features were given to update()")
        C = self.num_classes
        for g, k in enumerate(m.count.tolist()):
            if k < 2:
                raise ValueError(
                    f"Gaussian of class {g % C}, aux {g // C} has {k} "
                    "sample(s); at least 2 are needed"
                )
        means, scatter = m.mean_and_scatter()
        dim = means.shape[1]
        few = (m.count <= dim).nonzero().flatten().tolist()
        if few and self.reg > 0:
            log.warning(
                "%d Gaussian(s) have at most D = %d samples (first: class "
                "%d, aux %d, %d samples); their covariance is singular and "
                "is kept only by reg = %g",
                len(few), dim, few[0] % C, few[0] // C,
                int(m.count[few[0]]), self.reg,
            )
        n = m.count.to(torch.float64).view(-1, 1, 1)
        eye = torch.eye(dim, dtype=torch.float64, device=means.device)
        covs = scatter / (n - 1) + self.reg * eye                  # (G, D, D)
        return ClassGaussians(
            means, covs, num_classes=C, num_aux=self.num_aux,
            convention=self.convention, reg=self.reg, counts=m.count,
        )


class ClassGaussians:
    """Fitted class-conditional Gaussians and their scores (Eq. 12-16).

    Attributes: ``means`` (G, D), ``covs`` (G, D, D), ``precisions``
    (G, D, D) = inverse covariances, ``counts`` (G,), ``num_classes``,
    ``num_aux``, ``convention``, ``reg``. All float64, on one device.

    Scoring uses whitening factors ``W_g = L_g^{-T}`` with ``L_g`` the
    Cholesky factor of the covariance, so ``d2 = ||(z - mu_g) W_g||^2`` and
    the scores of all Gaussians come from matrix products over blocks of
    test features. Inputs are moved to the Gaussians' device and results
    are returned there.

    # NOTE: everything is float64 (covariances of L2-normalised features
    # are nearly singular), so a device without float64 (Apple MPS) cannot
    # hold the Gaussians; fit and score on CPU or CUDA.
    """

    def __init__(
        self,
        means: Tensor,
        covs: Tensor,
        *,
        num_classes: int,
        num_aux: int = 1,
        convention: str = "official",
        reg: float = 0.0,
        counts: Tensor | None = None,
    ) -> None:
        G, D = means.shape
        if G != num_classes * num_aux or covs.shape != (G, D, D):
            raise ValueError(
                f"expected means (G, D) and covs (G, D, D) with G = "
                f"{num_classes} x {num_aux}, got {tuple(means.shape)} and "
                f"{tuple(covs.shape)}"
            )
        if convention not in CONVENTIONS:
            raise ValueError(
                f"convention must be one of {CONVENTIONS}, got {convention!r}"
            )
        self.means = means.to(torch.float64)
        self.covs = covs.to(torch.float64)
        self.num_classes = num_classes
        self.num_aux = num_aux
        self.convention = convention
        self.reg = float(reg)
        self.counts = (
            torch.zeros(G, dtype=torch.int64) if counts is None
            else counts.to("cpu", torch.int64)
        )
        self._factorise()

    def _factorise(self) -> None:
        chol, info = torch.linalg.cholesky_ex(self.covs)           # (G, D, D)
        bad = torch.nonzero(info).flatten().tolist()
        if bad:
            C, g = self.num_classes, bad[0]
            raise ValueError(
                f"covariance of class {g % C}, aux {g // C} "
                f"({self.counts[g].item()} samples, reg {self.reg:g}) is not "
                f"positive definite; use more samples than the dimension "
                f"{self.means.shape[1]} or reg > 0"
            )
        eye = torch.eye(self.means.shape[1], dtype=torch.float64,
                        device=self.means.device).expand_as(chol)
        inv_chol = torch.linalg.solve_triangular(chol, eye, upper=False)
        self._whiten = inv_chol.transpose(1, 2).contiguous()       # (G, D, D)
        self.precisions = torch.linalg.inv(self.covs)              # (G, D, D)

    @property
    def num_groups(self) -> int:
        return self.num_classes * self.num_aux

    @property
    def device(self) -> torch.device:
        return self.means.device

    def to(self, device) -> "ClassGaussians":
        """Return a copy on ``device`` (float64 is kept)."""
        return ClassGaussians.from_state_dict(
            {k: v.to(device) if isinstance(v, Tensor) else v
             for k, v in self.state_dict().items()}
        )

    # ---- distances and scores

    def sq_distances(self, feats, groups=None) -> Tensor:
        """Squared Mahalanobis distance (n, g) to the listed groups (Eq. 12).

        ``feats`` (n, D) are prepared as in fitting (L2-normalised under the
        official convention). This is a distance: lower = closer.
        """
        x = _prepare_feats(feats, self.convention).to(self.device)
        return self._sq_dist(x, groups)

    def _sq_dist(self, x: Tensor, groups) -> Tensor:
        if x.shape[1] != self.means.shape[1]:
            raise ValueError(
                f"feats must have D = {self.means.shape[1]} columns, got "
                f"{x.shape[1]}"
            )
        if groups is None:
            groups = torch.arange(self.num_groups, device=self.device)
        w = self._whiten[groups]                                   # (g, D, D)
        g, D = w.shape[0], w.shape[1]

        # centre on a common point so that x W and mu W stay small
        centre = self.means[groups].mean(dim=0)                    # (D,)
        mu_c = (self.means[groups] - centre).unsqueeze(1)          # (g, 1, D)
        mu_w = torch.bmm(mu_c, w).squeeze(1)                       # (g, D)

        # W is upper triangular, so column block [lo, hi) only needs input
        # columns < hi: about 5/8 of the products of a dense whitening. A
        # leading row -mu W, met by a column of ones, subtracts the mean.
        factors = []
        for lo in range(0, D, _TRI_STEP):
            hi = min(lo + _TRI_STEP, D)
            w_blk = w[:, :hi, lo:hi].permute(1, 0, 2).reshape(hi, -1)
            const = -mu_w[:, lo:hi].reshape(1, -1)
            factors.append((hi, torch.cat([const, w_blk])))    # (1+hi, g s)

        out = x.new_empty(len(x), g)                               # (n, g)
        for start in range(0, len(x), _ROW_BLOCK):
            xb = x[start:start + _ROW_BLOCK] - centre              # (b, D)
            xa = torch.cat([xb.new_ones(len(xb), 1), xb], dim=1)   # (b, 1+D)
            d2 = xb.new_zeros(len(xb), g)                          # (b, g)
            for hi, factor in factors:
                y = (xa[:, :1 + hi] @ factor).view(len(xb), g, -1)
                d2 += torch.linalg.vector_norm(y, dim=2).square_()
            out[start:start + _ROW_BLOCK] = d2
        return out

    def _to_scores(self, d2: Tensor) -> Tensor:
        if self.convention == "official":
            return -d2.clamp(min=0).sqrt()
        return -d2

    def group_scores(self, feats) -> Tensor:
        """IND scores (n, G) against every Gaussian (Eq. 12, SPEC 9.4).

        Official: ``-sqrt(d2)`` on L2-normalised features; paper: ``-d2`` on
        raw features. Higher = more in-distribution.
        """
        return self._to_scores(self.sq_distances(feats))

    def way_scores(self, feats, ways: int) -> Tensor:
        """Per-way class scores S (n, M, C) for SEI (Eq. 15-16).

        ``feats`` (n, M, D) holds the features of the views made by
        ``sei_views``; way m is scored against the Gaussians of rotation
        ``WAY_ROTATIONS[ways][m]``. When ``num_aux == 1`` (a model trained
        without auxiliary labels) every way uses the single set of class
        Gaussians.
        """
        rotations = _check_ways(ways)
        z = _as_tensor(feats, "feats")
        if z.ndim != 3 or z.shape[1] != ways:
            raise ValueError(
                f"feats must have shape (n, {ways}, D) for ways={ways}, got "
                f"{tuple(z.shape)}"
            )
        if self.num_aux == 1:
            rotations = (0,) * ways
        elif max(rotations) >= self.num_aux:
            raise ValueError(
                f"ways={ways} needs {max(rotations) + 1} rotation sets, these "
                f"Gaussians have num_aux = {self.num_aux}"
            )
        n, C = len(z), self.num_classes

        # all ways that share a rotation are scored in one pass
        d2 = torch.empty(n, ways, C, dtype=torch.float64,
                         device=self.device)                       # (n, M, C)
        for rot in sorted(set(rotations)):
            way_idx = [m for m, r in enumerate(rotations) if r == rot]
            groups = torch.arange(rot * C, (rot + 1) * C, device=self.device)
            xr = z[:, way_idx].reshape(n * len(way_idx), -1)       # (n k, D)
            xr = _prepare_feats(xr, self.convention).to(self.device)
            d2[:, way_idx] = self._sq_dist(xr, groups).view(n, -1, C)
        return self._to_scores(d2)

    # ---- saving

    def state_dict(self) -> dict:
        """Plain tensors and numbers (loadable with ``weights_only=True``)."""
        return {
            "means": self.means,
            "covs": self.covs,
            "counts": self.counts,
            "num_classes": self.num_classes,
            "num_aux": self.num_aux,
            "convention": self.convention,
            "reg": self.reg,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "ClassGaussians":
        """Rebuild from ``state_dict()`` output (factors are recomputed)."""
        return cls(
            state["means"], state["covs"],
            num_classes=int(state["num_classes"]),
            num_aux=int(state["num_aux"]),
            convention=str(state["convention"]),
            reg=float(state["reg"]),
            counts=state.get("counts"),
        )


# ---------------------------------------------------------------------------
# SEI aggregation (Eq. 17-20, SPEC 7.2 and 7.3)

def _pick(values: Tensor, pred: Tensor) -> Tensor:
    return values.gather(1, pred.unsqueeze(1)).squeeze(1)


def _argmax_first(values: Tensor) -> Prediction:
    """Class of the largest value (first on ties) and that value; (n, C)."""
    best = values.amax(dim=1, keepdim=True)
    pred = _first_index(values == best, dim=1)
    return Prediction(pred, _pick(values, pred))


def _eq19_weighted(S: Tensor) -> Tensor:
    """Eq. 19-20: one weight per way, W_m = (sum_n 1 / S_n^m)^-1."""
    w = 1.0 / (1.0 / S).sum(dim=2, keepdim=True)                  # (n, M, 1)
    return (w * S).sum(dim=1) / w.sum(dim=1)                       # (n, C)


def _official_min(S: Tensor) -> Prediction:
    """Released 'min': global min distance, last one in way-major order."""
    n, M, C = S.shape
    flat = S.reshape(n, M * C)                                     # (n, M C)
    best = flat.amax(dim=1, keepdim=True)
    pred = _last_index(flat == best, dim=1) % C
    return Prediction(pred, best.squeeze(1))


def aggregate(S, method: str, *, variant: str = "official") -> Prediction:
    """Combine per-way scores S (n, M, C) into a class and an IND score.

    ``variant="official"`` (SPEC 7.3, on distances d = -S):
      * "avg" -> released 'mean': class minimising sum_m d (a sum, not a
        mean), score = -that sum;
      * "max" -> released 'min': global minimum distance over (way, class),
        the last one on ties scanning ways outer and classes inner;
      * "w-avg" -> released 'wa': per-class harmonic mean over ways,
        H_i = M / sum_m 1/d_i^m, class minimising H, score = -H.
    ``variant="paper"``: "avg" Eq. 17, "max" Eq. 18, "w-avg" Eq. 19-20.
    "w-avg-eq19" is Eq. 19-20 as printed in either variant. Paper rules and
    all official rules except 'min' break ties by the first class.

    Returns:
        ``Prediction(pred (n,) int64, score (n,) float64)``.
    """
    if method not in AGGREGATIONS:
        raise ValueError(
            f"method must be one of {AGGREGATIONS}, got {method!r}"
        )
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    S = _as_tensor(S, "S", torch.float64)
    if S.ndim != 3 or 0 in S.shape[1:]:
        raise ValueError(
            f"S must have shape (n, M, C) with M, C >= 1, got {tuple(S.shape)}"
        )
    if torch.isnan(S).any():
        raise ValueError("S holds NaN values; scores must be numbers")
    M = S.shape[1]

    if method == "w-avg-eq19" or (method == "w-avg" and variant == "paper"):
        return _argmax_first(_eq19_weighted(S))
    if variant == "paper":
        if method == "avg":
            return _argmax_first(S.mean(dim=1))                    # Eq. 17
        return _argmax_first(S.amax(dim=1))                        # Eq. 18
    if method == "avg":
        return _argmax_first(S.sum(dim=1))
    if method == "max":
        return _official_min(S)

    # released 'wa': per-class harmonic mean of the distances over the ways
    d = -S                                                         # (n, M, C)
    harmonic = M / (1.0 / d).sum(dim=1)                            # (n, C)
    return _argmax_first(-harmonic)


def score_features(
    gaussians: ClassGaussians,
    feats,
    ways: int,
    method: str = "w-avg",
    variant: str = "official",
) -> Prediction:
    """SEI prediction and IND score from view features (n, M, D) (Eq. 15-20).

    With ``ways=1`` every rule reduces to the plain score of Eq. 14:
    class = argmax over the rotation-0 Gaussians, score = that maximum
    (up to rounding of the 'w-avg' harmonic mean of one value).
    """
    return aggregate(gaussians.way_scores(feats, ways), method,
                     variant=variant)


# ---------------------------------------------------------------------------
# post-hoc baselines

def msp_score(logits) -> Prediction:
    """Maximum softmax probability of logits (N, C) (Hendrycks & Gimpel 2017)."""
    logits = _as_tensor(logits, "logits")
    if logits.ndim != 2:
        raise ValueError(
            f"logits must have shape (N, C), got {tuple(logits.shape)}"
        )
    prob = torch.softmax(logits.to(torch.float64), dim=1)          # (N, C)
    score, pred = prob.max(dim=1)
    return Prediction(pred, score)


def odin_score(
    model_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    temperature: float = 1000.0,
    epsilon: float = 0.0014,
) -> Prediction:
    """ODIN (Liang et al. 2018): tempered softmax after input perturbation.

    The input moves against the gradient of the negative log tempered
    softmax of the predicted class, ``x' = x - epsilon * sign(grad)``, and
    the score is the maximum tempered softmax probability at ``x'``.

    Choices: images are in [0, 1] without mean/std normalisation, so the
    gradient is not divided by a per-channel std; ``x'`` is not clipped to
    [0, 1]; ``pred`` is the class of the unperturbed logits (temperature
    does not change the argmax). ``model_fn`` maps images (N, 3, H, W) to
    logits (N, C); put the model in eval mode first. The gradient is taken
    with ``torch.autograd.grad``, so parameter ``.grad`` is left untouched.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    with torch.enable_grad():
        x_in = x.detach().clone().requires_grad_(True)
        logits = model_fn(x_in)                                    # (N, C)
        pred = logits.argmax(dim=1)
        log_prob = torch.log_softmax(logits / temperature, dim=1)
        loss = -log_prob.gather(1, pred.unsqueeze(1)).sum()
        (grad,) = torch.autograd.grad(loss, x_in)
    x_adv = x.detach() - epsilon * grad.sign()
    with torch.no_grad():
        logits_adv = model_fn(x_adv).to(torch.float64)             # (N, C)
        prob = torch.softmax(logits_adv / temperature, dim=1)
    return Prediction(pred.detach(), prob.amax(dim=1))


class LeeMahalanobis:
    """Tied-covariance Mahalanobis detector of Lee et al. (2018).

    Class means of penultimate features h (N, F) with one covariance shared
    by all classes (the pooled within-class covariance, normalised by the
    total count N as in the authors' use of sklearn's EmpiricalCovariance);
    the precision is its pseudo-inverse. Score
    ``max_c -(h - mu_c)^T Sigma^+ (h - mu_c)``; higher = more IND.

    # NOTE: only the penultimate layer is used; the multi-layer feature
    # ensemble with a logistic-regression combiner of the original paper is
    # not implemented.
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self._moments = _GroupMoments(num_classes)
        self.means: Tensor | None = None       # (C, F)
        self.precision: Tensor | None = None   # (F, F)

    def update(self, h, y) -> "LeeMahalanobis":
        """Accumulate a batch of features h (n, F) with labels y (n,)."""
        x = _prepare_feats(h, "paper", "h")
        y = _check_labels(y, len(x), self.num_classes, "y", x.device)
        if len(x):
            self._moments.update(x, y)
        return self

    def finalize(self) -> "LeeMahalanobis":
        """Compute class means and the shared precision from the batches."""
        m = self._moments
        if m.count is None:
            raise ValueError("no features were given to update()")
        empty = (m.count == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"classes {empty} have no samples")
        means, scatter = m.mean_and_scatter()
        cov = scatter.sum(dim=0) / m.count.sum()                    # (F, F)
        evals, evecs = torch.linalg.eigh(cov)
        keep = evals > evals.max() * cov.shape[0] * torch.finfo(
            torch.float64).eps
        inv = torch.where(keep, 1.0 / evals, torch.zeros_like(evals))
        self.means = means
        self.precision = (evecs * inv) @ evecs.T
        self._whiten = evecs * inv.sqrt()                           # (F, F)
        return self

    def fit(self, h, y) -> "LeeMahalanobis":
        """Fit from arrays h (N, F) and labels y (N,) in one call."""
        self._moments = _GroupMoments(self.num_classes)
        return self.update(h, y).finalize()

    def sq_distances(self, h: Tensor) -> Tensor:
        """Squared distances (n, C) to each class mean; differentiable."""
        if self.means is None:
            raise ValueError("call fit() or update() + finalize() first")
        h = h.to(device=self.means.device, dtype=torch.float64)
        y = h @ self._whiten                                        # (n, F)
        mu_w = self.means @ self._whiten                            # (C, F)
        return torch.stack(
            [(y - mu).square().sum(dim=1) for mu in mu_w], dim=1
        )                                                           # (n, C)

    def score(self, h) -> Prediction:
        """Closest class and ``max_c -d2_c`` for features h (n, F)."""
        h = _prepare_feats(h, "paper", "h")
        return _argmax_first(-self.sq_distances(h))

    def score_inputs(
        self,
        feature_fn: Callable[[Tensor], Tensor],
        x: Tensor,
        epsilon: float = 0.0,
    ) -> Prediction:
        """Score images with Lee et al.'s input pre-processing.

        ``x' = x - epsilon * sign(grad_x d2_c*(x))`` with c* the closest
        class at ``x``, a step that decreases that distance; the score is
        ``max_c -d2_c`` at ``x'`` and ``pred`` is c*. ``feature_fn`` maps
        images (N, 3, H, W) to penultimate features (N, F).
        """
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
        with torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            d2 = self.sq_distances(feature_fn(x_in))                # (N, C)
            pred = d2.detach().argmin(dim=1)
            closest = d2.gather(1, pred.unsqueeze(1)).sum()
            (grad,) = torch.autograd.grad(closest, x_in)
        x_adv = x.detach() - epsilon * grad.sign()
        with torch.no_grad():
            d2_adv = self.sq_distances(feature_fn(x_adv))
        return Prediction(pred, (-d2_adv).amax(dim=1))
