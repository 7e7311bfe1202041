"""Settings of every experiment, as dataclasses, and the three profiles.

A profile (``smoke``, ``quick``, ``paper``) is a named set of experiments;
each experiment is one :class:`ExperimentConfig` holding the method and its
model, optimiser, loss, data, training and evaluation settings. Defaults are
the released recipe (SPEC 9.7 and 10); a notebook or the command line
changes any of them with ``key=value`` strings (:func:`apply_overrides`).

    python -m mcl_core.config --profile quick --list
    python -m mcl_core.config --profile paper --show mcl

Methods (``ExperimentConfig.method``):

* ``mcl``: CCM + SPA (Eq. 3-11); ``data.aux_mode`` "aux" (rotation labels),
  "none" (w/o aux) or "da" (rotated images without labels); ``loss.spa``
  False gives "w/o SPA".
* ``simclr``: NT-Xent (Eq. 1-2); ``supclr``: SupCon on class labels.
* ``ce``: cross-entropy classifier (Baseline, ODIN and Lee-Mahalanobis rows).
* ``rotation``: cross-entropy plus a 4-way rotation head (Hendrycks et al.
  2019, the "Auxiliary Rotation" rows).
* ``ce_ft`` / ``joint_ft``: fine-tune a trained contrastive encoder with
  cross-entropy, or with cross-entropy + NT-Xent (Table 3).
* ``released``: no training; the authors' ResNet-34 checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

METHODS = (
    "mcl", "simclr", "supclr", "ce", "rotation", "ce_ft", "joint_ft",
    "released",
)
AUX_MODES = ("aux", "none", "da")
CONTRASTIVE = ("mcl", "simclr", "supclr", "joint_ft")
CLASSIFIERS = ("ce", "rotation", "ce_ft", "joint_ft")
SCORERS = ("mahalanobis", "msp", "odin", "lee_mahalanobis", "rotation")
PROFILE_NAMES = ("smoke", "quick", "paper")


@dataclass
class ModelConfig:
    """Network of SPEC 9.7: CIFAR-stem ResNet, projector F-hidden-D."""

    arch: str = "resnet34"  # SPEC 10 (ResNet-18 for the double-dagger rows)
    width: int = 64  # F = 8 * width = 512
    proj_hidden: int = 2048  # SPEC 9.7
    proj_dim: int = 128  # SPEC 10


@dataclass
class OptimConfig:
    """Optimiser and per-step learning-rate schedule (SPEC 9.7)."""

    name: str = "sgd"  # "sgd" or "adam"
    lr: float | None = None  # None: base_lr * entries per step / 256
    base_lr: float = 0.3  # SPEC 10: lr = 0.3 x batch / 256
    momentum: float = 0.9  # SPEC 10
    nesterov: bool = True  # SPEC 9.7 (released code)
    weight_decay: float = 1e-6  # SPEC 10, on all parameters
    schedule: str = "cosine"  # "cosine" (per step) or "constant"
    final_lr_ratio: float = 5e-4  # eta_min = 5e-4 * lr (SPEC 9.7)
    warmup_epochs: int = 0  # SPEC 10: no warm-up


@dataclass
class LossConfig:
    """Loss constants (SPEC 10) and the baselines' loss weights."""

    variant: str = "official"  # "official" (SPEC 9) or "paper" (SPEC 1-4)
    tau: float = 0.2  # SPEC 10
    alpha: float = 0.05  # SPEC 10
    beta: float = 2.0  # released config; the paper prints 2.5
    spa: bool = True  # False: "w/o SPA" (Table 3)
    spa_weight: float = 1.0  # lambda, SPEC 10
    positive_label: str = "joint"  # SPA positives, SPEC [A2]
    rotation_weight: float = 0.5  # Hendrycks et al. 2019, lambda = 0.5
    rotation_class_on: str = "all"  # class loss on "all" rotations/"upright"
    ce_weight: float = 1.0  # cross-entropy term of joint fine-tuning
    contrastive_weight: float = 1.0  # NT-Xent term of joint fine-tuning


