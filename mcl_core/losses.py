"""Contrastive losses of MCL: NT-Xent, CCM, SPA, their sum (MCL) and SupCon.

Dimension letters: N entries in a batch, V = 2 views per entry, D projection
dimension. An entry is one training example with its main label (and, with
the rotation task, its auxiliary label); labels are given per entry, (N,).

View layout (SPEC §0): the projections ``z`` are (2N, D) and rows ``2e`` and
``2e + 1`` hold the two views of entry ``e``. So view ``a`` belongs to entry
``a // 2`` and its partner is view ``a ^ 1``. Every mask below is built on
entries (N, N) and broadcast over the two views of each entry.

All losses share one row form (SPEC §0, form G). With s the cosine similarity,

    row_a = -(1/tau) sum_b q_ab s_ab + log sum_{b in A(a)} exp(kappa_ab s_ab),

where q_a says which views are positives, A(a) which views enter the
denominator and kappa_ab the per-pair coefficient (the "mask"). A loss is the
mean of its rows over the 2N views.

Two readings of the method are available through ``variant``:

* ``"official"`` (default): what the authors' released code computes (SPEC
  §9.1-9.3): cosines clamped below at 1e-7 (such pairs get no gradient), the
  partner enters the CCM denominator with 1/tau, SPA draws one positive entry
  per entry, gives its target view 1/tau and the own partner coefficient 0.
  alpha and that 0 carry the released float32 rounding (SPEC §9.2), so the
  stored vectors are met to float64 precision.
* ``"paper"``: the equations as printed (SPEC §1-3, readings [A1], [A3]): no
  clamp, the partner keeps coefficient alpha in the CCM denominator and SPA
  drops both views of the own entry from its denominator.

A view whose entry has no same-label partner in the batch gets SPA row 0 and
is left out of the SPA mean, with one warning logged (SPEC decision 4).
Similarities and softmax run in float32 (float64 if z is float64), also
under autocast.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = [
    "ccm_loss",
    "draw_spa_positives",
    "mcl_loss",
    "mcl_loss_terms",
    "nt_xent",
    "spa_loss",
    "supcon_loss",
]

VARIANTS = ("official", "paper")
REDUCTIONS = ("mean", "sum", "none")
POSITIVE_LABELS = ("joint", "main")

# the released code clamps cosines at this value (SPEC §9.1)
COSINE_FLOOR = 1e-7

# set after the first "no partner" warning; later ones go to DEBUG
_warned_no_partner = False


# ---------------------------------------------------------------------------
# input checks


def _check_choice(name: str, value: object, accepted: tuple) -> None:
    if value not in accepted:
        raise ValueError(f"{name} must be one of {list(accepted)}, got {value!r}")


def _check_z(z: Tensor) -> Tensor:
    """Validate the (2N, D) projections; return them as float32 or float64."""
    if not isinstance(z, Tensor) or z.dim() != 2:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"z must be a 2-D tensor (2N, D), got shape {shape}")
    if z.shape[0] == 0 or z.shape[0] % 2:
        raise ValueError(
            f"z must have an even, positive number of rows (two views per "
            f"entry), got {z.shape[0]} rows"
        )
    if not torch.isfinite(z).all():
        num_bad = int((~torch.isfinite(z)).sum())
        raise ValueError(f"z must be finite, got {num_bad} NaN or inf values")
    # similarities and softmax always run in float32 (float64 if given)
    return z if z.dtype == torch.float64 else z.float()


def _check_labels(
    labels: Tensor | None, n: int | None, name: str
) -> Tensor | None:
    """Validate per-entry labels (N,); n=None accepts any length."""
    if labels is None:
        return None
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels)
        raise ValueError(f"{name} must be a 1-D tensor (N,), got {got}")
    if n is not None and len(labels) != n:
        raise ValueError(
            f"{name} must hold one label per entry (N={n} entries), got "
            f"length {len(labels)}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{name} must be an integer tensor, got {labels.dtype}")
    return labels


def _check_mask_values(tau: float, alpha: float, beta: float) -> None:
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    if not 0 < alpha < beta < 1 / tau:
        raise ValueError(
            f"mask values need 0 < alpha < beta < 1/tau = {1 / tau:g}, got "
            f"alpha={alpha!r}, beta={beta!r}"
        )


# ---------------------------------------------------------------------------
# shared core


def _cosine(z: Tensor, variant: str) -> Tensor:
    """Cosine similarities s (2N, 2N), clamped in the official variant."""
    with torch.autocast(device_type=z.device.type, enabled=False):
        z_hat = torch.nn.functional.normalize(z, dim=1, eps=1e-12)  # (2N, D)
        sim = z_hat @ z_hat.T  # (2N, 2N)
    if variant == "official":
        # zero gradient below the floor: negatives stop at orthogonal (§9.1)
        sim = sim.clamp_min(COSINE_FLOOR)
    return sim


def _relations(
    labels: Tensor, aux_labels: Tensor | None, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Entry pairs with the same main label and with the same joint label."""
    main = labels.to(device)
    same_main = main[:, None] == main[None, :]  # (N, N)
    if aux_labels is None:
        return same_main, same_main
    aux = aux_labels.to(device)
    same_joint = same_main & (aux[:, None] == aux[None, :])  # (N, N)
    return same_main, same_joint


