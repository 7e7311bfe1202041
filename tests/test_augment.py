"""Batched augmentation: equal to torchvision per image, same distributions."""

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

from mcl_core import augment as A
from mcl_core.augment import TrainAugment

N_DRAWS = 20_000


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 32, 32, generator=g)  # (N, 3, H, W)
    x[0, :, :8] = 0.5  # grey pixels: zero chroma
    x[1, 0] = x[1, 1]  # ties between red and green
    return x


@pytest.mark.parametrize(
    "ours, theirs, lo, hi",
    [
        (A.adjust_brightness, TF.adjust_brightness, 0.6, 1.4),
        (A.adjust_contrast, TF.adjust_contrast, 0.6, 1.4),
        (A.adjust_saturation, TF.adjust_saturation, 0.6, 1.4),
        (A.adjust_hue, TF.adjust_hue, -0.1, 0.1),
    ],
)
def test_jitter_ops_match_torchvision_per_image(images, ours, theirs, lo, hi):
    f = torch.linspace(lo, hi, len(images))  # (N,)
    expected = torch.stack([theirs(x, float(v)) for x, v in zip(images, f)])
    assert_close(ours(images.clone(), f), expected, rtol=0, atol=1e-5)


def test_gray_matches_torchvision(images):
    expected = TF.rgb_to_grayscale(images)
    assert_close(A.to_gray(images), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_crop_is_taken_from_rotated_mirror(images, k, flip):
    # crops of at most 32 pixels resized to 40: upsampling, as in training
    g = torch.Generator().manual_seed(k)
    box = TrainAugment(32).sample_params(len(images), 32, 32, g).box  # (N, 4)
    n = len(images)
    out = A.flip_rotate_crop(
        images, box, torch.full((n,), flip), torch.full((n,), k), 40
    )

    # torchvision: mirror, rotate, crop then bilinear resize, one image at a time
    src = images.flip(-1) if flip else images
    src = torch.rot90(src, k, dims=(-2, -1))
    expected = torch.stack([
        TF.resized_crop(s, *b.tolist(), [40, 40], antialias=True)
        for s, b in zip(src, box)
    ])
    assert_close(out, expected, rtol=0, atol=1e-5)


def test_full_box_gives_exact_rot90_of_mirror(images):
    n = len(images)
    box = torch.tensor([[0, 0, 32, 32]] * n)
    k = torch.arange(n) % 4
    flip = torch.arange(n) % 3 == 0
    out = A.flip_rotate_crop(images, box, flip, k, 32)
    for a in range(n):
        src = images[a].flip(-1) if flip[a] else images[a]
        expected = torch.rot90(src, int(k[a]), dims=(-2, -1))
        assert_close(out[a], expected, rtol=0, atol=1e-6)


def test_crop_box_distribution_matches_torchvision():
    aug = TrainAugment(32)
    g = torch.Generator().manual_seed(1)
    ours = aug.sample_params(N_DRAWS, 32, 32, g).box.double()  # (n, 4)

    torch.manual_seed(2)
    ref = torch.tensor(
        [T.RandomResizedCrop.get_params(torch.empty(3, 32, 32), (0.08, 1.0),
                                        (3 / 4, 4 / 3)) for _ in range(N_DRAWS)],
        dtype=torch.float64,
    )  # (n, 4) top, left, h, w
    for box in (ours, ref):
        top, left, h, w = box.T
        assert (top >= 0).all() and (top + h <= 32).all()
        assert (left >= 0).all() and (left + w <= 32).all()

    def summary(box):
        top, left, h, w = box.T
        area = h * w / 1024
        log_ratio = torch.log(w / h)
        pos = top / (32 - h).clamp(min=1)
        q = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
        return torch.cat([area.quantile(q), log_ratio.quantile(q), pos.mean()[None]])

    # quantiles of area share, log aspect ratio, mean relative position
    assert_close(summary(ours), summary(ref), rtol=0, atol=0.03)
    area = ours[:, 2] * ours[:, 3] / 1024
    assert area.min() >= 0.06 and area.max() == 1.0


def test_jitter_ranges_equal_torchvision_color_jitter():
    ref = T.ColorJitter(0.4, 0.4, 0.4, 0.1)
    expected = (ref.brightness, ref.contrast, ref.saturation, ref.hue)
    ranges = TrainAugment(32, jitter=0.5).jitter_ranges
    for got, want in zip(ranges, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_jitter_factors_and_probabilities_match_settings():
    aug = TrainAugment(32)
    g = torch.Generator().manual_seed(3)
    p = aug.sample_params(N_DRAWS, 32, 32, g)

    # uniform factors: range, mean and spread of U(lo, hi)
    for col, (lo, hi) in enumerate(aug.jitter_ranges):
        f = p.factors[:, col].double()
        assert lo <= f.min() and f.max() <= hi
        width = hi - lo
        assert abs(f.mean() - (lo + hi) / 2) < 4 * width / math.sqrt(12 * N_DRAWS)
        assert abs(f.std() - width / math.sqrt(12)) < 0.01 * width

    # Bernoulli draws within 4 standard errors
    for flag, prob in ((p.flip, 0.5), (p.jitter, 0.8), (p.gray, 0.2)):
        se = math.sqrt(prob * (1 - prob) / N_DRAWS)
        assert abs(flag.double().mean() - prob) < 4 * se

    # every one of the 24 orders, about equally often
    assert (p.order.sort(dim=1).values == torch.arange(4)).all()
    codes = (p.order * torch.tensor([64, 16, 4, 1])).sum(1)
    counts = torch.unique(codes, return_counts=True)[1].double()
    assert len(counts) == 24
    assert (counts / N_DRAWS - 1 / 24).abs().max() < 4 * math.sqrt(1 / 24 / N_DRAWS)


def test_same_seed_gives_same_views(images):
    aug = TrainAugment(16)
    k = torch.arange(len(images)) % 4
    a = aug(images, k, torch.Generator().manual_seed(7))
    b = aug(images, k, torch.Generator().manual_seed(7))
    c = aug(images, k, torch.Generator().manual_seed(8))
    assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 0.1
    assert a.shape == (len(images), 3, 16, 16)
    assert a.min() >= 0 and a.max() <= 1


def test_gray_views_have_equal_channels_and_identity_params_change_nothing(images):
    n = len(images)
    aug = TrainAugment(32)
    params = A.AugmentParams(
        box=torch.tensor([[0, 0, 32, 32]] * n),
        flip=torch.zeros(n, dtype=torch.bool),
        jitter=torch.zeros(n, dtype=torch.bool),
        factors=torch.ones(n, 4),
        order=torch.arange(4).repeat(n, 1),
        gray=torch.arange(n) < 3,
    )
    out = aug.apply(images, params)
    assert_close(out[3:], images[3:], rtol=0, atol=1e-6)
    assert_close(out[:3, 0], out[:3, 2], rtol=0, atol=0)
    assert_close(out[:3, :1], A.to_gray(images[:3]), rtol=0, atol=1e-6)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="crop_scale"):
        TrainAugment(32, crop_scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="p_gray"):
        TrainAugment(32, p_gray=1.5)
    with pytest.raises(ValueError, match="float"):
        TrainAugment(32)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_runs_on_device_and_is_reproducible(images):
    x = images.cuda()
    aug = TrainAugment(32)
    a = aug(x, None, torch.Generator("cuda").manual_seed(0))
    b = aug(x, None, torch.Generator("cuda").manual_seed(0))
    assert a.is_cuda
    assert_close(a, b, rtol=0, atol=0)

    # a CPU generator with CUDA data gives the CPU draws' views
    p = aug.sample_params(len(x), 32, 32, torch.Generator().manual_seed(1))
    c = aug(x, None, torch.Generator().manual_seed(1))
    assert_close(c.cpu(), aug.apply(images, p), rtol=0, atol=1e-5)