@dataclass
class DataConfig:
    """Datasets, batch composition and augmentation (SPEC 9.7)."""

    dataset: str = "cifar10"  # in-distribution set (name or "name@classes")
    classes: tuple[int, ...] | None = None  # IND classes; None = all
    ood: tuple[str, ...] = ("svhn", "lsun_fix", "imagenet_fix", "cifar100")
    image_size: int = 32
    root: str | None = None  # None: $MCL_DATA or ~/.cache/mcl/data
    download: bool = True
    images_per_batch: int = 256  # x 4 rotations = 1024 entries (SPEC 9.7)
    aux_mode: str = "aux"  # "aux" | "none" | "da"
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop
    jitter: float = 0.5  # colour distortion strength (SPEC 10)
    p_jitter: float = 0.8  # SPEC 9.7
    p_gray: float = 0.2  # SPEC 9.7
    flip: bool = True  # mirror in the unrotated frame, p = 0.5
    train_limit: int | None = None  # first n training images (tests only)
    test_limit: int | None = None  # first n images of every test set


@dataclass
class TrainConfig:
    """Length, seeds, checkpoints and speed switches of one training run."""

    epochs: int = 800  # released checkpoint epoch_800.pt (SPEC 9.7)
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: str = "auto"  # "auto" (bf16 on CUDA) | "bf16" | "none"
    channels_last: bool = True  # used on CUDA only
    compile: bool = False  # torch.compile the model
    checkpoint_every: int = 50  # epochs; SPEC 9.7 log_interval
    keep_checkpoints: int = 2  # periodic ckpt_*.pt kept; 0 = all
    log_every: int = 50  # steps between loss reads (host-device syncs)
    num_threads: int | None = None  # torch CPU threads; None = default
    sync_bn: bool = False  # released code: per-replica BN (DataParallel)
    init_from: str | None = None  # fine-tuning: experiment name or .pt path
    freeze_encoder: bool = False  # fine-tuning: train the heads only
    max_steps: int | None = None  # stop after this many steps (benchmarks)


@dataclass
class EvalConfig:
    """Scoring and SEI settings (SPEC 6-9)."""

    ways: tuple[int, ...] = (1, 4, 8)  # SEI ways (Table 4)
    aggregations: tuple[str, ...] = ("avg", "max", "w-avg", "w-avg-eq19")
    variants: tuple[str, ...] = ("official", "paper")  # SPEC decision 1
    scorers: tuple[str, ...] | None = None  # None: the method's own set
    num_aux: int | None = None  # Gaussians per class; None: 4 if aux else 1
    gaussian_train_images: int | None = None  # 20224 = official subset
    paper_reg: float = 0.0  # ridge of the paper variant (SPEC [A7]: none)
    batch_size: int = 1024  # test images per forward pass (x ways views)
    odin_temperature: float = 1000.0  # Liang et al. 2018
    odin_epsilon: float = 0.0014  # Liang et al. 2018 (CIFAR-10)
    lee_epsilon: float = 0.0  # Lee et al. 2018 input pre-processing
    rotation_score: str = "kl+rot"  # Hendrycks et al. 2019 ("msp" too)
    embed_train_max: int = 5000  # train projections kept in scores.npz
    device: str = "auto"
    amp: str = "auto"


@dataclass
class ExperimentConfig:
    """One experiment: a method and every setting it trains and scores with."""

    name: str = "mcl"
    profile: str = "paper"
    method: str = "mcl"
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    note: str = ""


@dataclass
class Profile:
    """A named set of experiments sharing data, model and evaluation settings."""

    name: str
    description: str
    requires_gpu: bool
    data: DataConfig
    model: ModelConfig
    eval: EvalConfig
    experiments: dict[str, ExperimentConfig]


# ---------------------------------------------------------------------------
# overrides: "section.key=value" strings, checked against the field types


