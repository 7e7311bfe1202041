"""Atomic, self-describing training checkpoints.

A checkpoint is a dict of tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``: model, optimiser and scheduler state, the
number of finished epochs and steps, every random-number state (Python,
NumPy, torch CPU and CUDA, the augmentation and SPA generators, the sampler
seed and epoch), the resolved settings and a ``meta`` block naming the
method and architecture, which is compared before any state is loaded.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

FORMAT = "mcl-companion/1"
PERIODIC = re.compile(r"ckpt_(\d+)\.pt$")

# meta fields that must agree for resuming / for loading weights only
RESUME_KEYS = (
    "method", "arch", "width", "proj_hidden", "proj_dim", "num_classes",
    "rotation_head", "aux_mode", "image_size",
)
WEIGHT_KEYS = ("arch", "width", "proj_hidden", "proj_dim")


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, then os.replace."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load(path: str | os.PathLike) -> dict:
    """Load a checkpoint on the CPU with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a {FORMAT} checkpoint (for the authors' "
            "epoch_800.pt use the 'released' experiment)"
        )
    return ckpt


def describe(meta: dict) -> str:
    """One line naming what a checkpoint holds."""
    return ", ".join(f"{k}={meta.get(k)!r}" for k in RESUME_KEYS if k in meta)


def check_meta(
    found: dict, wanted: dict, path: str | os.PathLike, keys=RESUME_KEYS
) -> None:
    """Raise ValueError naming both sides if ``found`` and ``wanted`` differ."""
    diff = [k for k in keys if found.get(k) != wanted.get(k)]
    if diff:
        detail = ", ".join(
            f"{k}: checkpoint {found.get(k)!r} vs settings {wanted.get(k)!r}"
            for k in diff
        )
        raise ValueError(
            f"checkpoint {str(path)!r} does not match the settings "
            f"({detail}); it holds {describe(found)}"
        )


def periodic(folder: str | os.PathLike) -> list[Path]:
    """Periodic checkpoints ``ckpt_<epoch>.pt`` of a run, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := PERIODIC.search(p.name))]
    return [p for _, p in sorted(found)]


def prune(folder: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` periodic checkpoints (0 keeps all)."""
    if keep <= 0:
        return
    for path in periodic(folder)[:-keep]:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# random-number states as tensors and plain values


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """Every RNG state; NumPy's as a tensor so weights_only loading works."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": (torch.cuda.get_rng_state_all()
                 if torch.cuda.is_available() else []),
    }
    for name, gen in generators.items():
        state[f"gen_{name}"] = gen.get_state()
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    """Restore what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((
        np_state["kind"], np_state["keys"].numpy().astype(np.uint32),
        np_state["pos"], np_state["has_gauss"], np_state["gauss"],
    ))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in generators.items():
        if f"gen_{name}" in state:
            gen.set_state(state[f"gen_{name}"])
