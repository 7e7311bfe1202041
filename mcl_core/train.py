"""Training engine: every method of the paper's tables, resumable, 1..n GPUs.

``train(cfg, out_dir)`` trains one experiment (an ``ExperimentConfig`` from
``mcl_core.config``) into ``out_dir`` (``runs/<profile>/<experiment>``):
config.json, train.log, periodic ``ckpt_<epoch>.pt`` and the final
``checkpoint.pt``. Run again, it resumes from the newest checkpoint; the
interrupted epoch restarts from its beginning with the same random draws,
so a resumed run ends with the weights of an uninterrupted one.

Losses per method (the batch layout of SPEC section 0 throughout):

* ``mcl``: L_ccm + lambda L_spa (Eq. 10), or L_ccm alone with
  ``loss.spa=False``; rotation labels enter the mask with
  ``data.aux_mode="aux"`` (Eq. 11), rotations are plain augmentation with
  "da", and there are no rotations with "none".
* ``simclr``: NT-Xent (Eq. 1-2). ``supclr``: SupCon on class labels.
* ``ce``: cross-entropy on one augmented view per image (the Baseline).
* ``rotation`` (Hendrycks et al. 2019): every image in its 4 rotations, one
  view each; cross-entropy of the class head plus ``loss.rotation_weight``
  (0.5) times the cross-entropy of the 4-way rotation head. NOTE: the class
  loss covers all four rotations by default (``loss.rotation_class_on``
  "all"), so that SEI's rotated views have class predictions to ensemble;
  "upright" restricts it to unrotated images as in Hendrycks et al.
* ``ce_ft``: a trained contrastive encoder gets a linear classifier and the
  whole network is fine-tuned with cross-entropy (``train.freeze_encoder``
  trains the classifier only). ``joint_ft``: cross-entropy on both views
  plus ``loss.contrastive_weight`` x NT-Xent, as Winkens et al. (2020).
* ``released``: no training; fetches the authors' ResNet-34.

Speed: augmentation runs batched on the training device, bfloat16 autocast
and channels_last on CUDA, optional torch.compile, and the loss is read
back from the device only every ``train.log_every`` steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from mcl_core import checkpoint as ckpt_io
from mcl_core import config as C
from mcl_core import distributed as D
from mcl_core.augment import TrainAugment
from mcl_core.data import (
    ImageSet, TrainBatch, RotationBatchSampler, build_train_batch,
    data_root, load_dataset_cached,
)
from mcl_core.losses import (
    ccm_loss, draw_spa_positives, mcl_loss_terms, nt_xent, supcon_loss,
)
from mcl_core.model import (
    MCLNet, load_released_checkpoint, released_checkpoint_info,
)

log = logging.getLogger(__name__)

NUM_ROTATIONS = 4


# ---------------------------------------------------------------------------
# data


def parse_dataset(spec: str) -> tuple[str, tuple[int, ...] | None]:
    """Split "name@c1,c2" (or "name@lo-hi") into a name and its classes."""
    if "@" not in spec:
        return spec, None
    name, text = spec.split("@", 1)
    classes: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = part.split("-")
                classes += range(int(lo), int(hi) + 1)
            else:
                classes.append(int(part))
    except ValueError:
        raise ValueError(
            f"dataset spec must look like 'name@1,2,3' or 'name@1-3', "
            f"got {spec!r}"
        ) from None
    return name, tuple(classes)


def limit_set(data: ImageSet, limit: int | None) -> ImageSet:
    """First ``limit`` images, taken evenly across classes when labelled."""
    if limit is None or limit >= len(data):
        return data
    if (data.labels < 0).all():
        keep = torch.arange(limit)
    else:
        # round-robin over classes, each class in file order
        rank = torch.zeros_like(data.labels)
        for c in data.labels.unique():
            members = (data.labels == c).nonzero().flatten()
            rank[members] = torch.arange(len(members))
        order = torch.argsort(rank * (len(data) + 1) + torch.arange(len(data)))
        keep = order[:limit].sort().values
    return ImageSet(data.images[keep], data.labels[keep], data.class_names,
                    data.name)


def load_split(
    cfg: C.ExperimentConfig, spec: str, split: str, limit: int | None
) -> ImageSet:
    """Load one dataset split named by a spec such as "digits@6,7,8,9"."""
    name, classes = parse_dataset(spec)
    if spec == cfg.data.dataset and cfg.data.classes is not None:
        classes = cfg.data.classes
    data = load_dataset_cached(
        name, split, image_size=cfg.data.image_size, root=cfg.data.root,
        classes=classes, download=cfg.data.download,
    )
    return limit_set(data, limit)


def make_augment(cfg: C.ExperimentConfig) -> TrainAugment:
    """The view augmentation of SPEC 9.7 with the experiment's settings."""
    d = cfg.data
    return TrainAugment(
        d.image_size, crop_scale=d.crop_scale, jitter=d.jitter,
        p_jitter=d.p_jitter, p_gray=d.p_gray, flip=d.flip,
    )


