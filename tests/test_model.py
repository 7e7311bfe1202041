"""Tests for mcl_core.model: shapes, training steps, checkpoint loading."""

import argparse

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mcl_core.model import (
    ARCHS,
    MCLNet,
    load_released_checkpoint,
    model_summary,
    released_checkpoint_info,
)

SMALL = dict(proj_hidden=32, proj_dim=16)


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=gen)  # (N, 3, H, W)


def _toy_contrastive(z: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    # NT-Xent on interleaved views: rows 2e and 2e+1 are one entry's views
    zn = F.normalize(z, dim=1)
    sim = zn @ zn.T / tau  # (2N, 2N)
    self_mask = torch.eye(len(z), dtype=torch.bool)
    sim = sim.masked_fill(self_mask, float("-inf"))
    partner = torch.arange(len(z)) ^ 1  # (2N,)
    return F.cross_entropy(sim, partner)


def _reference_released() -> nn.Module:
    """The authors' module layout, built from torchvision's ResNet-34."""
    enc = torchvision.models.resnet34(weights=None)
    enc.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    enc.maxpool = nn.Identity()
    enc.fc = nn.Identity()
    ref = nn.Module()
    ref.enc = enc
    ref.projector = nn.Sequential(
        nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 128)
    )

    # non-trivial BN statistics so that eval-mode outputs depend on them
    gen = torch.Generator().manual_seed(1)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
            m.weight.data.copy_(0.5 + torch.rand(c, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=gen))
            m.num_batches_tracked.fill_(7)
    return ref.eval()


@pytest.fixture(scope="module")
def released():
    torch.manual_seed(0)
    ref = _reference_released()
    return ref, ref.state_dict()


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("width,size", [(8, 16), (16, 32)])
def test_output_shapes(arch, width, size):
    torch.manual_seed(0)
    model = MCLNet(
        arch, width=width, num_classes=10, rotation_head=True, **SMALL
    )
    out = model(_images(4, size))

    assert model.feature_dim == 8 * width
    assert out.h.shape == (4, 8 * width)
    assert out.z.shape == (4, 16)
    assert out.logits.shape == (4, 10)
    assert out.rot_logits.shape == (4, 4)
    assert torch.isfinite(out.z).all()


def test_heads_absent_by_default_and_features_match_forward():
    torch.manual_seed(0)
    model = MCLNet("resnet10", width=8, **SMALL).eval()
    x = _images(3, 32)
    out = model(x)

    assert out.logits is None and out.rot_logits is None
    assert model.classifier is None and model.rotation_head is None
    torch.testing.assert_close(model.features(x), out.h, rtol=0, atol=0)
    torch.testing.assert_close(model.projector(out.h), out.z, rtol=0, atol=0)


def test_last_stage_keeps_cifar_resolution():
    # 3x3 stride-1 stem, no max-pool: 32x32 reaches layer4 at 4x4
    model = MCLNet("resnet18", width=8, **SMALL)
    shapes = []
    model.enc.layer4.register_forward_hook(
        lambda mod, inp, out: shapes.append(out.shape) and None
    )
    model(_images(2, 32))
    assert shapes == [(2, 64, 4, 4)]


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_sgd_step_changes_every_parameter(arch):
    torch.manual_seed(0)
    model = MCLNet(arch, width=8, **SMALL).train()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    loss = _toy_contrastive(model(_images(8, 16)).z)
    opt.zero_grad()
    loss.backward()
    opt.step()

    assert torch.isfinite(loss)
    assert loss.item() > 0
    unchanged = [
        k for k, p in model.named_parameters() if torch.equal(p, before[k])
    ]
    assert not unchanged, f"parameters not updated: {unchanged[:5]}"


def test_param_count_matches_torchvision_resnet34_with_cifar_stem():
    tv = torchvision.models.resnet34(weights=None)
    fc = sum(p.numel() for p in tv.fc.parameters())
    stem_7x7 = tv.conv1.weight.numel()
    expected = sum(p.numel() for p in tv.parameters()) - fc - stem_7x7
    expected += 64 * 3 * 3 * 3  # 3x3 stem, no bias

    model = MCLNet("resnet34", width=64)
    summary = model_summary(model)

    assert summary["encoder_params"] == expected == 21_276_992
    assert summary["params"] == expected + 512 * 2048 + 2048 + 2048 * 128 + 128
    assert summary["arch"] == "resnet34" and summary["width"] == 64
    assert summary["feature_dim"] == 512


def test_encoder_keys_follow_torchvision_layout():
    tv = torchvision.models.resnet34(weights=None)
    tv_keys = {k for k in tv.state_dict() if not k.startswith("fc.")}
    enc_keys = set(MCLNet("resnet34", width=8).enc.state_dict())
    assert enc_keys == tv_keys


@pytest.mark.parametrize(
    "prefix,as_path", [("", True), ("module.", True), ("module.", False)]
)
def test_released_checkpoint_reproduces_reference(
    released, tmp_path, prefix, as_path
):
    ref, state = released
    ckpt = {"net": {prefix + k: v for k, v in state.items()}, "epoch": 800}
    if as_path:
        torch.save(ckpt, tmp_path / "epoch_800.pt")
        ckpt = tmp_path / "epoch_800.pt"

    kwargs = released_checkpoint_info()["model_kwargs"]
    model = MCLNet(**kwargs, num_classes=10)
    load_released_checkpoint(model, ckpt).eval()

    x = _images(2, 32, seed=3)
    with torch.no_grad():
        out = model(x)
        h_ref = ref.enc(x)
        z_ref = ref.projector(h_ref)
    torch.testing.assert_close(out.h, h_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.z, z_ref, rtol=1e-5, atol=1e-5)
    assert model.enc.bn1.num_batches_tracked.item() == 7