def _released_alpha(alpha: float, beta: float) -> tuple[float, float]:
    """alpha as the released code's float32 mask sums give it (SPEC §9.2).

    Returns (alpha', spa_partner): alpha' = beta + (alpha - beta) rounded in
    float32 (0.04999995231628418 for 0.05, 2.0) and the SPA partner
    coefficient alpha' - alpha in float32 (-4.84e-8 where the rule says 0).
    """
    alpha32, beta32 = torch.tensor([alpha, beta], dtype=torch.float32)
    rounded = beta32 + (alpha32 - beta32)
    return rounded.item(), (rounded - alpha32).item()


def _ccm_table(
    same_main: Tensor, same_joint: Tensor, *, tau: float, alpha: float,
    beta: float, variant: str, dtype: torch.dtype,
) -> Tensor:
    """CCM coefficients of Eq. 3 / 11 for every view pair; (2N, 2N).

    Built on entries and repeated over the two views of each entry, so the
    self and partner pairs carry alpha; the losses override or drop them.
    """
    if variant == "official":
        alpha, _ = _released_alpha(alpha, beta)
    n = len(same_main)
    kappa = torch.full((n, n), 1 / tau, dtype=dtype, device=same_main.device)
    kappa.masked_fill_(same_main, beta)
    kappa.masked_fill_(same_joint, alpha)
    kappa = kappa[:, None, :, None].expand(n, 2, n, 2)  # (N, 2, N, 2)
    return kappa.reshape(2 * n, 2 * n)  # (2N, 2N)


def _rows(
    sim: Tensor,
    kappa: Tensor | float,
    tau: float,
    *,
    target: Tensor | None = None,
    overrides: tuple[tuple[Tensor, float], ...] = (),
    pos_entries: Tensor | None = None,
    drop_own: bool = False,
) -> Tensor:
    """Rows of the generic form (G), SPEC §0, for every view; (2N,).

    kappa is a scalar or a (2N, 2N) coefficient matrix, read only (so one
    matrix serves several losses). ``overrides`` holds (column (2N,), value)
    pairs: the coefficient of that one column in each row is replaced, later
    pairs winning. The positives are either one view per row (``target``,
    (2N,)) or, uniformly, the views of the entries marked in ``pos_entries``
    (N, N) other than the view itself. The view itself is never in the
    denominator; ``drop_own`` drops its partner as well.
    """
    return _RowForm.apply(sim, kappa, tau, target, overrides, pos_entries, drop_own)


