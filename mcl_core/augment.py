"""Batched training augmentation on tensors, matching the released pipeline.

Per view (SPEC §9.7): a horizontal flip (p = 0.5) in the unrotated frame,
the entry's rotation, ``RandomResizedCrop`` at the training size (scale
(0.08, 1), ratio (3/4, 4/3)), ``ColorJitter(0.4, 0.4, 0.4, 0.1)`` with
p = 0.8 in a random order per view, and grayscale with p = 0.2; no mean/std
normalisation. Every view draws its own parameters from one generator, and
flip, rotation and crop are a single bilinear ``grid_sample``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

NUM_ATTEMPTS = 10  # crop proposals per view, as torchvision's RandomResizedCrop
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL and torchvision


@dataclass
class AugmentParams:
    """Random parameters of n views (all tensors on one device)."""

    box: Tensor  # (n, 4) int64 crop top, left, height, width in pixels
    flip: Tensor  # (n,) bool horizontal mirror in the unrotated frame
    jitter: Tensor  # (n,) bool colour jitter applied
    factors: Tensor  # (n, 4) brightness, contrast, saturation, hue shift
    order: Tensor  # (n, 4) int64 order of JITTER_OPS for each view
    gray: Tensor  # (n,) bool converted to grayscale

    def to(self, device: torch.device | str) -> "AugmentParams":
        """Move every field to device."""
        return AugmentParams(*(getattr(self, f).to(device) for f in self._fields()))

    @staticmethod
    def _fields() -> tuple[str, ...]:
        return ("box", "flip", "jitter", "factors", "order", "gray")


class TrainAugment:
    """SimCLR-style view augmentation applied batched on any device.

    ``jitter`` is the colour-jitter strength s of SimCLR: brightness,
    contrast and saturation factors in [1 - 0.8s, 1 + 0.8s], hue shift in
    [-0.2s, 0.2s] (s = 0.5 gives ColorJitter(0.4, 0.4, 0.4, 0.1)).

    NOTE: colour operations run in float on [0, 1]; the released code runs
    them through PIL on uint8, which rounds after each step (differences of
    about 1/255 per pixel).
    """

    def __init__(
        self,
        image_size: int,
        *,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        jitter: float = 0.5,
        p_jitter: float = 0.8,
        p_gray: float = 0.2,
        flip: bool = True,
    ) -> None:
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(
                f"crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}"
            )
        if not 0 < crop_ratio[0] <= crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {crop_ratio}")
        for name, p in (("p_jitter", p_jitter), ("p_gray", p_gray)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {p!r}")
        if not 0 <= jitter <= 1.25:
            raise ValueError(f"jitter strength must lie in [0, 1.25], got {jitter!r}")
        self.image_size = int(image_size)
        self.crop_scale = tuple(float(s) for s in crop_scale)
        self.crop_ratio = tuple(float(r) for r in crop_ratio)
        self.jitter = float(jitter)
        self.p_jitter = float(p_jitter)
        self.p_gray = float(p_gray)
        self.flip = bool(flip)

    def __repr__(self) -> str:
        return (
            f"TrainAugment(image_size={self.image_size}, crop_scale={self.crop_scale},"
            f" jitter={self.jitter}, p_jitter={self.p_jitter}, p_gray={self.p_gray},"
            f" flip={self.flip})"
        )

    @property
    def jitter_ranges(self) -> tuple[tuple[float, float], ...]:
        """(lo, hi) of the brightness, contrast, saturation and hue draws."""
        s = 0.8 * self.jitter
        hue = 0.2 * self.jitter
        return ((max(0.0, 1 - s), 1 + s),) * 3 + ((-hue, hue),)

    def sample_params(
        self,
        n: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
    ) -> AugmentParams:
        """Draw the parameters of n views on the generator's device."""
        device = generator.device if generator is not None else torch.device("cpu")

        def rand(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=generator, device=device)

        box = self._sample_boxes(n, height, width, rand)
        flip = rand(n) < (0.5 if self.flip else 0.0)
        jitter = rand(n) < self.p_jitter
        lo, hi = torch.tensor(self.jitter_ranges, device=device).T  # (4,), (4,)
        factors = lo + (hi - lo) * rand(n, 4)  # (n, 4)
        order = rand(n, 4).argsort(dim=1)  # (n, 4) a random permutation per view
        gray = rand(n) < self.p_gray
        return AugmentParams(box, flip, jitter, factors, order, gray)

    def _sample_boxes(self, n: int, height: int, width: int, rand) -> Tensor:
        """RandomResizedCrop boxes: first of 10 valid proposals, else centre."""
        area = height * width
        lo, hi = self.crop_scale
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        target = area * (lo + (hi - lo) * rand(n, NUM_ATTEMPTS))  # (n, 10)
        ratio = torch.exp(log_lo + (log_hi - log_lo) * rand(n, NUM_ATTEMPTS))
        w = torch.sqrt(target * ratio).round().long()  # (n, 10)
        h = torch.sqrt(target / ratio).round().long()  # (n, 10)
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (n, 10)
        first = ok.long().argmax(dim=1, keepdim=True)  # (n, 1)
        w = w.gather(1, first)[:, 0]  # (n,)
        h = h.gather(1, first)[:, 0]  # (n,)

        # no valid proposal: the largest centred box within the ratio range
        fw, fh = width, height
        if width / height < self.crop_ratio[0]:
            fh = int(round(fw / self.crop_ratio[0]))
        elif width / height > self.crop_ratio[1]:
            fw = int(round(fh * self.crop_ratio[1]))
        found = ok.any(dim=1)  # (n,)
        w = torch.where(found, w, fw)
        h = torch.where(found, h, fh)
        top = (rand(n) * (height - h + 1)).floor().long()
        left = (rand(n) * (width - w + 1)).floor().long()
        centred = ~found
        top = torch.where(centred, (height - h) // 2, top)
        left = torch.where(centred, (width - w) // 2, left)
        return torch.stack([top, left, h, w], dim=1)  # (n, 4)

    def __call__(
        self,
        x: Tensor,
        rotations: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Augment float images x (n, 3, H, W) in [0, 1] to (n, 3, S, S).

        ``rotations`` (n,) gives each row's quarter turns (counter-clockwise),
        applied after the flip and before the crop, as in the released code.
        """
        if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(
                f"x must be float (n, 3, H, W), got {x.dtype} {tuple(x.shape)}"
            )
        params = self.sample_params(len(x), x.shape[-2], x.shape[-1], generator)
        return self.apply(x, params.to(x.device), rotations)

    def apply(
        self, x: Tensor, params: AugmentParams, rotations: Tensor | None = None
    ) -> Tensor:
        """Augment x with given parameters (deterministic)."""
        out = flip_rotate_crop(x, params.box, params.flip, rotations, self.image_size)
        out = color_jitter(out, params.factors, params.order, params.jitter)
        if params.gray.any():
            out[params.gray] = to_gray(out[params.gray]).expand(-1, 3, -1, -1)
        return out


def flip_rotate_crop(
    x: Tensor,
    box: Tensor,
    flip: Tensor,
    rotations: Tensor | None,
    size: int,
) -> Tensor:
    """Mirror, turn, then crop-and-resize each row with one bilinear sample.

    The crop box (top, left, height, width) lives in the rotated frame and
    sampling positions are clamped to its pixel centres, so the result
    equals cropping first and then resizing bilinearly (align_corners=False).
    """
    # NOTE: no antialiasing: a crop larger than the output (size below the
    # crop side) is sampled, not averaged, unlike torchvision's resize. In
    # training the crop is at most the image and the output is the image
    # size, so the resize only ever enlarges and the two agree.
    n, _, height, width = x.shape
    if rotations is not None and height != width:
        raise ValueError(f"rotations need square images, got {height}x{width}")
    dev = x.device
    top, left, h, w = box.to(dev, torch.float32).unbind(dim=1)  # (n,) each

    # output pixel centres in [-1, 1], mapped into the crop box and clamped
    # to its first and last pixel centres (crop first, then resize)
    p = (torch.arange(size, device=dev, dtype=torch.float32) + 0.5) / size * 2 - 1
    qx = _to_box(p, left, w, width)  # (n, S) column coordinate
    qy = _to_box(p, top, h, height)  # (n, S) row coordinate

    # rot90^k shows the source at M^k(q) with M(x, y) = (-y, x): an even k
    # keeps the axes (k = 2 negates both), an odd k swaps them; the mirror
    # then negates the source column
    k = torch.zeros(n, dtype=torch.long, device=dev)
    if rotations is not None:
        k = rotations.to(dev).long() % 4
    sign_x = torch.where((k == 1) | (k == 2), -1.0, 1.0)  # (n,)
    sign_x = torch.where(flip.to(dev), -sign_x, sign_x)
    sign_y = torch.where(k >= 2, -1.0, 1.0)  # (n,)
    odd = (k % 2 == 1)[:, None, None]  # (n, 1, 1)
    col, row = qx[:, None, :], qy[:, :, None]  # (n, 1, S), (n, S, 1)
    sx = torch.where(odd, row, col) * sign_x[:, None, None]  # (n, S, S)
    sy = torch.where(odd, col, row) * sign_y[:, None, None]  # (n, S, S)
    grid = torch.stack([sx, sy], dim=-1)  # (n, S, S, 2)
    return F.grid_sample(
        x, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def _to_box(p: Tensor, start: Tensor, length: Tensor, extent: int) -> Tensor:
    """Map normalised output positions p (S,) into boxes; returns (n, S)."""
    centre = (2 * start + length) / extent - 1  # (n,)
    lo = (2 * start + 1) / extent - 1  # (n,) first pixel centre
    hi = (2 * (start + length) - 1) / extent - 1  # (n,) last pixel centre
    q = p[None] * (length / extent)[:, None] + centre[:, None]  # (n, S)
    return torch.maximum(torch.minimum(q, hi[:, None]), lo[:, None])


def to_gray(x: Tensor) -> Tensor:
    """Luma (n, 1, H, W) of RGB x (n, 3, H, W)."""
    weights = x.new_tensor(GRAY_WEIGHTS)  # (3,)
    return torch.einsum("nchw,c->nhw", x, weights)[:, None]


def adjust_brightness(x: Tensor, f: Tensor) -> Tensor:
    """Scale intensities by f (n,), clipped to [0, 1]."""
    return (x * f[:, None, None, None]).clamp_(0, 1)


def adjust_contrast(x: Tensor, f: Tensor) -> Tensor:
    """Blend with the mean luma of each image by f (n,)."""
    mean = to_gray(x).mean(dim=(1, 2, 3), keepdim=True)  # (n, 1, 1, 1)
    f = f[:, None, None, None]
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x: Tensor, f: Tensor) -> Tensor:
    """Blend with the per-pixel luma by f (n,)."""
    f = f[:, None, None, None]
    return (f * x + (1 - f) * to_gray(x)).clamp_(0, 1)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue by shift (n,) turns, in [-0.5, 0.5]."""
    v, top = x.max(dim=1, keepdim=True)  # (n, 1, H, W) value, largest channel
    chroma = v - x.min(dim=1, keepdim=True).values  # (n, 1, H, W)
    sat = chroma / v.clamp(min=1e-12)

    # hue in sixths of a turn: (next - after next) / chroma + 2 * top channel
    hue6 = x.gather(1, (top + 1) % 3).sub_(x.gather(1, (top + 2) % 3))
    hue6.div_(chroma.clamp_(min=1e-12)).add_(2 * top + 6 * shift[:, None, None, None])

    # back to RGB: channel r, g, b reads the ramp at offsets 5, 3, 1
    offsets = x.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    k = (offsets + hue6).remainder_(6)  # (n, 3, H, W)
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    return ramp.mul_(sat).neg_().add_(1).mul_(v)


_JITTER_FNS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(x: Tensor, factors: Tensor, order: Tensor, on: Tensor) -> Tensor:
    """Apply the four jitter operations to rows where ``on``, in ``order``."""
    out = x.clone()
    for step in range(len(_JITTER_FNS)):
        for op, fn in enumerate(_JITTER_FNS):
            rows = on & (order[:, step] == op)  # (n,)
            if rows.any():
                out[rows] = fn(out[rows], factors[rows, op])
    return out