def single_view_batch(
    images: Tensor, labels: Tensor, *, aux_mode: str, augment: TrainAugment,
    generator: torch.Generator,
) -> TrainBatch:
    """One augmented view per entry (classifier methods).

    Entries are the images ("none") or each image in its 4 rotations, rows
    4i..4i+3 ("aux"/"da"); ``aux`` holds the rotation for "aux" only.
    """
    n = len(images)
    x = images.float().div_(255)                               # (n, 3, H, W)
    if aux_mode == "none":
        views = augment(x, None, generator)                    # (n, 3, S, S)
        return TrainBatch(views, labels, None)
    idx = torch.arange(n, device=images.device).repeat_interleave(4)
    rot = torch.arange(4, device=images.device).repeat(n)      # (4n,)
    views = augment(x[idx], rot, generator)                    # (4n, 3, S, S)
    aux = rot if aux_mode == "aux" else None
    return TrainBatch(views, labels[idx], aux)


def make_batch(
    cfg: C.ExperimentConfig, images: Tensor, labels: Tensor,
    augment: TrainAugment, generator: torch.Generator,
) -> TrainBatch:
    """Augmented views of a (local) batch of uint8 images for the method."""
    if cfg.method in ("ce", "rotation", "ce_ft"):
        aux_mode = "aux" if cfg.method == "rotation" else cfg.data.aux_mode
        return single_view_batch(images, labels, aux_mode=aux_mode,
                                 augment=augment, generator=generator)
    return build_train_batch(images, labels, aux_mode=cfg.data.aux_mode,
                             augment=augment, generator=generator)


# ---------------------------------------------------------------------------
# model and optimiser


def model_meta(cfg: C.ExperimentConfig, num_classes: int) -> dict:
    """What a checkpoint of this experiment holds (checked when loading)."""
    heads = cfg.method in C.CLASSIFIERS
    return {
        "method": cfg.method, "arch": cfg.model.arch, "width": cfg.model.width,
        "proj_hidden": cfg.model.proj_hidden, "proj_dim": cfg.model.proj_dim,
        "num_classes": num_classes if heads else 0,
        "rotation_head": cfg.method == "rotation",
        "aux_mode": cfg.data.aux_mode, "image_size": cfg.data.image_size,
        "dataset": cfg.data.dataset, "ind_classes": num_classes,
    }


def build_model(meta: dict) -> MCLNet:
    """MCLNet with the architecture and heads named by ``meta``."""
    return MCLNet(
        arch=meta["arch"], width=meta["width"],
        proj_hidden=meta["proj_hidden"], proj_dim=meta["proj_dim"],
        num_classes=meta["num_classes"], rotation_head=meta["rotation_head"],
    )