class _RowForm(torch.autograd.Function):
    """Form (G) with its gradient written out: dL/ds = p * kappa - q / tau.

    Autograd through the masked softmax would add several (2N, 2N) passes
    (gather and mask backwards); this backward makes three: exp, * kappa,
    * row weight, plus sparse fixes for overrides and one-hot targets.
    """

    @staticmethod
    def forward(ctx, sim, kappa, tau, target, overrides, pos_entries, drop_own):
        num_views = len(sim)
        n = num_views // 2
        view = torch.arange(num_views, device=sim.device)  # (2N,)

        # denominator logits kappa_ab * s_ab over the allowed set A(a)
        logits = sim * kappa  # (2N, 2N)
        for column, coef in overrides:
            logits.scatter_(1, column[:, None], sim.gather(1, column[:, None]) * coef)
        if drop_own:
            # both views of the own entry: the 2x2 diagonal blocks
            blocks = logits.view(n, 2, n, 2).diagonal(dim1=0, dim2=2)
            blocks.fill_(-torch.inf)
        else:
            logits.diagonal().fill_(-torch.inf)
        log_prob = torch.log_softmax(logits, dim=1)  # (2N, 2N)

        # numerator (1/tau) sum_b q_ab s_ab; log-sum-exp read off a column r
        # of A(a): lse_a = logits_ar - log_prob_ar (one fused softmax pass)
        if target is not None:
            pos_sim = sim.gather(1, target[:, None]).squeeze(1)  # (2N,)
            ref = target
        else:
            pos_sim = _mean_over_entries(sim, pos_entries)  # (2N,)
            ref = (view + 2) % num_views if drop_own else view ^ 1
        lse = logits.gather(1, ref[:, None]) - log_prob.gather(1, ref[:, None])
        ctx.save_for_backward(log_prob)
        ctx.kappa, ctx.tau, ctx.overrides = kappa, tau, overrides
        ctx.target, ctx.pos_entries = target, pos_entries
        return lse.squeeze(1) - pos_sim / tau

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_rows):
        (log_prob,) = ctx.saved_tensors
        weight = grad_rows[:, None]  # (2N, 1)

        # softmax part p_ab * kappa_ab (zero outside A(a))
        grad = log_prob.exp()  # (2N, 2N)
        grad.mul_(ctx.kappa).mul_(weight)
        for column, coef in ctx.overrides:
            prob = log_prob.gather(1, column[:, None]).exp()  # (2N, 1)
            grad.scatter_(1, column[:, None], prob * (coef * weight))

        # positive part q_ab / tau
        if ctx.target is not None:
            grad.scatter_add_(1, ctx.target[:, None], -weight / ctx.tau)
        else:
            q = _positive_weights(ctx.pos_entries, grad.dtype)  # (2N, 2N)
            grad.sub_(q.mul_(weight / ctx.tau))
        return grad, None, None, None, None, None, None


def _positive_weights(pos_entries: Tensor, dtype: torch.dtype) -> Tensor:
    """q as a (2N, 2N) matrix: uniform over the views of marked entries."""
    n = len(pos_entries)
    q = pos_entries[:, None, :, None].expand(n, 2, n, 2).reshape(2 * n, 2 * n)
    q = q.to(dtype)  # (2N, 2N)
    q.diagonal().zero_()
    return q / q.sum(1, keepdim=True).clamp_min(1)


def _mean_over_entries(sim: Tensor, pos_entries: Tensor) -> Tensor:
    """Mean of s_ab over the views b of marked entries, b != a; (2N,)."""
    n = len(pos_entries)
    entry_sim = sim.view(2 * n, n, 2).sum(-1)  # (2N, N) sum over the 2 views
    pos = pos_entries.to(sim.dtype)  # (N, N)
    total = (entry_sim.view(n, 2, n) * pos[:, None, :]).sum(-1).view(-1)  # (2N,)
    own = pos.diagonal().repeat_interleave(2)  # (2N,) 1 if own entry marked
    total = total - own * sim.diagonal()
    count = (2 * pos.sum(1)).repeat_interleave(2) - own  # (2N,)
    return total / count.clamp_min(1)


def _reduce(rows: Tensor, reduction: str, valid: Tensor | None = None) -> Tensor:
    """Mean (over valid rows), sum, or the rows themselves."""
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    if valid is None:
        return rows.mean()
    return rows.sum() / valid.sum().clamp_min(1)


def _warn_no_partner(num_missing: int, num_views: int) -> None:
    global _warned_no_partner
    msg = (
        f"SPA: {num_missing} of {num_views} views have no same-label view of "
        f"another entry in the batch; they are left out of the SPA mean"
    )
    if _warned_no_partner:
        log.debug(msg)
        return
    _warned_no_partner = True
    log.warning(f"{msg} (further occurrences are logged at DEBUG level)")


# ---------------------------------------------------------------------------
# losses


def nt_xent(
    z: Tensor, *, tau: float = 0.2, variant: str = "official", reduction: str = "mean"
) -> Tensor:
    """SimCLR NT-Xent loss, Eq. 1-2 of the paper (SPEC §1)."""
    _check_choice("variant", variant, VARIANTS)
    _check_choice("reduction", reduction, REDUCTIONS)
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    z = _check_z(z)

    sim = _cosine(z, variant)  # (2N, 2N)
    partner = torch.arange(len(z), device=z.device) ^ 1  # (2N,)
    rows = _rows(sim, 1 / tau, tau, target=partner)  # (2N,)
    return _reduce(rows, reduction)