def _parse_scalar(text: str, kind: Any, key: str) -> Any:
    if kind is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key} expects a bool (true/false), got {text!r}")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            name = kind.__name__
            raise ValueError(f"{key} expects {name}, got {text!r}") from None
    if kind is str:
        return text
    raise TypeError(f"{key}: unsupported setting type {kind!r}")


def _parse_value(text: str, kind: Any, key: str) -> Any:
    """Turn text into a value of the annotated type ``kind``."""
    args = typing.get_args(kind)
    if type(None) in args:
        if text.strip().lower() in ("none", "null"):
            return None
        rest = [a for a in args if a is not type(None)]
        return _parse_value(text, rest[0], key)
    if typing.get_origin(kind) is tuple:
        parts = [p for p in text.replace(" ", "").split(",") if p != ""]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse_scalar(p, args[0], key) for p in parts)
        if len(parts) != len(args):
            raise ValueError(
                f"{key} expects {len(args)} comma-separated values, "
                f"got {text!r}"
            )
        return tuple(_parse_scalar(p, a, key) for p, a in zip(parts, args))
    return _parse_scalar(text, kind, key)


def _fields(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def set_value(cfg: Any, key: str, value: Any) -> None:
    """Set ``cfg.a.b = value`` in place for the dotted ``key`` "a.b"."""
    *path, last = key.split(".")
    obj = cfg
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(obj) or part not in _fields(obj):
            raise KeyError(_unknown(cfg, ".".join(path[: i + 1])))
        obj = getattr(obj, part)
    if not dataclasses.is_dataclass(obj):
        raise KeyError(_unknown(cfg, key))
    kinds = _fields(obj)
    if last not in kinds or dataclasses.is_dataclass(getattr(obj, last)):
        raise KeyError(_unknown(cfg, key))
    if isinstance(value, str):
        value = _parse_value(value, kinds[last], key)
    setattr(obj, last, value)


def _unknown(cfg: Any, key: str) -> str:
    return (
        f"unknown setting {key!r}; accepted keys: "
        f"{', '.join(setting_keys(cfg))}"
    )


def setting_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted key that :func:`apply_overrides` accepts for ``cfg``."""
    keys = []
    for name in _fields(cfg):
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(value):
            keys += setting_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def apply_overrides(cfg: Any, overrides: Sequence[str] | dict) -> Any:
    """Return a copy of ``cfg`` with "key=value" overrides applied.

    Keys are dotted paths (``optim.lr=0.1``, ``data.ood=svhn,cifar100``,
    ``train.init_from=none``); values are parsed to the field's type, and a
    wrong key or value raises naming it. A dict maps keys to values (strings
    are parsed, anything else is set as is).
    """
    cfg = copy.deepcopy(cfg)
    items = overrides.items() if isinstance(overrides, dict) else None
    if items is None:
        items = []
        for text in overrides:
            if "=" not in text:
                raise ValueError(
                    f"override must look like key=value, got {text!r}"
                )
            key, value = text.split("=", 1)
            items.append((key.strip(), value.strip()))
    for key, value in items:
        set_value(cfg, key, value)
    return cfg


def to_dict(cfg: Any) -> dict:
    """Plain dict of a settings dataclass (tuples as lists), for JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(kind: type, data: dict) -> Any:
    """Rebuild a settings dataclass of type ``kind`` from :func:`to_dict`."""
    hints = typing.get_type_hints(kind)
    values = {}
    for f in dataclasses.fields(kind):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return kind(**values)


# ---------------------------------------------------------------------------
# derived settings


def entries_per_image(aux_mode: str) -> int:
    """Entries made from one image: 4 rotations for "aux" and "da", else 1."""
    if aux_mode not in AUX_MODES:
        raise ValueError(
            f"data.aux_mode must be one of {AUX_MODES}, got {aux_mode!r}"
        )
    return 4 if aux_mode in ("aux", "da") else 1


def resolve(cfg: ExperimentConfig) -> ExperimentConfig:
    """Check the settings and fill in derived values (the learning rate)."""
    cfg = copy.deepcopy(cfg)
    if cfg.method not in METHODS:
        raise ValueError(
            f"method must be one of {METHODS}, got {cfg.method!r}"
        )
    entries = cfg.data.images_per_batch * entries_per_image(cfg.data.aux_mode)
    if cfg.optim.lr is None:
        cfg.optim.lr = cfg.optim.base_lr * entries / 256
    checks = [
        ("optim.name", cfg.optim.name, ("sgd", "adam")),
        ("optim.schedule", cfg.optim.schedule, ("cosine", "constant")),
        ("loss.variant", cfg.loss.variant, ("official", "paper")),
        ("loss.positive_label", cfg.loss.positive_label, ("joint", "main")),
        ("loss.rotation_class_on", cfg.loss.rotation_class_on,
         ("all", "upright")),
        ("train.device", cfg.train.device, ("auto", "cpu", "cuda")),
        ("train.amp", cfg.train.amp, ("auto", "bf16", "none")),
        ("eval.rotation_score", cfg.eval.rotation_score, ("kl+rot", "msp")),
    ]
    for key, value, accepted in checks:
        if value not in accepted:
            raise ValueError(f"{key} must be one of {accepted}, got {value!r}")
    if cfg.method in ("ce_ft", "joint_ft") and not cfg.train.init_from:
        raise ValueError(
            f"method {cfg.method!r} fine-tunes a trained encoder: set "
            "train.init_from to an experiment name or a checkpoint path"
        )
    for way in cfg.eval.ways:
        if way not in (1, 4, 8):
            raise ValueError(f"eval.ways must hold 1, 4 or 8, got {way!r}")
    for scorer in cfg.eval.scorers or ():
        if scorer not in SCORERS:
            raise ValueError(
                f"eval.scorers must be from {SCORERS}, got {scorer!r}"
            )
    return cfg


def default_scorers(cfg: ExperimentConfig) -> tuple[str, ...]:
    """Scorers evaluated for a method when ``eval.scorers`` is None."""
    if cfg.method == "ce":
        return ("msp", "odin", "lee_mahalanobis")
    if cfg.method == "rotation":
        return ("rotation", "msp")
    if cfg.method in ("ce_ft", "joint_ft"):
        return ("msp", "mahalanobis")
    return ("mahalanobis",)


def num_aux(cfg: ExperimentConfig) -> int:
    """Gaussians per class: 4 (one per rotation) if trained with aux labels."""
    if cfg.eval.num_aux is not None:
        return cfg.eval.num_aux
    return 4 if cfg.data.aux_mode == "aux" else 1


# ---------------------------------------------------------------------------
# profiles

EXPERIMENT_NAMES = (
    "ce", "rotation", "simclr", "simclr_ce_ft", "simclr_joint_ft", "supclr",
    "mcl", "mcl_nospa_noaux", "mcl_noaux", "mcl_da", "mcl_ce_ft", "mcl_nospa",
    "mcl_r18", "released",
)

# method, overrides and note of each experiment, before the profile's own
_RECIPES: dict[str, tuple[str, dict[str, Any], str]] = {
    "ce": ("ce", {"data.aux_mode": "none"},
           "Baseline (MSP), ODIN and Lee-Mahalanobis rows of Table 1"),
    "rotation": ("rotation", {"data.aux_mode": "aux"},
                 "Auxiliary Rotation rows of Table 1, with and without SEI"),
    "simclr": ("simclr", {"data.aux_mode": "none"},
               "SimCLR encoder that Table 3's fine-tuned rows start from"),
    "simclr_ce_ft": ("ce_ft", {"data.aux_mode": "none",
                               "train.init_from": "simclr"},
                     "Table 3: SimCLR (CE fine-tuned)"),
    "simclr_joint_ft": ("joint_ft", {"data.aux_mode": "none",
                                     "train.init_from": "simclr"},
                        "Table 3: SimCLR (joint fine-tuned), CE + NT-Xent"),
    "supclr": ("supclr", {"data.aux_mode": "none", "loss.tau": 0.1},
               "SupCLR rows of Tables 1-2 (tau 0.1 of Khosla et al.)"),
    "mcl": ("mcl", {"data.aux_mode": "aux"},
            "MCL with rotation labels: Tables 1, 3, 4, 5"),
    "mcl_nospa_noaux": ("mcl", {"data.aux_mode": "none", "loss.spa": False},
                        "Table 3: MCL (w/o SPA, w/o aux)"),
    "mcl_noaux": ("mcl", {"data.aux_mode": "none"},
                  "Tables 3 and 5: MCL (w/o aux)"),
    "mcl_da": ("mcl", {"data.aux_mode": "da"},
               "Table 5: MCL + DA (rotations without labels)"),
    "mcl_ce_ft": ("ce_ft", {"data.aux_mode": "none",
                            "train.init_from": "mcl"},
                  "Table 3: MCL (CE fine-tuned)"),
    "mcl_nospa": ("mcl", {"data.aux_mode": "aux", "loss.spa": False},
                  "MCL without SPA, with rotation labels (extra ablation)"),
    "mcl_r18": ("mcl", {"data.aux_mode": "aux", "model.arch": "resnet18"},
                "Tables 1-2: MCL with ResNet-18 (double dagger)"),
    "released": ("released", {"data.aux_mode": "aux"},
                 "authors' epoch_800.pt ResNet-34, evaluated only"),
}


def _build(
    name: str, profile: str, base: ExperimentConfig, extra: dict[str, Any]
) -> ExperimentConfig:
    method, recipe, note = _RECIPES[name]
    cfg = copy.deepcopy(base)
    cfg.name, cfg.profile, cfg.method, cfg.note = name, profile, method, note
    cfg = apply_overrides(cfg, recipe)
    return apply_overrides(cfg, extra)


def _paper_profile() -> Profile:
    base = ExperimentConfig(profile="paper")
    base.train.device = "cuda"
    # batch = 1024 entries for every method: 256 images x 4 rotations, or
    # 1024 images for methods without rotations (SPEC 9.7)
    plain = {"data.images_per_batch": 1024}
    # NOTE: recipes of the classifier baselines and fine-tuning are not in
    # the MCL paper; these follow Hendrycks et al. (SGD 0.1, wd 5e-4, cosine).
    classifier = {
        "optim.lr": 0.1 * 4, "optim.weight_decay": 5e-4,
        "optim.final_lr_ratio": 0.0, "train.epochs": 200,
        "train.checkpoint_every": 25,
    }
    finetune = {
        "optim.lr": 0.01 * 4, "optim.weight_decay": 5e-4,
        "optim.final_lr_ratio": 0.0, "train.epochs": 100,
        "train.checkpoint_every": 25,
    }
    extra = {
        "ce": {**plain, **classifier},
        "rotation": {"data.images_per_batch": 256, **classifier},
        "simclr": plain, "supclr": {**plain, "model.arch": "resnet18"},
        "simclr_ce_ft": {**plain, **finetune},
        "simclr_joint_ft": {**plain, **finetune},
        "mcl_ce_ft": {**plain, **finetune},
        "mcl_noaux": plain, "mcl_nospa_noaux": plain,
        "released": {"train.epochs": 0},
    }
    experiments = {
        name: _build(name, "paper", base, extra.get(name, {}))
        for name in EXPERIMENT_NAMES
    }
    return Profile(
        name="paper",
        description=(
            "CIFAR-10 in; SVHN, LSUN-Fix, ImageNet-Fix, CIFAR-100 out; "
            "ResNet-34 (ResNet-18 for supclr, mcl_r18); released recipe "
            "(SGD Nesterov, lr 1.2, 800 epochs); needs a GPU"
        ),
        requires_gpu=True, data=base.data, model=base.model, eval=base.eval,
        experiments=experiments,
    )


def _cpu_base(profile: str, data: dict, model: dict, epochs: int) -> Any:
    base = ExperimentConfig(profile=profile)
    # NOTE: CPU profiles use Adam (lr 2e-3, wd 5e-4, cosine), a deviation
    # from the released SGD recipe: it converges far faster in short runs.
    cpu = {
        "optim.name": "adam", "optim.lr": 2e-3, "optim.weight_decay": 5e-4,
        "optim.final_lr_ratio": 0.0, "train.device": "cpu",
        "train.epochs": epochs, "train.checkpoint_every": epochs,
        "train.log_every": 20, "eval.batch_size": 256,
    }
    return apply_overrides(base, {**cpu, **data, **model})


def _quick_profile() -> Profile:
    data = {
        "data.dataset": "digits", "data.classes": (0, 1, 2, 3, 4, 5),
        "data.ood": ("digits@6,7,8,9", "photos", "noise"),
        "data.image_size": 16, "data.crop_scale": (0.5, 1.0),
    }
    # NOTE: projections of D = 32 (not 128): each (class, rotation) group
    # has about 126 training images, and a Gaussian needs more than D.
    model = {
        "model.arch": "resnet10", "model.width": 16,
        "model.proj_hidden": 256, "model.proj_dim": 32,
    }
    base = _cpu_base("quick", data, model, epochs=QUICK_EPOCHS["plain"])
    aux = {"data.images_per_batch": 64, "train.epochs": QUICK_EPOCHS["aux"]}
    plain = {"data.images_per_batch": 256}
    ft = {**plain, "train.epochs": QUICK_EPOCHS["ft"], "optim.lr": 5e-4}
    extra = {
        "ce": {**plain, "train.epochs": QUICK_EPOCHS["ce"]},
        "rotation": aux, "mcl": aux, "mcl_da": aux, "mcl_nospa": aux,
        "mcl_r18": {**aux, "model.arch": "resnet10"},
        "simclr_ce_ft": ft, "simclr_joint_ft": ft, "mcl_ce_ft": ft,
    }
    names = [n for n in EXPERIMENT_NAMES if n != "released"]
    experiments = {
        name: _build(name, "quick", base, extra.get(name, plain))
        for name in names
    }
    experiments["mcl_r18"].note = (
        "quick profile: same backbone as mcl (resnet10 width 16) with "
        "another seed, so Table 2 compares SupCLR and MCL on one backbone"
    )
    experiments["mcl_r18"].train.seed = 1
    return Profile(
        name="quick",
        description=(
            "digits 0-5 in; digits 6-9, photos, noise out; 16x16; resnet10 "
            "width 16; Adam; about 11 minutes on 2 CPU cores"
        ),
        requires_gpu=False, data=base.data, model=base.model, eval=base.eval,
        experiments=experiments,
    )


# epochs of the quick profile: about 0.8 M training views in all, i.e.
# about 9 minutes of training at the ~1,400 views/s measured for this network
# on a quiet 2-core CPU; the aux runs see 4 rotations, hence fewer epochs
QUICK_EPOCHS = {"plain": 60, "aux": 20, "ce": 50, "ft": 12}


def _smoke_profile() -> Profile:
    data = {
        "data.dataset": "synthetic", "data.classes": (0, 1, 2, 3),
        "data.ood": ("synthetic@4,5", "noise"), "data.image_size": 16,
        "data.train_limit": 96, "data.test_limit": 48,
        "data.images_per_batch": 32,
    }
    model = {
        "model.arch": "resnet10", "model.width": 8,
        "model.proj_hidden": 64, "model.proj_dim": 16,
    }
    base = _cpu_base("smoke", data, model, epochs=2)
    base.eval.embed_train_max = 64
    aux = {"data.images_per_batch": 16}
    extra = {"rotation": aux, "mcl": aux, "mcl_da": aux, "mcl_nospa": aux,
             "mcl_r18": {**aux, "model.arch": "resnet18"}}
    names = [n for n in EXPERIMENT_NAMES if n != "released"]
    experiments = {
        name: _build(name, "smoke", base, extra.get(name, {}))
        for name in names
    }
    return Profile(
        name="smoke",
        description="synthetic data, tiny network, 2 epochs: seconds each",
        requires_gpu=False, data=base.data, model=base.model, eval=base.eval,
        experiments=experiments,
    )


def _profiles() -> dict[str, Profile]:
    return {
        "smoke": _smoke_profile(),
        "quick": _quick_profile(),
        "paper": _paper_profile(),
    }


PROFILES: dict[str, Profile] = _profiles()


def get_profile(name: str) -> Profile:
    """A fresh copy of the named profile (changing it leaves PROFILES as is)."""
    if name not in PROFILES:
        raise ValueError(
            f"profile must be one of {sorted(PROFILES)}, got {name!r}"
        )
    return copy.deepcopy(PROFILES[name])


def get_experiment(
    profile: str, experiment: str, overrides: Sequence[str] = ()
) -> ExperimentConfig:
    """Settings of one experiment of a profile, with overrides applied."""
    prof = get_profile(profile)
    if experiment not in prof.experiments:
        raise ValueError(
            f"experiment must be one of {experiment_order(prof)} for profile "
            f"{profile!r}, got {experiment!r}"
        )
    return apply_overrides(prof.experiments[experiment], overrides)


def experiment_order(profile: Profile | str) -> list[str]:
    """Experiment names with every fine-tune after the run it starts from."""
    if isinstance(profile, str):
        profile = get_profile(profile)
    names = list(profile.experiments)
    done: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in path:
            raise ValueError(f"init_from cycle: {' -> '.join(path + (name,))}")
        parent = profile.experiments[name].train.init_from
        if parent in profile.experiments:
            visit(parent, path + (name,))
        done.append(name)

    for name in names:
        visit(name, ())
    return done


def run_dir(out: str | Path, profile: str, experiment: str) -> Path:
    """Directory of one experiment: ``<out>/<profile>/<experiment>``."""
    return Path(out) / profile / experiment


def estimate_gpu_hours(
    profile: str | Profile = "paper",
    views_per_s: float = 30_000.0,
    train_images: int = 50_000,
) -> dict[str, float]:
    """Rough GPU hours per experiment (training only) at a given throughput.

    ``views_per_s`` is for ResNet-34 at 32x32 in bf16 on one GPU; ResNet-18
    runs about twice as fast. NOTE: the default 30,000 views/s is an
    assumption for an H100/H200-class GPU, not a measurement: replace it
    with the number printed by ``benchmarks/gpu_paper_profile.py``.
    """
    if isinstance(profile, str):
        profile = get_profile(profile)
    hours = {}
    for name, cfg in profile.experiments.items():
        per_image = entries_per_image(cfg.data.aux_mode)
        views = 2 if cfg.method in CONTRASTIVE else 1
        if cfg.method == "rotation":
            views = 1
        total = train_images * per_image * views * cfg.train.epochs
        speed = views_per_s * (2.0 if cfg.model.arch == "resnet18" else 1.0)
        hours[name] = total / speed / 3600
    hours["total"] = sum(hours.values())
    return hours


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: list a profile's experiments or show one's settings."""
    parser = argparse.ArgumentParser(prog="python -m mcl_core.config")
    parser.add_argument("--profile", default="quick", choices=PROFILE_NAMES)
    parser.add_argument("--list", action="store_true",
                        help="experiment names in dependency order")
    parser.add_argument("--show", metavar="EXPERIMENT",
                        help="print the resolved settings as JSON")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--keys", action="store_true",
                        help="list every settable key")
    args = parser.parse_args(argv)

    if args.show:
        cfg = resolve(get_experiment(args.profile, args.show, args.set))
        sys.stdout.write(json.dumps(to_dict(cfg), indent=2) + "\n")
    elif args.keys:
        sys.stdout.write("\n".join(setting_keys(ExperimentConfig())) + "\n")
    else:
        sys.stdout.write("\n".join(experiment_order(args.profile)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