def test_released_checkpoint_accepts_bare_state_dict(released):
    ref, state = released
    model = load_released_checkpoint(MCLNet(), state)
    torch.testing.assert_close(
        model.projector[2].bias, ref.projector[2].bias, rtol=0, atol=0
    )


def test_released_checkpoint_refuses_other_architecture(released):
    _, state = released
    match = "holds resnet34 width 64.*model is resnet18 width 64"
    with pytest.raises(ValueError, match=match):
        load_released_checkpoint(MCLNet("resnet18", width=64), {"net": state})
    match = "projector 512-2048-128.*projector 512-2048-64"
    with pytest.raises(ValueError, match=match):
        load_released_checkpoint(MCLNet(proj_dim=64), {"net": state})


def test_released_checkpoint_lists_bad_keys(released):
    _, state = released
    broken = dict(state)
    del broken["enc.layer3.5.bn2.weight"]
    broken["enc.fc.weight"] = torch.zeros(10, 512)
    with pytest.raises(RuntimeError, match="enc.layer3.5.bn2.weight") as err:
        load_released_checkpoint(MCLNet(), {"net": broken})
    assert "enc.fc.weight" in str(err.value)


def test_checkpoint_file_errors_name_the_problem(tmp_path):
    model = MCLNet("resnet10", width=8, **SMALL)
    with pytest.raises(FileNotFoundError, match="missing.pt.*dl=1"):
        load_released_checkpoint(model, tmp_path / "missing.pt")

    # weights_only refuses arbitrary pickled objects
    ckpt = {"net": {}, "args": argparse.Namespace(lr=1.2)}
    torch.save(ckpt, tmp_path / "a.pt")
    with pytest.raises(RuntimeError, match="weights_only=False"):
        load_released_checkpoint(model, tmp_path / "a.pt")


def test_same_layout_state_loads_into_small_model():
    torch.manual_seed(0)
    src = MCLNet("resnet10", width=8, **SMALL).eval()
    dst = MCLNet("resnet10", width=8, rotation_head=True, **SMALL).eval()
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    load_released_checkpoint(dst, state)
    x = _images(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(dst(x).z, src(x).z, rtol=0, atol=0)


def test_released_checkpoint_info_points_to_direct_download():
    info = released_checkpoint_info()
    assert info["url"].endswith("epoch_800.pt?dl=1")
    assert info["model_kwargs"] == dict(
        arch="resnet34", width=64, proj_hidden=2048, proj_dim=128
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(arch="resnet50"), "arch must be one of.*resnet10.*'resnet50'"),
        (dict(width=0), "width must be an integer >= 1, got 0"),
        (dict(width=2.5), "width must be an integer >= 1, got 2.5"),
        (dict(num_classes=-1), "num_classes must be an integer >= 0, got -1"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MCLNet(**kwargs)


def test_channels_last_and_bfloat16_autocast():
    torch.manual_seed(0)
    model = MCLNet("resnet10", width=8, num_classes=3, **SMALL).eval()
    x = _images(4, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        x_cl = x.to(memory_format=torch.channels_last)
        out_cl = model(x_cl)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf = model(x_cl)

    torch.testing.assert_close(out_cl.z, ref.z, rtol=1e-4, atol=1e-5)
    assert out_bf.z.dtype == torch.bfloat16
    scale = ref.z.abs().max().item()
    torch.testing.assert_close(
        out_bf.z.float(), ref.z, rtol=0.05, atol=0.05 * scale
    )
    assert out_bf.logits.shape == (4, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_matches_cpu():
    torch.manual_seed(0)
    model = MCLNet("resnet18", width=16, rotation_head=True, **SMALL).eval()
    x = _images(4, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.cuda().to(memory_format=torch.channels_last)
        out = model(x.cuda().to(memory_format=torch.channels_last))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out_bf = model(x.cuda())

    torch.testing.assert_close(out.z.cpu(), ref.z, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(
        out.rot_logits.cpu(), ref.rot_logits, rtol=1e-3, atol=1e-3
    )
    assert out_bf.z.dtype == torch.bfloat16
    assert torch.isfinite(out_bf.z).all()


def test_frozen_encoder_unchanged_after_head_step():
    # the sanity check of moco's linear evaluation, as a test
    torch.manual_seed(0)
    model = MCLNet("resnet10", width=8, num_classes=5, **SMALL)
    model.enc.requires_grad_(False)
    model.enc.eval()  # frozen BN statistics as well as weights
    model.classifier.train()
    enc_before = {k: v.clone() for k, v in model.enc.state_dict().items()}
    head_before = model.classifier.weight.detach().clone()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4
    )

    out = model(_images(6, 16))
    loss = F.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3, 4, 0]))
    opt.zero_grad()
    loss.backward()
    opt.step()

    for k, v in model.enc.state_dict().items():
        torch.testing.assert_close(v, enc_before[k], rtol=0, atol=0)
    assert not torch.equal(model.classifier.weight, head_before)
