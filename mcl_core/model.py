"""CIFAR-form ResNet encoder and the MCL network (SPEC §9.7 and §10).

The encoder f is a ResNet whose stem is a 3x3, stride-1 convolution with no
max-pool, so a 32x32 image reaches the last stage at 4x4; global average
pooling gives features h of size F = 8 * width (512 for the paper's
ResNet-34). The projection head g maps h to the D-dimensional z used by every
loss and by the official Mahalanobis scoring (SPEC §9.4, §10).

Parameter names follow torchvision's ResNet/BasicBlock layout (``conv1``,
``bn1``, ``layer1``..``layer4``, ``downsample.0``/``downsample.1``), which is
what the authors' released ResNet-34 checkpoint was saved from; see
``load_released_checkpoint``.

Shapes: N images, F encoder features, D projection dim, C known classes.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

# blocks per stage; every stage is made of BasicBlocks (two 3x3 convs)
ARCHS: dict[str, tuple[int, int, int, int]] = {
    "resnet10": (1, 1, 1, 1),
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}

# channel multiplier of each stage relative to `width`
STAGE_MULTS = (1, 2, 4, 8)

RELEASED_URL = "https://www.dropbox.com/s/hwag0bp6e6cbmab/epoch_800.pt?dl=1"

# what the authors' epoch_800.pt holds (SPEC §9.7)
RELEASED_LAYOUT = {
    "arch": "resnet34",
    "width": 64,
    "proj_hidden": 2048,
    "proj_dim": 128,
}


@dataclass
class ModelOutput:
    """Outputs of one MCLNet forward pass."""

    h: Tensor  # (N, F) encoder features
    z: Tensor  # (N, D) raw projections, not normalised
    logits: Tensor | None = None  # (N, C) class logits, if a classifier
    rot_logits: Tensor | None = None  # (N, 4) rotation logits, if a head


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(
            out_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=False
        )
        self.bn2 = nn.BatchNorm2d(out_ch)

        # the shortcut needs a projection only when the shape changes
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class CifarResNet(nn.Module):
    """ResNet encoder with a 3x3 stride-1 stem, no max-pool and no fc."""

    def __init__(self, blocks: tuple[int, ...], width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)

        # stage i has width * 2**i channels; stages 2-4 halve the resolution
        in_ch = width
        for i, (num_blocks, mult) in enumerate(zip(blocks, STAGE_MULTS)):
            out_ch = width * mult
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(in_ch, out_ch, stride)]
            for _ in range(num_blocks - 1):
                stage.append(BasicBlock(out_ch, out_ch))
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            in_ch = out_ch

        self.feature_dim = in_ch
        self._init_weights()

    def _init_weights(self) -> None:
        # He et al. (2015) normal init on convs (fan-out), BN as identity
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(
                    m.weight, mode="fan_out", nonlinearity="relu"
                )
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)  # (N, F, H/8, W/8)

        # global average pool; works for any memory format
        return x.mean(dim=(-2, -1))  # (N, F)


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value < minimum:
        raise ValueError(
            f"{name} must be an integer >= {minimum}, got {value!r}"
        )


class MCLNet(nn.Module):
    """Encoder f, projection head g and optional class / rotation heads.

    Args:
        arch: one of ``ARCHS`` (the paper uses ``"resnet34"``; ResNet-18 for
            the rows marked with a double dagger and Table 2).
        width: channels of the first stage; stages have width * (1, 2, 4, 8)
            channels and F = 8 * width (64 is the paper's network).
        proj_hidden: hidden size of g (2048 in the released code).
        proj_dim: D, the output size of g (128 in the released code).
        num_classes: C > 0 adds ``classifier``, a linear layer on h.
        rotation_head: adds ``rotation_head``, a linear 4-way layer on h.
    """

    def __init__(
        self,
        arch: str = "resnet34",
        width: int = 64,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        num_classes: int = 0,
        rotation_head: bool = False,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(
                f"arch must be one of {sorted(ARCHS)}, got {arch!r}"
            )
        _check_positive_int("width", width)
        _check_positive_int("proj_hidden", proj_hidden)
        _check_positive_int("proj_dim", proj_dim)
        _check_positive_int("num_classes", num_classes, minimum=0)
        if not isinstance(rotation_head, bool):
            raise ValueError(
                f"rotation_head must be a bool, got {rotation_head!r}"
            )

        self.arch = arch
        self.width = width
        self.proj_hidden = proj_hidden
        self.proj_dim = proj_dim
        self.num_classes = num_classes

        self.enc = CifarResNet(ARCHS[arch], width)
        feat = self.enc.feature_dim

        # g: Linear-ReLU-Linear with biases and no BN, as in the released code
        self.projector = nn.Sequential(
            nn.Linear(feat, proj_hidden),
            nn.ReLU(),
            nn.Linear(proj_hidden, proj_dim),
        )
        self.classifier = None
        if num_classes > 0:
            self.classifier = nn.Linear(feat, num_classes)  # logits (N, C)
        self.rotation_head = None
        if rotation_head:
            self.rotation_head = nn.Linear(feat, 4)  # rot_logits (N, 4)

    @property
    def feature_dim(self) -> int:
        """F, the size of the encoder features h."""
        return self.enc.feature_dim

    def features(self, x: Tensor) -> Tensor:
        """Encoder features h (N, F) of images x (N, 3, H, W), no heads."""
        return self.enc(x)

    def forward(self, x: Tensor) -> ModelOutput:
        """Run f, g and the optional heads on images x (N, 3, H, W)."""
        h = self.enc(x)  # (N, F)
        z = self.projector(h)  # (N, D)
        logits = None if self.classifier is None else self.classifier(h)
        rot = None if self.rotation_head is None else self.rotation_head(h)
        return ModelOutput(h=h, z=z, logits=logits, rot_logits=rot)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, width={self.width}"


def model_summary(model: MCLNet) -> dict[str, Any]:
    """Architecture settings and parameter counts, for logs and configs."""
    return {
        "arch": model.arch,
        "width": model.width,
        "feature_dim": model.feature_dim,
        "proj_hidden": model.proj_hidden,
        "proj_dim": model.proj_dim,
        "num_classes": model.num_classes,
        "rotation_head": model.rotation_head is not None,
        "params": sum(p.numel() for p in model.parameters()),
        "encoder_params": sum(p.numel() for p in model.enc.parameters()),
        "trainable_params": sum(
            p.numel() for p in model.parameters() if p.requires_grad
        ),
    }


# ---------------------------------------------------------------------------
# the authors' released checkpoint


def released_checkpoint_info() -> dict[str, Any]:
    """Where to get the authors' ResNet-34 and how to build its model."""
    return {
        "url": RELEASED_URL,
        "filename": "epoch_800.pt",
        "description": (
            "Authors' MCL ResNet-34 trained 800 epochs on CIFAR-10 with the "
            "4-way rotation task (HarveyCho/MCL); a dict whose 'net' "
            "entry holds enc.* (CIFAR-stem ResNet-34) and projector.* "
            "(512-2048-128)."
        ),
        "model_kwargs": dict(RELEASED_LAYOUT),
    }


def _describe(
    arch: str, width: int, feat: int, proj_hidden: int, proj_dim: int
) -> str:
    return f"{arch} width {width}, projector {feat}-{proj_hidden}-{proj_dim}"


def _checkpoint_layout(state: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Read arch, width and projector sizes off a state dict, if it can."""
    needed = ("enc.conv1.weight", "projector.0.weight", "projector.2.weight")
    if not all(k in state for k in needed):
        return None

    # number of blocks in each stage, from the keys enc.layer{i}.{j}.*
    blocks = []
    for i in range(1, 5):
        prefix = f"enc.layer{i}."
        keys = [k[len(prefix) :] for k in state if k.startswith(prefix)]
        blocks.append(len({k.split(".")[0] for k in keys}))
    names = [name for name, b in ARCHS.items() if b == tuple(blocks)]

    return {
        "arch": names[0] if names else f"blocks {tuple(blocks)}",
        "width": int(state["enc.conv1.weight"].shape[0]),
        "feat": int(state["projector.0.weight"].shape[1]),
        "proj_hidden": int(state["projector.0.weight"].shape[0]),
        "proj_dim": int(state["projector.2.weight"].shape[0]),
    }


def _read_checkpoint(
    path_or_dict: str | os.PathLike | Mapping, weights_only: bool
) -> Mapping:
    if isinstance(path_or_dict, Mapping):
        return path_or_dict
    if not isinstance(path_or_dict, (str, os.PathLike)):
        raise TypeError(
            "path_or_dict must be a path or a loaded dict, got "
            f"{type(path_or_dict).__name__}"
        )

    path = Path(path_or_dict)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} not found; the released one is at "
            f"{RELEASED_URL}"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        raise RuntimeError(
            f"{str(path)!r} holds objects other than tensors and plain "
            "containers; pass weights_only=False only for a file you trust"
        ) from err
    if not isinstance(ckpt, Mapping):
        kind = type(ckpt).__name__
        raise TypeError(f"{str(path)!r} holds a {kind}, not a dict")
    return ckpt


def _strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict:
    out = {}
    for key, value in state.items():
        while key.startswith(prefix):
            key = key[len(prefix) :]
        out[key] = value
    return out


def _few(keys: set[str], k: int = 5) -> str:
    shown = sorted(keys)[:k]
    more = f" (+{len(keys) - k} more)" if len(keys) > k else ""
    return ", ".join(shown) + more


def load_released_checkpoint(
    model: MCLNet,
    path_or_dict: str | os.PathLike | Mapping,
    *,
    weights_only: bool = True,
) -> MCLNet:
    """Load the authors' epoch_800.pt (or a file of the same form) into model.

    Accepts a path or an already loaded dict, either ``{"net": state_dict,
    ...}`` or a bare state dict, with or without the ``module.`` prefix of
    ``nn.DataParallel``. Encoder and projector are loaded strictly; a
    classifier or rotation head, absent from the checkpoint, keeps its
    initial weights.

    Raises:
        ValueError: the model's architecture differs from the checkpoint's.
        RuntimeError: keys are missing from or unexpected in the checkpoint.
    """
    ckpt = _read_checkpoint(path_or_dict, weights_only)
    state = ckpt["net"] if isinstance(ckpt.get("net"), Mapping) else ckpt
    state = _strip_prefix(state, "module.")

    # compare the architecture first: a clearer error than a shape mismatch
    found = _checkpoint_layout(state)
    mine = {
        "arch": model.arch,
        "width": model.width,
        "feat": model.feature_dim,
        "proj_hidden": model.proj_hidden,
        "proj_dim": model.proj_dim,
    }
    if found is not None and found != mine:
        kwargs = {k: v for k, v in found.items() if k != "feat"}
        raise ValueError(
            f"checkpoint holds {_describe(**found)} but the model is "
            f"{_describe(**mine)}; build the model as MCLNet(**{kwargs})"
        )

    # strict key check on the encoder and projector only
    expected = {}
    for name in ("enc", "projector"):
        for key, value in getattr(model, name).state_dict().items():
            expected[f"{name}.{key}"] = value
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)

    # NOTE: files from PyTorch < 0.4.1 lack BN num_batches_tracked; the
    # counter only matters for momentum=None BN, so the model's value stays.
    counters = {k for k in missing if k.endswith("num_batches_tracked")}
    missing -= counters
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint does not match enc+projector: {len(missing)} missing "
            f"keys [{_few(missing)}], {len(unexpected)} unexpected keys "
            f"[{_few(unexpected)}]"
        )

    state = {**{k: expected[k] for k in counters}, **state}
    for name in ("enc", "projector"):
        cut = len(name) + 1
        part = {k[cut:]: v for k, v in state.items() if k[:cut] == f"{name}."}
        getattr(model, name).load_state_dict(part, strict=True)

    epoch = ckpt.get("epoch") if "net" in ckpt else None
    log.info(
        "loaded %d tensors into %s%s",
        len(state),
        _describe(**mine),
        f" (epoch {epoch})" if epoch is not None else "",
    )
    return model