def _ccm_rows(sim: Tensor, table: Tensor, *, tau: float, variant: str) -> Tensor:
    """CCM rows (2N,), Eq. 4-6 with the (2N, 2N) mask of Eq. 3 or 11."""
    partner = torch.arange(len(sim), device=sim.device) ^ 1  # (2N,)
    # released code: the partner enters the denominator with 1/tau (§9.2);
    # the paper's literal reading keeps alpha there ([A1])
    overrides = ((partner, 1 / tau),) if variant == "official" else ()
    return _rows(sim, table, tau, target=partner, overrides=overrides)


def ccm_loss(
    z: Tensor,
    labels: Tensor,
    aux_labels: Tensor | None = None,
    *,
    tau: float = 0.2,
    alpha: float = 0.05,
    beta: float = 2.0,
    variant: str = "official",
    reduction: str = "mean",
) -> Tensor:
    """Class-conditional mask loss L_ccm, Eq. 3-6 (Eq. 11 with aux labels)."""
    _check_choice("variant", variant, VARIANTS)
    _check_choice("reduction", reduction, REDUCTIONS)
    _check_mask_values(tau, alpha, beta)
    z = _check_z(z)
    n = len(z) // 2
    labels = _check_labels(labels, n, "labels")
    aux_labels = _check_labels(aux_labels, n, "aux_labels")

    sim = _cosine(z, variant)  # (2N, 2N)
    same_main, same_joint = _relations(labels, aux_labels, z.device)
    table = _ccm_table(
        same_main, same_joint, tau=tau, alpha=alpha, beta=beta,
        variant=variant, dtype=sim.dtype,
    )  # (2N, 2N)
    rows = _ccm_rows(sim, table, tau=tau, variant=variant)
    return _reduce(rows, reduction)


def _candidates(
    labels: Tensor, aux_labels: Tensor | None, positive_label: str,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    """Label relations and SPA candidate entries (Eq. 7), all (N, N) bool."""
    same_main, same_joint = _relations(labels, aux_labels, device)
    same = same_joint if positive_label == "joint" else same_main
    cand = same.clone()  # (N, N)
    cand.fill_diagonal_(False)
    return same_main, same_joint, cand


def _draw(candidates: Tensor, generator: torch.Generator | None) -> Tensor:
    """One uniform draw per row of a bool (R, N) matrix; -1 for empty rows."""
    noise = torch.rand(
        candidates.shape, generator=generator, device=candidates.device
    )  # (R, N)
    noise = noise.masked_fill(~candidates, -1.0)
    pick = noise.argmax(dim=1)  # (R,)
    return torch.where(candidates.any(dim=1), pick, -1)


def draw_spa_positives(
    labels: Tensor,
    aux_labels: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    variant: str = "official",
    positive_label: str = "joint",
) -> Tensor:
    """Draw SPA positives from B_i^+ (Eq. 7, 9); -1 where there is none.

    Official (§9.3): one other entry per entry, (N,) entry indices; both views
    of an entry target the matching view of the drawn entry. Paper (Eq. 9):
    one view per view, independently, (2N,) view indices.
    """
    _check_choice("variant", variant, VARIANTS)
    _check_choice("positive_label", positive_label, POSITIVE_LABELS)
    labels = _check_labels(labels, None, "labels")
    n = len(labels)
    aux_labels = _check_labels(aux_labels, n, "aux_labels")
    device = labels.device
    _, _, cand = _candidates(labels, aux_labels, positive_label, device)

    if variant == "official":
        return _draw(cand, generator)  # (N,)
    # a uniform view of B_a^+ = a uniform candidate entry, then a uniform view
    entry = _draw(cand.repeat_interleave(2, dim=0), generator)  # (2N,)
    bit = torch.randint(
        0, 2, (2 * n,), generator=generator, device=device
    )  # (2N,)
    return torch.where(entry >= 0, 2 * entry + bit, -1)


def _check_positives(
    positives: Tensor, cand: Tensor, variant: str
) -> Tensor:
    """Validate given SPA positives; return the (2N,) target view indices."""
    n = len(cand)
    size = n if variant == "official" else 2 * n
    if (
        not isinstance(positives, Tensor)
        or positives.shape != (size,)
        or positives.is_floating_point()
        or positives.dtype == torch.bool
    ):
        got = tuple(positives.shape) if isinstance(positives, Tensor) else positives
        what = "entry" if variant == "official" else "view"
        raise ValueError(
            f"positives for variant={variant!r} must be an integer tensor of "
            f"{size} {what} indices, got {got}"
        )
    pos = positives.to(cand.device)
    # row r of the candidate table that each given index is checked against
    cand_rows = cand if variant == "official" else cand.repeat_interleave(2, 0)
    entry = pos if variant == "official" else pos.div(2, rounding_mode="floor")
    in_range = (pos >= -1) & (pos < size)
    safe = entry.clamp(0, n - 1)
    ok = cand_rows.gather(1, safe[:, None]).squeeze(1) & (pos >= 0)
    ok |= (pos == -1) & ~cand_rows.any(dim=1)
    bad = torch.nonzero(~(ok & in_range)).flatten()
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"positives[{i}]={int(pos[i])} is not a same-label "
            f"{'entry' if variant == 'official' else 'view'} of another entry "
            f"(-1 is accepted only where no such partner exists)"
        )
    if variant == "official":
        parity = torch.arange(2 * n, device=pos.device) % 2  # (2N,)
        pos = torch.where(
            pos.repeat_interleave(2) >= 0, 2 * pos.repeat_interleave(2) + parity, -1
        )
    return pos  # (2N,)


