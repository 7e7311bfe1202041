"""Tests of mcl_core.losses against the vectors in tests/data (VECTORS.md)."""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from mcl_core import losses
from mcl_core.losses import (
    ccm_loss,
    draw_spa_positives,
    mcl_loss,
    nt_xent,
    spa_loss,
    supcon_loss,
)

DATA = Path(__file__).parent / "data"


@functools.cache
def _npz(name: str) -> dict:
    with np.load(DATA / f"{name}.npz") as d:
        return {k: d[k] for k in d.files}


def _t(array) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array))


# ---------------------------------------------------------------------------
# the stored vectors: every case, both variants, float64 and float32


def _vector_cases() -> list:
    cases = []
    for name in ("nt_xent", "ccm", "ccm_aux"):
        for case in ("S8", "M256"):
            for var in "un":
                for mode in ("paper", "official"):
                    cases.append((name, case, var, mode))
    for case in ("S8b", "S12", "M256"):
        for var in "un":
            for mode in ("paper", "official", "paper_expected"):
                cases.append(("spa", case, var, mode))
    for case in ("S12", "M256"):
        for var in "un":
            for mode in ("paper", "official"):
                cases.append(("mcl", case, var, mode))
    for case in ("S8", "M256"):
        for var in "un":
            cases.append(("supcon", case, var, "ref"))
    return [pytest.param(*c, id="-".join(c)) for c in cases]


def _call(name: str, case: str, mode: str, z: torch.Tensor, reduction: str):
    """The loss of one vector file, with that file's labels and settings."""
    inp, d = _npz("inputs"), _npz(name)
    variant = "official" if mode == "official" else "paper"
    if name == "nt_xent":
        return nt_xent(z, variant=variant, reduction=reduction)
    if name == "supcon":
        return supcon_loss(z, _t(inp[f"main_{case}"]), reduction=reduction)
    if name == "ccm":
        labels = _t(inp[f"main_{case}"])
        return ccm_loss(z, labels, variant=variant, reduction=reduction)
    labels = _t(d.get(f"{case}__main", inp.get(f"main_{case}")))
    aux = d.get(f"{case}__aux", inp.get(f"aux_{case}"))
    aux = None if aux is None or case == "S8b" else _t(aux)
    settings = dict(beta=float(d[f"{variant}__beta"]), variant=variant)
    if name == "ccm_aux":
        return ccm_loss(z, labels, aux, reduction=reduction, **settings)
    key = "pos_entry" if variant == "official" else "pos_view"
    expected = mode == "paper_expected"
    positives = None if expected else _t(d[f"{case}__{key}"])
    fn = spa_loss if name == "spa" else mcl_loss
    return fn(
        z, labels, aux, positives=positives, expected=expected,
        reduction=reduction, **settings,
    )


def _tolerances(mode: str, dtype: torch.dtype, case: str, grad_max: float):
    """(rtol, atol) of VECTORS.md for values and for gradients."""
    official = mode == "official"
    if dtype == torch.float64:
        values = (1e-7 if official else 1e-9, 1e-10)
        if case == "M256":  # stored as float32
            grads = (0.0, 1e-6 * grad_max)
        else:
            grads = (1e-6 if official else 1e-7, 1e-10)
    else:
        values = (1e-4, 1e-5)
        if case == "M256":
            grads = (0.0, 1e-3 * grad_max)
        else:
            grads = (1e-3, 1e-5 * grad_max)
    return values, grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name, case, var, mode", _vector_cases())