def make_optimizer(
    cfg: C.ExperimentConfig, params: list[nn.Parameter]
) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (SPEC 9.7) or Adam (CPU profiles)."""
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
            weight_decay=o.weight_decay,
        )
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


def lr_factor(cfg: C.ExperimentConfig, step: int, total: int,
              steps_per_epoch: int) -> float:
    """Per-step multiplier of the base lr: warm-up, then cosine (SPEC 9.7).

    Equals CosineAnnealingLR(T_max=total, eta_min=final_lr_ratio * lr)
    stepped every iteration, as in the released code.
    """
    o = cfg.optim
    warm = o.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    if o.schedule == "constant":
        return 1.0
    t = (step - warm) / max(1, total - warm)
    cosine = 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return o.final_lr_ratio + (1 - o.final_lr_ratio) * cosine


# ---------------------------------------------------------------------------
# losses


@dataclass
class LossOutput:
    """Loss to differentiate and its detached parts for logging."""

    loss: Tensor  # scalar, scaled for DDP gradient averaging
    parts: dict[str, Tensor]  # unscaled scalars


def compute_loss(
    cfg: C.ExperimentConfig, model: nn.Module, batch: TrainBatch, *,
    generator: torch.Generator | None, world_size: int = 1,
    autocast: Callable = nullcontext,
) -> LossOutput:
    """Forward the views and return the method's loss.

    Contrastive losses see the projections of all ranks (the global batch);
    with W processes their value is multiplied by W in ``loss`` because DDP
    averages gradients over ranks (see ``mcl_core.distributed``).
    Classification losses are per-rank means and are not scaled.
    """
    with autocast():
        out = model(batch.views)
    lc = cfg.loss
    parts: dict[str, Tensor] = {}
    gathered: Tensor | None = None   # global contrastive loss
    local: Tensor | None = None      # per-rank classification loss

    if cfg.method in ("mcl", "simclr", "supclr", "joint_ft"):
        z = D.gather_with_grad(out.z.float())                  # (2E, D)
        y = D.gather(batch.labels)                             # (E,)
        aux = None if batch.aux is None else D.gather(batch.aux)
        if cfg.method == "mcl":
            masks = dict(tau=lc.tau, alpha=lc.alpha, beta=lc.beta,
                         variant=lc.variant)
            if lc.spa:
                pos = draw_spa_positives(
                    y, aux, generator=generator, variant=lc.variant,
                    positive_label=lc.positive_label,
                )
                # both terms from one similarity matrix (Eq. 10)
                parts["ccm"], parts["spa"] = mcl_loss_terms(
                    z, y, aux, positives=pos,
                    positive_label=lc.positive_label, **masks,
                )
                gathered = parts["ccm"] + lc.spa_weight * parts["spa"]
            else:
                parts["ccm"] = gathered = ccm_loss(z, y, aux, **masks)
        elif cfg.method == "supclr":
            parts["supcon"] = gathered = supcon_loss(z, y, tau=lc.tau)
        else:
            parts["nt_xent"] = nt_xent(z, tau=lc.tau, variant=lc.variant)
            gathered = lc.contrastive_weight * parts["nt_xent"]

    if cfg.method in ("ce", "ce_ft", "joint_ft", "rotation"):
        logits = out.logits.float()                            # (V, C)
        y = batch.labels
        if cfg.method == "joint_ft":
            y = y.repeat_interleave(2)                         # (2E,)
        if cfg.method == "rotation" and lc.rotation_class_on == "upright":
            up = batch.aux == 0
            logits, y = logits[up], y[up]
        parts["ce"] = F.cross_entropy(logits, y)
        weight = lc.ce_weight if cfg.method == "joint_ft" else 1.0
        local = weight * parts["ce"]
        if cfg.method == "rotation":
            parts["rot"] = F.cross_entropy(out.rot_logits.float(), batch.aux)
            local = local + lc.rotation_weight * parts["rot"]

    total = torch.zeros((), device=batch.views.device)
    if gathered is not None:
        total = total + gathered
    if local is not None:
        total = total + local
    logged = {k: v.detach() for k, v in parts.items()}
    parts = {"loss": total.detach(), **logged}
    scaled = total
    if gathered is not None and world_size > 1:
        scaled = gathered * world_size + (0 if local is None else local)
    return LossOutput(scaled, parts)


# ---------------------------------------------------------------------------
# helpers


def pick_device(name: str) -> torch.device:
    """"auto" -> CUDA when available; "cuda" without a GPU raises."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device 'cuda' requested but torch sees no GPU; use --device cpu "
            "or set train.device=cpu (the paper profile needs a GPU)"
        )
    return torch.device(name)