def _spa_rows(
    sim: Tensor, table: Tensor, cand: Tensor, target: Tensor | None, *,
    tau: float, alpha: float, beta: float, variant: str,
) -> tuple[Tensor, Tensor]:
    """SPA rows (2N,), Eq. 8-9 or §9.3, and the mask of rows with a partner."""
    if not bool(cand.any()):
        # no view has a partner (e.g. N = 1): every row is left out
        _warn_no_partner(len(sim), len(sim))
        rows = sim.diagonal() * 0  # (2N,) zeros that keep the graph
        return rows, torch.zeros_like(rows, dtype=torch.bool)
    if target is None:
        # exact expectation of Eq. 9: q uniform over B_a^+ ([A3])
        valid = cand.any(dim=1).repeat_interleave(2)  # (2N,)
        rows = _rows(sim, table, tau, pos_entries=cand, drop_own=True)
    else:
        valid = target >= 0  # (2N,)
        # rows without a partner get a placeholder target, zeroed below
        safe = torch.where(valid, target, torch.arange(len(sim), device=sim.device))
        if variant == "official":
            # released rule: partner coefficient 0, target view 1/tau (§9.3)
            _, partner_coef = _released_alpha(alpha, beta)
            partner = torch.arange(len(sim), device=sim.device) ^ 1  # (2N,)
            overrides = ((partner, partner_coef), (safe, 1 / tau))
            rows = _rows(sim, table, tau, target=safe, overrides=overrides)
        else:
            rows = _rows(sim, table, tau, target=safe, drop_own=True)

    if not bool(valid.all()):
        _warn_no_partner(int((~valid).sum()), len(valid))
        rows = torch.where(valid, rows, torch.zeros_like(rows))
    return rows, valid


def _spa_setup(
    z, labels, aux_labels, positives, generator, tau, alpha, beta, variant,
    positive_label, expected, reduction,
):
    """Shared argument checks of spa_loss and mcl_loss."""
    _check_choice("variant", variant, VARIANTS)
    _check_choice("reduction", reduction, REDUCTIONS)
    _check_choice("positive_label", positive_label, POSITIVE_LABELS)
    _check_mask_values(tau, alpha, beta)
    if expected and variant != "paper":
        raise ValueError(
            f"expected=True is defined for variant='paper' only, got "
            f"variant={variant!r}"
        )
    if expected and positives is not None:
        raise ValueError("positives must be None when expected=True")
    z = _check_z(z)
    n = len(z) // 2
    labels = _check_labels(labels, n, "labels")
    aux_labels = _check_labels(aux_labels, n, "aux_labels")
    same_main, same_joint, cand = _candidates(
        labels, aux_labels, positive_label, z.device
    )

    target = None
    if not expected:
        if positives is None:
            positives = draw_spa_positives(
                labels.to(z.device), None if aux_labels is None
                else aux_labels.to(z.device), generator=generator,
                variant=variant, positive_label=positive_label,
            )
        target = _check_positives(positives, cand, variant)  # (2N,)
    table = _ccm_table(
        same_main, same_joint, tau=tau, alpha=alpha, beta=beta,
        variant=variant, dtype=z.dtype,
    )  # (2N, 2N)
    return z, table, cand, target


