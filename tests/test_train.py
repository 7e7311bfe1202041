"""Training engine: settings, every method, checkpoints and exact resuming."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mcl_core import checkpoint as ckpt_io
from mcl_core import config as C
from mcl_core import train as T

REPO = Path(__file__).resolve().parents[1]

# tiny runs: 48 images of 4 synthetic classes, a handful of steps
TINY = [
    "data.train_limit=48", "data.images_per_batch=16", "train.epochs=1",
    "train.max_steps=2", "train.num_threads=1",
]


def tiny(name: str, *extra: str) -> C.ExperimentConfig:
    return C.get_experiment("smoke", name, TINY + list(extra))


def final_state(path: Path) -> dict:
    return ckpt_io.load(path)["model"]


# ---------------------------------------------------------------------------
# settings


def test_overrides_parse_each_field_type():
    cfg = C.apply_overrides(C.ExperimentConfig(), [
        "optim.lr=0.5", "train.epochs=3", "loss.spa=false",
        "data.ood=svhn,cifar100", "data.crop_scale=0.2,1",
        "eval.ways=1,8", "train.init_from=none", "data.classes=0,1,2",
    ])
    assert cfg.optim.lr == 0.5 and cfg.train.epochs == 3
    assert cfg.loss.spa is False
    assert cfg.data.ood == ("svhn", "cifar100")
    assert cfg.data.crop_scale == (0.2, 1.0)
    assert cfg.eval.ways == (1, 8)
    assert cfg.train.init_from is None
    assert cfg.data.classes == (0, 1, 2)


@pytest.mark.parametrize("text, match", [
    ("optim.lrr=1", "unknown setting 'optim.lrr'"),
    ("nope.lr=1", "unknown setting 'nope'"),
    ("train.epochs=ten", "train.epochs expects int, got 'ten'"),
    ("loss.spa=maybe", "loss.spa expects a bool"),
    ("data.crop_scale=0.5", "expects 2 comma-separated values"),
    ("optim", "key=value"),
])
def test_overrides_reject_unknown_keys_and_bad_values(text, match):
    with pytest.raises((KeyError, ValueError), match=match):
        C.apply_overrides(C.ExperimentConfig(), [text])


def test_paper_profile_holds_the_released_recipe():
    cfg = C.resolve(C.get_experiment("paper", "mcl"))
    assert (cfg.optim.name, cfg.optim.nesterov) == ("sgd", True)
    assert cfg.optim.lr == pytest.approx(1.2)  # 0.3 x 1024 entries / 256
    assert cfg.optim.weight_decay == 1e-6
    assert cfg.optim.final_lr_ratio == 5e-4
    assert cfg.train.epochs == 800
    assert cfg.data.images_per_batch == 256 and cfg.data.aux_mode == "aux"
    assert cfg.model.arch == "resnet34"
    assert C.get_experiment("paper", "supclr").model.arch == "resnet18"
    plain = C.resolve(C.get_experiment("paper", "simclr"))
    assert plain.optim.lr == pytest.approx(1.2)  # 1024 images, no rotations


def test_experiment_order_puts_fine_tunes_after_their_source():
    for profile in C.PROFILE_NAMES:
        order = C.experiment_order(profile)
        exps = C.get_profile(profile).experiments
        assert sorted(order) == sorted(exps)
        for name in order:
            src = exps[name].train.init_from
            if src:
                assert order.index(src) < order.index(name)


def test_config_cli_lists_one_experiment_per_line():
    out = subprocess.run(
        [sys.executable, "-m", "mcl_core.config", "--profile", "quick",
         "--list"], capture_output=True, text=True, cwd=REPO, check=True,
    ).stdout.split()
    assert out == C.experiment_order("quick")


def test_lr_schedule_matches_per_step_cosine_annealing():
    cfg = C.resolve(C.get_experiment("paper", "mcl"))
    total, lr = 1000, cfg.optim.lr
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=total, eta_min=lr * 5e-4)
    for step in range(total + 1):
        ours = lr * T.lr_factor(cfg, step, total, 100)
        assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        ref.step()


# ---------------------------------------------------------------------------
# every method trains


@pytest.mark.parametrize("name", [
    "ce", "rotation", "supclr", "mcl", "mcl_nospa_noaux", "mcl_da",
])
def test_each_method_trains_with_finite_losses(tmp_path, name):
    path = T.train(tiny(name), tmp_path / name, progress=False)
    state = ckpt_io.load(path)
    assert state["step"] == 2 and state["meta"]["method"] == state[
        "config"]["method"]
    for row in state["history"]:
        assert math.isfinite(row["loss"]) and row["loss"] > 0
    expected = {"ce": {"ce"}, "rotation": {"ce", "rot"},
                "supclr": {"supcon"}, "mcl": {"ccm", "spa"},
                "mcl_nospa_noaux": {"ccm"}, "mcl_da": {"ccm", "spa"}}[name]
    parts = set(state["history"][0]) - {"epoch", "loss", "lr", "seconds",
                                        "views_per_s", "steps"}
    assert parts == expected
    assert (tmp_path / name / "config.json").is_file()
    assert "epoch 1/1" in (tmp_path / name / "train.log").read_text()


def test_fine_tunes_start_from_the_contrastive_encoder(tmp_path):
    T.train(tiny("simclr"), tmp_path / "simclr", progress=False)
    src = final_state(tmp_path / "simclr" / "checkpoint.pt")
    for name in ("simclr_ce_ft", "simclr_joint_ft"):
        cfg = tiny(name, "train.max_steps=0")
        T.train(cfg, tmp_path / name, progress=False)
        got = final_state(tmp_path / name / "checkpoint.pt")
        torch.testing.assert_close(got["enc.conv1.weight"],
                                   src["enc.conv1.weight"], rtol=0, atol=0)
        assert "classifier.weight" in got

        T.train(tiny(name), tmp_path / f"{name}_2", progress=False)
        hist = ckpt_io.load(tmp_path / f"{name}_2" / "checkpoint.pt")[
            "history"]
        assert math.isfinite(hist[0]["ce"])


def test_fine_tune_without_its_source_names_the_missing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="train experiment 'mcl'"):
        T.train(tiny("mcl_ce_ft"), tmp_path / "mcl_ce_ft", progress=False)


# ---------------------------------------------------------------------------
# checkpoints


def test_checkpoint_is_atomic_and_loads_with_weights_only(tmp_path):
    path = T.train(tiny("mcl"), tmp_path / "run", progress=False)
    leftovers = [p.name for p in path.parent.iterdir() if ".tmp" in p.name]
    assert leftovers == []
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "step", "rng",
            "meta", "config", "sampler"} <= set(state)
    assert {"python", "numpy", "torch", "cuda", "gen_augment",
            "gen_loss"} <= set(state["rng"])


def test_rng_states_round_trip(tmp_path):
    import random

    import numpy as np

    gen = torch.Generator().manual_seed(3)
    state = ckpt_io.rng_state({"g": gen})
    ckpt_io.save_atomic(state, tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item(),
             torch.rand(1, generator=gen).item())
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    ckpt_io.set_rng_state(loaded, {"g": gen})
    again = (random.random(), np.random.rand(), torch.rand(1).item(),
             torch.rand(1, generator=gen).item())
    assert again == first


def test_resume_rejects_checkpoint_of_another_architecture(tmp_path):
    T.train(tiny("mcl"), tmp_path / "run", progress=False)
    wider = tiny("mcl", "model.width=16")
    with pytest.raises(ValueError, match=r"width: checkpoint 8 vs settings 16"):
        T.train(wider, tmp_path / "run", progress=False)
    other = tiny("simclr", "data.aux_mode=aux")
    with pytest.raises(ValueError, match=r"method: checkpoint 'mcl'"):
        T.train(other, tmp_path / "run", progress=False)


def test_non_finite_loss_stops_naming_step_and_checkpoint(
    tmp_path, monkeypatch
):
    real = T.compute_loss
    calls = []

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 4:  # the second step of epoch 2
            out.loss = out.loss * float("nan")
            out.parts["loss"] = out.loss.detach()
        return out

    monkeypatch.setattr(T, "compute_loss", poisoned)
    cfg = C.get_experiment("smoke", "simclr", [
        "data.train_limit=64", "train.epochs=3", "train.checkpoint_every=1",
        "train.num_threads=1",
    ])
    with pytest.raises(FloatingPointError) as err:
        T.train(cfg, tmp_path / "run", progress=False)
    msg = str(err.value)
    assert "step 3 (epoch 2)" in msg
    assert "ckpt_0001.pt" in msg


CHILD = """
import sys
from mcl_core import config as C
from mcl_core.train import train
cfg = C.get_experiment("smoke", "simclr", sys.argv[2:])
train(cfg, sys.argv[1], progress=False)
"""


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    sets = [
        "data.train_limit=96", "data.images_per_batch=8", "train.epochs=3",
        "train.checkpoint_every=1", "train.keep_checkpoints=0",
        "train.num_threads=1",
    ]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(killed)] + sets,
                            cwd=REPO, env=env)
    try:
        deadline = time.time() + 120
        while not (killed / "ckpt_0001.pt").exists():
            assert proc.poll() is None, "child ended before its checkpoint"
            assert time.time() < deadline, "no checkpoint after 120 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "checkpoint.pt").exists(), "run was not interrupted"

    cfg = C.get_experiment("smoke", "simclr", sets)
    resumed = T.train(cfg, killed, progress=False)
    log_text = (killed / "train.log").read_text()
    assert "resumed from" in log_text and "after epoch 1" in log_text
    reference = T.train(cfg, tmp_path / "straight", progress=False)

    got, want = final_state(resumed), final_state(reference)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0,
                                   msg=key)