def autocast_for(device: torch.device, amp: str) -> Callable:
    """Context factory: bfloat16 autocast on CUDA ("auto"/"bf16")."""
    use = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    if not use:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """Seed of one random stream in one epoch (independent of resuming)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


@contextmanager
def log_to_file(path: Path, enabled: bool = True) -> Iterator[None]:
    """Copy mcl_core's log records to ``path`` while the block runs."""
    if not enabled:
        yield
        return
    pkg = logging.getLogger("mcl_core")
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    old_level = pkg.level
    if pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
    pkg.addHandler(handler)
    try:
        yield
    finally:
        pkg.removeHandler(handler)
        pkg.setLevel(old_level)
        handler.close()


def write_json(obj: dict, path: Path) -> None:
    """Write JSON atomically (temporary file + replace)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def init_path(cfg: C.ExperimentConfig, out_dir: Path) -> Path:
    """Checkpoint a fine-tune starts from: a path, or a sibling experiment."""
    src = cfg.train.init_from
    if src.endswith(".pt") or Path(src).is_file():
        return Path(src)
    return out_dir.parent / src / "checkpoint.pt"


def load_init(model: MCLNet, cfg: C.ExperimentConfig, out_dir: Path) -> None:
    """Copy encoder and projector of a trained run into ``model``."""
    path = init_path(cfg, out_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{cfg.name} fine-tunes {str(path)!r}, which does not exist; "
            f"train experiment {cfg.train.init_from!r} first"
        )
    state = ckpt_io.load(path)
    wanted = {k: getattr(cfg.model, k) for k in ckpt_io.WEIGHT_KEYS}
    ckpt_io.check_meta(state["meta"], wanted, path, ckpt_io.WEIGHT_KEYS)
    weights = {k: v for k, v in state["model"].items()
               if k.startswith(("enc.", "projector."))}
    missing, _ = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k.startswith(("enc.", "projector."))]
    if missing:
        raise ValueError(f"{str(path)!r} lacks encoder weights {missing[:5]}")
    log.info(f"fine-tuning from {path} ({ckpt_io.describe(state['meta'])})")


# ---------------------------------------------------------------------------
# the training loop


@dataclass
class _Run:
    """Everything one training run carries between epochs."""

    cfg: C.ExperimentConfig
    out_dir: Path
    info: D.DistInfo
    device: torch.device
    model: MCLNet
    net: nn.Module  # model, possibly wrapped by DDP / torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: RotationBatchSampler
    images: Tensor
    labels: Tensor
    augment: TrainAugment
    gens: dict[str, torch.Generator]
    meta: dict
    epoch: int = 0
    step: int = 0
    last_good: Path | None = None


def _save(run: _Run, path: Path, history: list[dict]) -> Path:
    state = {
        "format": ckpt_io.FORMAT,
        "meta": run.meta,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "epoch": run.epoch,
        "step": run.step,
        "rng": ckpt_io.rng_state(run.gens),
        "sampler": {"seed": run.sampler.seed, "epoch": run.epoch},
        "config": C.to_dict(run.cfg),
        "history": history,
    }
    return ckpt_io.save_atomic(state, path)


def _resume(run: _Run, history: list[dict]) -> None:
    found = ckpt_io.periodic(run.out_dir)
    if not found:
        return
    path = found[-1]
    state = ckpt_io.load(path)
    ckpt_io.check_meta(state["meta"], run.meta, path)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.epoch, run.step = int(state["epoch"]), int(state["step"])
    ckpt_io.set_rng_state(state["rng"], run.gens)
    history[:] = state.get("history", [])
    run.last_good = path
    log.info(f"resumed from {path} after epoch {run.epoch}, step {run.step}")


def _run_epoch(run: _Run, steps_total: int) -> dict[str, float]:
    """Train one epoch; returns mean loss parts, lr, seconds and views/s."""
    cfg, info = run.cfg, run.info
    run.net.train()
    if cfg.train.freeze_encoder:
        run.model.enc.eval()
    run.sampler.set_epoch(run.epoch)
    run.gens["augment"].manual_seed(epoch_seed(cfg.train.seed, run.epoch,
                                               1 + info.rank))
    run.gens["loss"].manual_seed(epoch_seed(cfg.train.seed, run.epoch, 0))
    autocast = autocast_for(run.device, cfg.train.amp)
    channels_last = cfg.train.channels_last and run.device.type == "cuda"

    sums: dict[str, Tensor] = {}
    bad_step = torch.tensor(-1, device=run.device)
    step_t = torch.tensor(run.step, device=run.device)
    start, views, steps = time.perf_counter(), 0, 0
    # this rank's image indices of every step, moved to the device once
    order = torch.as_tensor(run.sampler.batches())              # (steps, B)
    order = order[:, D.shard(order.shape[1], info)].to(run.device)
    for idx in order:
        if cfg.train.max_steps is not None and run.step >= cfg.train.max_steps:
            break
        batch = make_batch(cfg, run.images[idx], run.labels[idx], run.augment,
                           run.gens["augment"])
        if channels_last:
            batch.views = batch.views.contiguous(
                memory_format=torch.channels_last)
        out = compute_loss(cfg, run.net, batch, generator=run.gens["loss"],
                           world_size=info.world_size, autocast=autocast)

        run.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        run.optimizer.step()
        run.scheduler.step()

        # accumulate on the device; read back only every log_every steps
        for key, value in out.parts.items():
            sums[key] = sums.get(key, 0) + value
        finite = torch.isfinite(out.parts["loss"])
        bad_step = torch.where(~finite & (bad_step < 0), step_t, bad_step)
        step_t += 1
        run.step += 1
        steps += 1
        views += len(batch.views) * info.world_size
        if run.step % cfg.train.log_every == 0:
            _check_finite(run, bad_step)
            log.debug(f"step {run.step}/{steps_total}  loss "
                      f"{float(sums['loss']) / steps:.4f}")

    _check_finite(run, bad_step)
    if info.enabled:
        # per-rank classification terms are local means: average them
        for value in sums.values():
            torch.distributed.all_reduce(value)
            value /= info.world_size
    seconds = time.perf_counter() - start
    stats = {"loss": math.nan}
    stats.update({k: float(v) / max(steps, 1) for k, v in sums.items()})
    stats.update(lr=run.optimizer.param_groups[0]["lr"], seconds=seconds,
                 views_per_s=views / max(seconds, 1e-9), steps=steps)
    return stats


def _check_finite(run: _Run, bad_step: Tensor) -> None:
    bad = int(bad_step)
    if bad >= 0:
        good = str(run.last_good) if run.last_good else "none (no checkpoint)"
        raise FloatingPointError(
            f"{run.cfg.name}: the loss is not finite at step {bad} (epoch "
            f"{run.epoch + 1}); last good checkpoint: {good}"
        )


def _epoch_line(run: _Run, stats: dict[str, float]) -> str:
    skip = ("loss", "lr", "seconds", "views_per_s", "steps")
    parts = ", ".join(f"{k} {v:.3f}" for k, v in stats.items() if k not in skip)
    return (
        f"epoch {run.epoch}/{run.cfg.train.epochs}  loss {stats['loss']:.4f}"
        f" ({parts})  lr {stats['lr']:.2e}  {stats['seconds']:.1f} s  "
        f"{stats['views_per_s']:.0f} views/s"
    )


def _setup(cfg: C.ExperimentConfig, out_dir: Path, info: D.DistInfo,
           device: torch.device) -> _Run:
    """Data, model, optimiser, sampler and generators of a run."""
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed % 2**32)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)

    train_set = load_split(cfg, cfg.data.dataset, "train",
                           cfg.data.train_limit)
    num_classes = len(train_set.class_names)
    meta = model_meta(cfg, num_classes)
    model = build_model(meta)
    if cfg.method in ("ce_ft", "joint_ft"):
        load_init(model, cfg, out_dir)
    if cfg.train.freeze_encoder:
        model.enc.requires_grad_(False)
    if cfg.train.sync_bn and info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.train.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    net: nn.Module = model
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        unused = cfg.method in ("ce", "rotation", "ce_ft")
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=unused)
    if cfg.train.compile:
        net = torch.compile(net)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params)
    sampler = RotationBatchSampler(train_set.labels, cfg.data.images_per_batch,
                                   seed=cfg.train.seed, drop_last=True)
    steps_per_epoch = len(sampler)
    if steps_per_epoch == 0:
        raise ValueError(
            f"data.images_per_batch={cfg.data.images_per_batch} exceeds the "
            f"{len(train_set)} training images of {cfg.data.dataset!r}"
        )
    total = cfg.train.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(cfg, s, total, steps_per_epoch))
    gens = {
        "augment": torch.Generator(device=device),
        "loss": torch.Generator(device=device),
    }
    return _Run(
        cfg=cfg, out_dir=out_dir, info=info, device=device, model=model,
        net=net, optimizer=optimizer, scheduler=scheduler, sampler=sampler,
        images=train_set.images.to(device), labels=train_set.labels.to(device),
        augment=make_augment(cfg), gens=gens, meta=meta,
    )


def train(
    cfg: C.ExperimentConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    resume: bool = True,
) -> Path:
    """Train one experiment into ``out_dir``; return the final checkpoint.

    Writes config.json (resolved settings), train.log, ``ckpt_<epoch>.pt``
    every ``train.checkpoint_every`` epochs and ``checkpoint.pt`` at the
    end. With ``resume`` a finished run returns at once and an interrupted
    one continues from its newest periodic checkpoint. Under torchrun every
    rank trains its shard; only rank 0 writes.
    """
    cfg = C.resolve(cfg)
    out_dir = Path(out_dir)
    device = pick_device(cfg.train.device)
    info, created = D.setup(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    final = out_dir / "checkpoint.pt"
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with log_to_file(out_dir / "train.log", info.is_main):
            if resume and final.is_file():
                state = ckpt_io.load(final)
                found = state["meta"]
                wanted = model_meta(cfg, found.get("ind_classes", 0))
                if cfg.method == "released":
                    wanted.update(C.to_dict(C.ModelConfig(
                        **released_checkpoint_info()["model_kwargs"])))
                ckpt_io.check_meta(found, wanted, final)
                log.info(f"{cfg.name}: already trained ({final}); "
                         f"{ckpt_io.describe(state['meta'])}")
                return final
            if info.is_main:
                if not resume:
                    for old in ckpt_io.periodic(out_dir):
                        old.unlink()
                write_json(C.to_dict(cfg), out_dir / "config.json")
            if cfg.method == "released":
                return _released(cfg, final)
            return _train(cfg, out_dir, info, device, progress)
    finally:
        D.cleanup(created)


def _train(cfg: C.ExperimentConfig, out_dir: Path, info: D.DistInfo,
           device: torch.device, progress: bool) -> Path:
    run = _setup(cfg, out_dir, info, device)
    history: list[dict] = []
    _resume(run, history)
    steps_total = cfg.train.epochs * len(run.sampler)
    log.info(
        f"{cfg.name} ({cfg.method}, aux {cfg.data.aux_mode}): "
        f"{cfg.model.arch} width {cfg.model.width}, {len(run.images)} images, "
        f"{len(run.sampler)} steps/epoch, {cfg.train.epochs} epochs, "
        f"lr {cfg.optim.lr:g} ({cfg.optim.name}), {info.world_size} "
        f"process(es) on {device}"
    )

    bar = tqdm(total=cfg.train.epochs, initial=run.epoch, desc=cfg.name,
               leave=False, disable=not progress or not info.is_main)
    start = time.perf_counter()
    while run.epoch < cfg.train.epochs:
        stats = _run_epoch(run, steps_total)
        run.epoch += 1
        history.append({"epoch": run.epoch, **stats})
        log.info(_epoch_line(run, stats))
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}")
        every = cfg.train.checkpoint_every
        if info.is_main and (run.epoch % every == 0
                             or run.epoch == cfg.train.epochs):
            path = out_dir / f"ckpt_{run.epoch:04d}.pt"
            run.last_good = _save(run, path, history)
            ckpt_io.prune(out_dir, cfg.train.keep_checkpoints)
        if cfg.train.max_steps is not None and run.step >= cfg.train.max_steps:
            break
    bar.close()

    final = out_dir / "checkpoint.pt"
    if info.is_main:
        _save(run, final, history)
        log.info(f"{cfg.name}: trained {run.epoch} epochs in "
                 f"{time.perf_counter() - start:.1f} s -> {final}")
    return final


def _released(cfg: C.ExperimentConfig, final: Path) -> Path:
    """Fetch the authors' epoch_800.pt and store it as this run's checkpoint."""
    info = released_checkpoint_info()
    root = Path(data_root(cfg.data.root))
    path = root / info["filename"]
    if not path.is_file():
        if not cfg.data.download:
            raise FileNotFoundError(
                f"{path} not found; download {info['url']} and place it there"
            )
        from torchvision.datasets.utils import download_url

        root.mkdir(parents=True, exist_ok=True)
        try:
            download_url(info["url"], str(root), info["filename"])
        except Exception as err:  # offline, proxy, ...
            raise RuntimeError(
                f"could not download the released checkpoint from "
                f"{info['url']} ({err}); download it by hand and place it at "
                f"{path}"
            ) from err
    kwargs = info["model_kwargs"]
    cfg.model = C.ModelConfig(**kwargs)
    meta = model_meta(cfg, 10)
    model = load_released_checkpoint(build_model(meta), path)
    state = {
        "format": ckpt_io.FORMAT, "meta": meta, "model": model.state_dict(),
        "epoch": 800, "step": 0, "config": C.to_dict(cfg), "history": [],
        "source": info["url"],
    }
    ckpt_io.save_atomic(state, final)
    log.info(f"released checkpoint {path} -> {final}")
    return final


# ---------------------------------------------------------------------------
# command line


def cli_config(args: argparse.Namespace) -> C.ExperimentConfig:
    """Experiment settings from --profile/--experiment/--set/--device."""
    overrides = list(args.set)
    if args.device:
        overrides.append(f"train.device={args.device}")
        overrides.append(f"eval.device={args.device}")
    try:
        cfg = C.get_experiment(args.profile, args.experiment, overrides)
    except (KeyError, ValueError) as err:
        raise SystemExit(f"error: {err.args[0]}") from None
    profile = C.get_profile(args.profile)
    wants_gpu = cfg.train.device == "cuda" or (
        profile.requires_gpu and cfg.train.device == "auto")
    if wants_gpu and not torch.cuda.is_available() and not args.force:
        raise SystemExit(
            f"error: profile {args.profile!r} needs a GPU and torch sees none "
            "(estimate: python -c 'from mcl_core.config import "
            "estimate_gpu_hours; print(estimate_gpu_hours())'); pass --force "
            "with --device cpu to run it on the CPU anyway"
        )
    return cfg


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by the train and evaluate command lines."""
    parser.add_argument("--profile", default="quick", choices=C.PROFILE_NAMES)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--out", default="runs", help="runs root folder")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override settings, e.g. train.epochs=5")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--force", action="store_true",
                        help="run a GPU profile without a GPU")
    parser.add_argument("--no-progress", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mcl_core.train --profile quick --experiment mcl``."""
    parser = argparse.ArgumentParser(prog="python -m mcl_core.train")
    add_common_args(parser)
    parser.add_argument("--no-resume", action="store_true",
                        help="start over instead of resuming")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s")
    cfg = cli_config(args)
    out = C.run_dir(args.out, args.profile, args.experiment)
    path = train(cfg, out, progress=not args.no_progress,
                 resume=not args.no_resume)
    log.info(f"checkpoint: {path}")
    return 0


if __name__ == "__main__":
    # run the imported module's main so log records carry "mcl_core.train"
    # (train.log collects the mcl_core loggers)
    from mcl_core.train import main as _main

    sys.exit(_main())