def test_loss_matches_vectors(name, case, var, mode, dtype):
    d = _npz(name)
    z_case = "S8" if case == "S8b" else case
    z = _t(_npz("inputs")[f"z_{z_case}_{var}"]).to(dtype).requires_grad_()
    key = f"{case}_{var}__{mode}__"
    if name == "mcl":
        ref_rows = d[key + "ccm_rows"] + float(d["lam"]) * d[key + "spa_rows"]
    else:
        ref_rows = d[key + "rows"]
    ref_grad = _t(d[key + "grad"]).double()
    values_tol, grads_tol = _tolerances(mode, dtype, case, ref_grad.abs().max().item())

    loss = _call(name, case, mode, z, "mean")
    loss.backward()
    rows = _call(name, case, mode, z, "none")
    assert loss.dtype == dtype and rows.shape == (len(z),)
    rtol, atol = values_tol
    assert_close(loss.double(), _t(d[key + "loss"]), rtol=rtol, atol=atol)
    assert_close(rows.detach().double(), _t(ref_rows), rtol=rtol, atol=atol)
    rtol, atol = grads_tol
    assert_close(z.grad.double(), ref_grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("case, var", [("S12", "u"), ("M256", "n")])
@pytest.mark.parametrize("variant", ["paper", "official"])
def test_mcl_terms_match_ccm_and_spa_vectors(case, var, variant):
    d = _npz("mcl")
    inp = _npz("inputs")
    z = _t(inp[f"z_{case}_{var}"])
    labels, aux = _t(inp[f"main_{case}"]), _t(inp[f"aux_{case}"])
    key = "pos_entry" if variant == "official" else "pos_view"
    settings = dict(beta=float(d[f"{variant}__beta"]), variant=variant)
    ccm = ccm_loss(z, labels, aux, reduction="none", **settings)
    spa = spa_loss(
        z, labels, aux, positives=_t(d[f"{case}__{key}"]), reduction="none",
        **settings,
    )
    prefix = f"{case}_{var}__{variant}__"
    assert_close(ccm, _t(d[prefix + "ccm_rows"]), rtol=1e-7, atol=1e-10)
    assert_close(spa, _t(d[prefix + "spa_rows"]), rtol=1e-7, atol=1e-10)

    # the shared-similarity terms the trainer logs are the same two losses
    terms = losses.mcl_loss_terms(
        z, labels, aux, positives=_t(d[f"{case}__{key}"]), **settings
    )
    assert_close(terms[0], ccm.mean(), rtol=1e-12, atol=0.0)
    assert_close(terms[1], spa.mean(), rtol=1e-12, atol=0.0)


# ---------------------------------------------------------------------------
# a toy batch worked out by hand: 2 entries of one class, D = 2


def _toy():
    # unit directions at angles giving the cosines below; views 2, 3 have
    # norm 2 (the losses normalise)
    z = torch.tensor(
        [[1.0, 0.0], [0.6, 0.8], [0.0, 2.0], [-1.2, 1.6]], dtype=torch.float64
    )
    # s01 = 0.6, s02 = 0, s03 = -0.6, s12 = 0.8, s13 = 0.28, s23 = 0.8
    return z, torch.tensor([0, 0])


def test_toy_batch_paper_mcl_equals_hand_value():
    z, labels = _toy()
    tau, alpha, e = 0.2, 0.05, math.exp
    # CCM, Eq. 4-6 read literally: the partner has coefficient alpha below
    ccm = [
        -0.6 / tau + math.log(e(alpha * 0.6) + e(0.0) + e(alpha * -0.6)),
        -0.6 / tau + math.log(e(alpha * 0.6) + e(alpha * 0.8) + e(alpha * 0.28)),
        -0.8 / tau + math.log(e(0.0) + e(alpha * 0.8) + e(alpha * 0.8)),
        -0.8 / tau + math.log(e(alpha * -0.6) + e(alpha * 0.28) + e(alpha * 0.8)),
    ]
    # SPA, Eq. 8 with j = (2, 3, 0, 1): only the other entry's two views remain
    spa = [
        -0.0 / tau + math.log(e(0.0) + e(alpha * -0.6)),
        -0.28 / tau + math.log(e(alpha * 0.8) + e(alpha * 0.28)),
        -0.0 / tau + math.log(e(0.0) + e(alpha * 0.8)),
        -0.28 / tau + math.log(e(alpha * -0.6) + e(alpha * 0.28)),
    ]
    positives = torch.tensor([2, 3, 0, 1])
    loss = mcl_loss(z, labels, positives=positives, variant="paper")
    expected = torch.tensor(sum(ccm) / 4 + sum(spa) / 4, dtype=torch.float64)
    assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    rows = spa_loss(z, labels, positives=positives, variant="paper", reduction="none")
    assert_close(rows, torch.tensor(spa, dtype=torch.float64), rtol=1e-12, atol=0)


def test_toy_batch_official_ccm_and_nt_xent_equal_hand_values():
    z, labels = _toy()
    tau, e, floor = 0.2, math.exp, 1e-7
    alpha = 0.04999995231628418  # 0.05 after the released float32 mask sums
    # released rule: partner 1/tau, cosines below 1e-7 clamped to 1e-7
    ccm = [
        -3.0 + math.log(e(3.0) + 2 * e(alpha * floor)),
        -3.0 + math.log(e(3.0) + e(alpha * 0.8) + e(alpha * 0.28)),
        -4.0 + math.log(e(alpha * floor) + e(alpha * 0.8) + e(4.0)),
        -4.0 + math.log(e(alpha * floor) + e(alpha * 0.28) + e(4.0)),
    ]
    rows = ccm_loss(z, labels, reduction="none")
    assert_close(rows, torch.tensor(ccm, dtype=torch.float64), rtol=1e-12, atol=0)
    # SimCLR, Eq. 1-2 (paper variant, no clamp), row of view 0
    row0 = -3.0 + math.log(e(3.0) + e(0.0) + e(-3.0))
    rows = nt_xent(z, variant="paper", reduction="none")
    assert_close(rows[0].item(), row0, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------
# the explicit backward of the shared core, checked by finite differences


@pytest.mark.parametrize(
    "fn",
    [
        lambda z, y, r: nt_xent(z, variant="paper", reduction="none"),
        lambda z, y, r: ccm_loss(z, y, r, variant="paper", reduction="none"),
        lambda z, y, r: spa_loss(
            z, y, r, generator=torch.Generator().manual_seed(1), reduction="none"
        ),
        lambda z, y, r: spa_loss(
            z, y, r, variant="paper", positive_label="main", reduction="none",
            generator=torch.Generator().manual_seed(2),
        ),
        lambda z, y, r: spa_loss(
            z, y, r, variant="paper", expected=True, reduction="none"
        ),
        lambda z, y, r: mcl_loss(
            z, y, r, generator=torch.Generator().manual_seed(3), reduction="sum",
            spa_weight=0.5,
        ),
        lambda z, y, r: supcon_loss(z, y, base_tau=0.07, reduction="none"),
    ],
    ids=["nt_xent", "ccm", "spa-off", "spa-main", "spa-exp", "mcl", "supcon"],
)
def test_explicit_gradient_passes_gradcheck(fn):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(8, 3, generator=gen, dtype=torch.float64).requires_grad_()
    labels = torch.tensor([0, 1, 0, 1])
    aux = torch.tensor([0, 0, 0, 1])  # entries 1 and 3 lack a joint partner
    assert torch.autograd.gradcheck(lambda x: fn(x, labels, aux), (z,))


# ---------------------------------------------------------------------------
# SPEC decision 4: a view without a same-label partner


@pytest.fixture
def fresh_warning(monkeypatch):
    monkeypatch.setattr(losses, "_warned_no_partner", False)


def test_view_without_partner_is_left_out_and_warned_once(caplog, fresh_warning):
    inp, d = _npz("inputs"), _npz("mcl")
    # S8 with aux: entries 1 and 3 have no other entry with their joint label
    z = _t(inp["z_S8_u"]).requires_grad_()
    labels, aux = _t(inp["main_S8"]), _t(inp["aux_S8"])
    gen = torch.Generator().manual_seed(0)
    positives = draw_spa_positives(labels, aux, generator=gen)
    assert positives.tolist() == [2, -1, 0, -1]

    with caplog.at_level(logging.DEBUG, logger="mcl_core.losses"):
        rows = spa_loss(z, labels, aux, positives=positives, reduction="none")
        loss = mcl_loss(z, labels, aux, positives=positives)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "4 of 8 views" in warnings[0].getMessage()
    assert any(r.levelno == logging.DEBUG for r in caplog.records)

    # rows of entries 1 and 3 are 0; the SPA mean runs over the other 4
    assert rows[[2, 3, 6, 7]].eq(0).all() and rows[[0, 1, 4, 5]].ne(0).all()
    ccm = ccm_loss(z, labels, aux)
    assert_close(loss, ccm + rows.sum() / 4, rtol=1e-12, atol=0)
    loss.backward()
    assert torch.isfinite(z.grad).all()
    # the released loop trains such a batch on CCM alone: not the rule here
    assert abs(loss.item() - float(d["S8_u__official_degenerate__loss"])) > 1e-3


def test_batch_with_no_partner_at_all_gives_zero_spa(fresh_warning):
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for variant in ("official", "paper"):
        loss = spa_loss(z, torch.tensor([0, 1]), variant=variant)
        loss.backward()
        assert loss.item() == 0.0 and z.grad.eq(0).all()


# ---------------------------------------------------------------------------
# invariances


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(16, 6, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    aux = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # joint pairs (0,2),(1,3),...
    return z, labels, aux


_ALL_LOSSES = [
    ("nt_xent", lambda z, y, r, p, **k: nt_xent(z, **k)),
    ("ccm", lambda z, y, r, p, **k: ccm_loss(z, y, r, **k)),
    ("spa", lambda z, y, r, p, **k: spa_loss(z, y, r, positives=p, **k)),
    ("mcl", lambda z, y, r, p, **k: mcl_loss(z, y, r, positives=p, **k)),
    ("supcon", lambda z, y, r, p, **k: supcon_loss(z, y, **k)),
]


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("name, fn", _ALL_LOSSES, ids=[n for n, _ in _ALL_LOSSES])
def test_permuting_entries_permutes_rows(name, fn, variant):
    z, labels, aux = _batch()
    n = len(labels)
    positives = draw_spa_positives(
        labels, aux, generator=torch.Generator().manual_seed(5), variant=variant
    )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(6))
    view_perm = (2 * perm[:, None] + torch.arange(2)).flatten()  # (2N,)
    if variant == "official":
        inverse = torch.argsort(perm)
        moved = inverse[positives[perm]]
    else:
        inverse = torch.argsort(view_perm)
        moved = inverse[positives[view_perm]]

    kwargs = {} if name == "supcon" else {"variant": variant}
    rows = fn(z, labels, aux, positives, reduction="none", **kwargs)
    rows_p = fn(
        z[view_perm], labels[perm], aux[perm], moved, reduction="none", **kwargs
    )
    assert_close(rows_p, rows[view_perm], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_renaming_classes_changes_nothing(variant):
    z, labels, aux = _batch()
    renamed = torch.tensor([7, 3])[labels], torch.tensor([2, 9])[aux]
    for fn in (mcl_loss, spa_loss):
        # the same seed draws the same positives: draws see only equalities
        a = fn(z, labels, aux, generator=torch.Generator().manual_seed(4),
               variant=variant, positive_label="main", reduction="none")
        b = fn(z, *renamed, generator=torch.Generator().manual_seed(4),
               variant=variant, positive_label="main", reduction="none")
        assert_close(a, b, rtol=0, atol=0)
    assert_close(supcon_loss(z, labels), supcon_loss(z, renamed[0]), rtol=0, atol=0)


def test_expected_spa_is_mean_over_all_positives():
    # S12: every view has exactly 4 positives (2 entries x 2 views)
    inp = _npz("inputs")
    z = _t(inp["z_S12_u"])
    labels, aux = _t(inp["main_S12"]), _t(inp["aux_S12"])
    same = (labels[:, None] == labels) & (aux[:, None] == aux)
    same.fill_diagonal_(False)
    cand = same.repeat_interleave(2, 0).repeat_interleave(2, 1)  # (2N, 2N)
    options = torch.nonzero(cand)[:, 1].view(len(z), 4)  # (2N, 4)
    sampled = torch.stack([
        spa_loss(z, labels, aux, positives=options[:, k], variant="paper",
                 reduction="none")
        for k in range(4)
    ])
    exact = spa_loss(z, labels, aux, variant="paper", expected=True, reduction="none")
    assert_close(exact, sampled.mean(0), rtol=1e-12, atol=1e-12)


def test_reductions_and_spa_weight_combine_rows():
    z, labels, aux = _batch()
    pos = draw_spa_positives(labels, aux, generator=torch.Generator().manual_seed(0))
    ccm = ccm_loss(z, labels, aux, reduction="none")
    spa = spa_loss(z, labels, aux, positives=pos, reduction="none")
    total = mcl_loss(z, labels, aux, positives=pos, spa_weight=2.0, reduction="none")
    assert_close(total, ccm + 2.0 * spa, rtol=1e-12, atol=0)
    summed = mcl_loss(z, labels, aux, positives=pos, reduction="sum")
    assert_close(summed, (ccm + spa).sum(), rtol=1e-12, atol=0)
    rows = supcon_loss(z, labels, reduction="none")
    scaled = supcon_loss(z, labels, base_tau=0.07)
    assert_close(scaled, rows.mean() * 0.2 / 0.07, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------
# drawing positives


def test_same_seed_draws_same_positives():
    labels = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(0))
    for variant in ("official", "paper"):
        a, b, c = (
            draw_spa_positives(
                labels, generator=torch.Generator().manual_seed(s), variant=variant
            )
            for s in (11, 11, 12)
        )
        assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("positive_label", ["joint", "main"])
def test_drawn_positives_are_same_label_views_of_other_entries(positive_label):
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (40,), generator=gen)
    labels[7] = 9  # a class with one entry
    aux = torch.randint(0, 4, (40,), generator=gen)
    key = labels * 4 + aux if positive_label == "joint" else labels
    has_partner = [(key == key[e]).sum() > 1 for e in range(len(key))]
    assert not all(has_partner)  # some entries have none

    entry = draw_spa_positives(
        labels, aux, generator=gen, positive_label=positive_label
    )  # (N,)
    view = draw_spa_positives(
        labels, aux, generator=gen, variant="paper", positive_label=positive_label
    )  # (2N,)
    for e, p in enumerate(entry.tolist()):
        assert (p == -1) == (not has_partner[e])
        assert p == -1 or (p != e and key[p] == key[e])
    for a, j in enumerate(view.tolist()):
        assert (j == -1) == (not has_partner[a // 2])
        assert j == -1 or (j // 2 != a // 2 and key[j // 2] == key[a // 2])
    if positive_label == "main":
        hit = entry >= 0
        assert (aux[entry[hit]] != aux[hit]).any()


def test_draws_are_uniform_over_candidates():
    # groups of 4 entries with one label each: 3 candidates per entry
    labels = torch.arange(2000) // 4
    gen = torch.Generator().manual_seed(0)
    entry = draw_spa_positives(labels, generator=gen)
    offset = (entry - torch.arange(2000)) % 4  # 1, 2 or 3
    freq = torch.bincount(offset, minlength=4)[1:] / 2000
    assert_close(freq, torch.full((3,), 1 / 3), rtol=0, atol=0.04)
    view = draw_spa_positives(labels, generator=gen, variant="paper")
    assert_close((view % 2).double().mean().item(), 0.5, rtol=0, atol=0.03)


# ---------------------------------------------------------------------------
# bad input


_Z = torch.randn(8, 3)
_Y = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: nt_xent(torch.randn(8)), "got shape (8,)"),
        (lambda: nt_xent(torch.randn(7, 3)), "got 7 rows"),
        (lambda: nt_xent(torch.full((4, 2), math.nan)), "8 NaN"),
        (lambda: nt_xent(_Z, tau=0.0), "tau must be > 0, got 0.0"),
        (lambda: nt_xent(_Z, variant="literal"), "got 'literal'"),
        (lambda: nt_xent(_Z, reduction="avg"), "got 'avg'"),
        (lambda: ccm_loss(_Z, torch.tensor([0, 1, 2])), "got length 3"),
        (lambda: ccm_loss(_Z, _Y[:, None]), "got (4, 1)"),
        (lambda: ccm_loss(_Z, _Y, torch.zeros(5, dtype=int)), "got length 5"),
        (lambda: ccm_loss(_Z, _Y.float()), "torch.float32"),
        (lambda: ccm_loss(_Z, _Y, alpha=2.0), "alpha=2.0"),
        (lambda: ccm_loss(_Z, _Y, alpha=0.0), "alpha=0.0"),
        (lambda: ccm_loss(_Z, _Y, beta=5.0), "beta=5.0"),
        (lambda: ccm_loss(_Z, _Y, tau=-1.0), "got -1.0"),
        (lambda: spa_loss(_Z, _Y, positive_label="class"), "got 'class'"),
        (lambda: spa_loss(_Z, _Y, positives=torch.arange(8)), "got (8,)"),
        (lambda: spa_loss(_Z, _Y, positives=torch.tensor([0, 0, 3, 2])),
         "positives[0]=0"),
        (lambda: spa_loss(_Z, _Y, positives=torch.tensor([2, 0, 3, 2])),
         "positives[0]=2"),
        (lambda: spa_loss(_Z, _Y, positives=torch.tensor([2, 0, 0, 1, 6, 7, 4, 5]),
                          variant="paper"), "positives[1]=0"),
        (lambda: spa_loss(_Z, _Y, positives=torch.tensor([1, -1, 3, 2])),
         "positives[1]=-1"),
        (lambda: spa_loss(_Z, _Y, expected=True), "variant='official'"),
        (lambda: supcon_loss(_Z, _Y, base_tau=0.0), "got 0.0"),
        (lambda: draw_spa_positives(_Y, torch.zeros(3, dtype=int)), "length 3"),
    ],
)
def test_bad_input_raises_naming_the_value(call, fragment):
    with pytest.raises(ValueError) as info:
        call()
    assert fragment in str(info.value)


# ---------------------------------------------------------------------------
# devices and precision


def _m256():
    inp, d = _npz("inputs"), _npz("mcl")
    return (
        _t(inp["z_M256_u"]).float(), _t(inp["main_M256"]), _t(inp["aux_M256"]),
        _t(d["M256__pos_entry"]),
    )


def test_autocast_bfloat16_keeps_loss_float32():
    z, labels, aux, pos = _m256()
    ref = mcl_loss(z, labels, aux, positives=pos)
    z = z.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mcl_loss(z, labels, aux, positives=pos)
        # a bfloat16 projection, as a bf16 projector would give
        loss_bf16 = mcl_loss(z.bfloat16(), labels, aux, positives=pos)
    assert loss.dtype == torch.float32 and loss_bf16.dtype == torch.float32
    assert_close(loss, ref, rtol=1e-6, atol=0)
    assert_close(loss_bf16, ref, rtol=1e-2, atol=0)
    loss.backward()
    assert z.grad.dtype == torch.float32 and torch.isfinite(z.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    z, labels, aux, pos = _m256()
    results = []
    for device in ("cpu", "cuda"):
        zd = z.to(device).requires_grad_()
        loss = mcl_loss(zd, labels.to(device), aux.to(device), positives=pos.to(device))
        loss.backward()
        results.append((loss.cpu(), zd.grad.cpu()))
    assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    assert_close(results[1][1], results[0][1], rtol=1e-3, atol=1e-7)
    gen = torch.Generator("cuda").manual_seed(0)
    drawn = draw_spa_positives(labels.cuda(), aux.cuda(), generator=gen)
    assert drawn.is_cuda
    loss = mcl_loss(z.cuda(), labels.cuda(), aux.cuda(), positives=drawn)
    assert torch.isfinite(loss)