def spa_loss(
    z: Tensor,
    labels: Tensor,
    aux_labels: Tensor | None = None,
    *,
    positives: Tensor | None = None,
    generator: torch.Generator | None = None,
    tau: float = 0.2,
    alpha: float = 0.05,
    beta: float = 2.0,
    variant: str = "official",
    positive_label: str = "joint",
    expected: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Stochastic positive attraction loss, Eq. 7-9 (official rule: §9.3).

    ``positives``: (N,) entry indices (official) or (2N,) view indices
    (paper), as returned by :func:`draw_spa_positives`; drawn with
    ``generator`` (on z's device) when None. ``expected=True`` (paper only)
    takes the exact expectation of Eq. 9 instead of a draw. Views without a
    same-label view of another entry are left out of the mean (0 with
    ``reduction="none"``), SPEC decision 4.
    """
    z, table, cand, target = _spa_setup(
        z, labels, aux_labels, positives, generator, tau, alpha, beta, variant,
        positive_label, expected, reduction,
    )
    sim = _cosine(z, variant)  # (2N, 2N)
    rows, valid = _spa_rows(
        sim, table, cand, target, tau=tau, alpha=alpha, beta=beta, variant=variant
    )
    return _reduce(rows, reduction, valid)


def mcl_loss_terms(
    z: Tensor,
    labels: Tensor,
    aux_labels: Tensor | None = None,
    *,
    positives: Tensor | None = None,
    generator: torch.Generator | None = None,
    tau: float = 0.2,
    alpha: float = 0.05,
    beta: float = 2.0,
    variant: str = "official",
    positive_label: str = "joint",
    expected: bool = False,
    reduction: str = "mean",
) -> tuple[Tensor, Tensor]:
    """The CCM and SPA terms of Eq. 10, from one similarity matrix.

    Arguments as in :func:`spa_loss`. Returns ``(ccm, spa)``, each reduced
    as ``reduction`` says (SPA over the views that have a partner).
    """
    z, table, cand, target = _spa_setup(
        z, labels, aux_labels, positives, generator, tau, alpha, beta, variant,
        positive_label, expected, reduction,
    )
    sim = _cosine(z, variant)  # (2N, 2N)
    ccm_rows = _ccm_rows(sim, table, tau=tau, variant=variant)  # (2N,)
    spa_rows, valid = _spa_rows(
        sim, table, cand, target, tau=tau, alpha=alpha, beta=beta, variant=variant
    )
    return _reduce(ccm_rows, reduction), _reduce(spa_rows, reduction, valid)


def mcl_loss(
    z: Tensor,
    labels: Tensor,
    aux_labels: Tensor | None = None,
    *,
    positives: Tensor | None = None,
    generator: torch.Generator | None = None,
    tau: float = 0.2,
    alpha: float = 0.05,
    beta: float = 2.0,
    variant: str = "official",
    positive_label: str = "joint",
    expected: bool = False,
    reduction: str = "mean",
    spa_weight: float = 1.0,
) -> Tensor:
    """Total MCL loss L_ccm + lambda * L_spa, Eq. 10; per view ccm + w * spa.

    Arguments as in :func:`ccm_loss` and :func:`spa_loss`; ``spa_weight`` is
    lambda. The two terms share one similarity matrix.
    """
    # NOTE: with views lacking a partner, the mean of the "none" rows differs
    # from the "mean" loss: SPA is averaged over the views that have one.
    ccm, spa = mcl_loss_terms(
        z, labels, aux_labels, positives=positives, generator=generator,
        tau=tau, alpha=alpha, beta=beta, variant=variant,
        positive_label=positive_label, expected=expected, reduction=reduction,
    )
    return ccm + spa_weight * spa


def supcon_loss(
    z: Tensor,
    labels: Tensor,
    *,
    tau: float = 0.2,
    base_tau: float | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Supervised contrastive loss L_out of Khosla et al. (SPEC §5).

    Positives of view a: every other view with its label (the partner too).
    With ``base_tau`` the rows are scaled by tau / base_tau, as in the
    SupCon reference code. No cosine clamp (not part of MCL's code).
    """
    _check_choice("reduction", reduction, REDUCTIONS)
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    if base_tau is not None and not base_tau > 0:
        raise ValueError(f"base_tau must be None or > 0, got {base_tau!r}")
    z = _check_z(z)
    labels = _check_labels(labels, len(z) // 2, "labels")

    sim = _cosine(z, "paper")  # (2N, 2N)
    same, _ = _relations(labels, None, z.device)  # (N, N)
    rows = _rows(sim, 1 / tau, tau, pos_entries=same)  # (2N,)
    if base_tau is not None:
        rows = rows * (tau / base_tau)
    return _reduce(rows, reduction)
