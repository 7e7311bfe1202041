"""Small helpers behind notebooks/00_walkthrough.ipynb.

They expose, as plain arrays, what the losses of ``mcl_core.losses`` build
internally: which denominator coefficient of the class-conditional mask
(Eq. 3 and 11) each view pair gets, and which views SPA may attract
(Eq. 7). They also train a deliberately tiny MCL model for a few seconds so
that the self-ensemble inference (Eq. 15-20) has features to work on.

View layout (SPEC §0): rows 2e and 2e+1 of a (2N, D) projection matrix are
the two views of entry e. Letters: N entries, D projection dim, C classes,
M SEI ways.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from mcl_core import losses
from mcl_core.model import MCLNet
from mcl_core.scoring import aggregate

log = logging.getLogger(__name__)

# region codes of mask_regions (names in mcl_core.plots.REGION_NAMES)
SELF, PARTNER, ALPHA, BETA, OTHER = range(5)


def mask_regions(labels: Tensor, aux: Tensor | None = None) -> np.ndarray:
    """Region code (2N, 2N) of each view pair in the CCM (Eq. 3, 11).

    Codes: SELF (not in the denominator), PARTNER (other view of the same
    entry), ALPHA (same class and rotation), BETA (same class, other
    rotation), OTHER (other class, coefficient 1/tau).
    """
    y = np.asarray(labels).repeat(2)  # (2N,) label of each view
    r = (np.zeros_like(y) if aux is None
         else np.asarray(aux).repeat(2))  # (2N,)
    view = np.arange(len(y))  # (2N,)

    same_class = y[:, None] == y[None, :]  # (2N, 2N)
    same_rot = r[:, None] == r[None, :]  # (2N, 2N)
    regions = np.full(same_class.shape, OTHER)
    regions[same_class & ~same_rot] = BETA
    regions[same_class & same_rot] = ALPHA
    regions[view[:, None] // 2 == view[None, :] // 2] = PARTNER
    regions[view, view] = SELF
    return regions


def region_coefficients(
    *, tau: float = 0.2, alpha: float = 0.05, beta: float = 2.0,
    variant: str = "official",
) -> dict[int, str]:
    """Legend text: coefficient of each region in the CCM denominator."""
    partner = (f"1/tau = {1 / tau:g}" if variant == "official"
               else f"alpha = {alpha:g} (Eq. 4 read literally)")
    return {
        SELF: "left out",
        PARTNER: partner,
        ALPHA: f"{alpha:g}",
        BETA: f"{beta:g}",
        OTHER: f"{1 / tau:g}",
    }


def spa_candidates(labels: Tensor, aux: Tensor | None = None) -> np.ndarray:
    """B_i+ of Eq. 7 as a (2N, 2N) bool matrix: other entry, same joint label."""
    regions = mask_regions(labels, aux)
    return regions == ALPHA


def spa_targets(
    labels: Tensor, aux: Tensor | None = None, *, seed: int = 0
) -> np.ndarray:
    """View each view is pulled towards by SPA (official draw, §9.3); -1 none."""
    gen = torch.Generator().manual_seed(seed)
    entry = losses.draw_spa_positives(labels, aux, generator=gen)  # (N,)
    entry = entry.numpy().repeat(2)  # (2N,)
    view = np.arange(len(entry))  # (2N,)
    # view 2e targets view 2p, view 2e+1 targets view 2p+1
    return np.where(entry >= 0, 2 * entry + (view % 2), -1)


def compare_losses(
    z: Tensor,
    labels: Tensor,
    aux: Tensor | None = None,
    *,
    tau: float = 0.2,
    alpha: float = 0.05,
    beta: float = 2.0,
    seed: int = 0,
) -> dict[str, float]:
    """SimCLR (Eq. 1-2), SupCon, CCM (Eq. 3-6, 11), SPA (7-9), MCL (10)."""
    masks = dict(tau=tau, alpha=alpha, beta=beta)
    gen = torch.Generator().manual_seed(seed)
    positives = losses.draw_spa_positives(labels, aux, generator=gen)
    with torch.no_grad():
        out = {
            "SimCLR (NT-Xent)": losses.nt_xent(z, tau=tau),
            "SupCon": losses.supcon_loss(z, labels, tau=tau),
            "CCM": losses.ccm_loss(z, labels, aux, **masks),
            "SPA": losses.spa_loss(z, labels, aux, positives=positives,
                                   **masks),
            "MCL = CCM + SPA": losses.mcl_loss(z, labels, aux,
                                               positives=positives, **masks),
        }
    return {name: float(v) for name, v in out.items()}


def train_tiny_mcl(
    images: Tensor,
    labels: Tensor,
    *,
    steps: int = 60,
    images_per_step: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> MCLNet:
    """A few Adam steps of MCL with rotations on uint8 images (N, 3, S, S)."""
    from tqdm.auto import tqdm

    from mcl_core.augment import TrainAugment
    from mcl_core.data import build_train_batch

    # NOTE: a teaching model (resnet10, width 8, seconds of CPU time); its
    # scores show how SEI combines ways, not how well MCL detects outliers.
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = MCLNet(arch="resnet10", width=8, proj_hidden=64, proj_dim=32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=5e-4)
    augment = TrainAugment(images.shape[-1])
    model.train()
    for step in tqdm(range(steps), desc="tiny mcl", disable=not progress,
                     leave=False):
        idx = torch.randperm(len(images), generator=gen)[:images_per_step]
        batch = build_train_batch(images[idx], labels[idx], aux_mode="aux",
                                  augment=augment, generator=gen)
        z = model(batch.views).z  # (2E, D)
        loss = losses.mcl_loss(z, batch.labels, batch.aux, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.debug("step %d  loss %.3f", step, loss.item())
    log.info("tiny mcl: %d steps, last loss %.3f", steps, loss.item())
    return model.eval()


@torch.no_grad()
def projections(model: MCLNet, x: Tensor) -> Tensor:
    """Projections z of float images x (..., 3, S, S) -> (..., D)."""
    lead = x.shape[:-3]
    z = model(x.reshape(-1, *x.shape[-3:])).z  # (n, D)
    return z.reshape(*lead, -1)


def most_disputed(
    S: Tensor, methods: tuple[str, ...] = ("avg", "max", "w-avg", "w-avg-eq19")
) -> int:
    """Index of the image whose per-way scores S (n, M, C) split the rules most.

    Ties go to the first such image; 0 when every rule agrees everywhere.
    """
    picks = torch.stack([aggregate(S, m).pred for m in methods])  # (R, n)
    distinct = torch.tensor([len(set(col.tolist())) for col in picks.T])
    return int(torch.argmax(distinct))
