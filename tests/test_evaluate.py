"""Evaluation engine: files of the run layout, SEI views and baseline scores."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mcl_core import config as C
from mcl_core import evaluate as E
from mcl_core import train as T
from mcl_core.scoring import GaussianFitter

TINY = [
    "data.train_limit=96", "data.images_per_batch=16", "data.test_limit=24",
    "train.epochs=1", "train.max_steps=2", "train.num_threads=1",
    "eval.embed_train_max=20",
]
METRICS = ("accuracy", "auroc", "fpr95", "aupr_in", "aupr_out")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name in ("mcl", "mcl_noaux", "ce", "rotation"):
        cfg = C.get_experiment("smoke", name, TINY)
        T.train(cfg, root / name, progress=False)
        out[name] = (root / name, E.evaluate(root / name, progress=False))
    return out


def test_metrics_json_has_every_way_aggregation_and_ood_set(runs):
    run_dir, metrics = runs["mcl"]
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk == metrics
    assert {"experiment", "method", "profile", "ind_dataset", "ood_datasets",
            "results"} <= set(metrics)
    assert metrics["ood_datasets"] == ["synthetic@4,5", "noise"]

    keys = {(r["scorer"], r["ways"], r["agg"], r["variant"], r["ood"])
            for r in metrics["results"]}
    for ood in metrics["ood_datasets"]:
        for variant in ("official", "paper"):
            assert ("mahalanobis", 1, "-", variant, ood) in keys
            for ways in (4, 8):
                for agg in ("avg", "max", "w-avg", "w-avg-eq19"):
                    assert ("mahalanobis", ways, agg, variant, ood) in keys
    for row in metrics["results"]:
        for key in METRICS:
            assert 0.0 <= row[key] <= 1.0, (row, key)
    assert (run_dir / "eval_config.json").is_file()


def test_scores_npz_holds_scores_labels_and_embeddings(runs):
    run_dir, metrics = runs["mcl"]
    z = np.load(run_dir / "scores.npz")
    ind = metrics["ind_dataset"]
    n = len(z["ind_labels"])
    assert n == 24
    for ds in [ind] + metrics["ood_datasets"]:
        assert z[f"mahalanobis|8|w-avg|{ds}|score"].dtype == np.float64
        assert z[f"mahalanobis|8|w-avg|{ds}|pred"].dtype == np.int64
        assert f"mahalanobis@paper|4|avg|{ds}|score" in z
    assert z["test_z"].shape == (n, 16)
    np.testing.assert_allclose(np.linalg.norm(z["test_z"], axis=1), 1.0,
                               rtol=1e-5)
    assert z["train_z"].shape == (20, 16)
    assert z["train_labels"].shape == z["train_index"].shape == (20,)
    assert z["ood_z|noise"].shape[1] == 16
    np.testing.assert_array_equal(z["test_labels"], z["ind_labels"])


def test_baseline_scorers_of_classifiers(runs):
    scorers = {r["scorer"] for r in runs["ce"][1]["results"]}
    assert scorers == {"msp", "odin", "lee_mahalanobis"}
    rows = runs["rotation"][1]["results"]
    assert {(r["scorer"], r["ways"]) for r in rows} >= {
        ("rotation", 1), ("rotation", 4), ("rotation", 8), ("msp", 1)}
    z = np.load(runs["ce"][0] / "scores.npz")
    assert str(z["z_source"]) == "h"


def test_models_without_aux_labels_use_one_gaussian_per_class(runs):
    assert runs["mcl_noaux"][1]["num_aux"] == 1
    assert runs["mcl"][1]["num_aux"] == 4


def test_ways_of_one_eight_way_pass_equal_separate_passes(runs):
    run_dir, _ = runs["mcl"]
    cfg, state, _ = E.load_run(run_dir)
    model = T.build_model(state["meta"])
    model.load_state_dict(state["model"])
    images = T.load_split(cfg, cfg.data.dataset, "test", 10).images
    kw = dict(batch_size=4, device=torch.device("cpu"), amp="none")
    eight = E.forward_views(model, images, 8, **kw)["z"]          # (n, 8, D)
    for ways in (1, 4):
        alone = E.forward_views(model, images, ways, **kw)["z"]
        torch.testing.assert_close(eight[:, E.way_views(ways, 8)], alone,
                                   rtol=1e-4, atol=1e-5)


def test_gaussian_subset_uses_the_first_training_images(runs):
    run_dir, _ = runs["mcl"]
    cfg, state, _ = E.load_run(run_dir)
    model = T.build_model(state["meta"])
    model.load_state_dict(state["model"])
    train = T.load_split(cfg, cfg.data.dataset, "train", 48)  # 12 a class
    kw = dict(batch_size=7, device=torch.device("cpu"), amp="none")
    got = E.fit_gaussians(model, train, 4, 4, ("official",), limit=40,
                          **kw)["official"]
    z = E.forward_views(model, train.images[:40], 4, **kw)["z"]  # (40, 4, D)
    fitter = GaussianFitter(4, 4)
    fitter.update(z.flatten(0, 1), train.labels[:40].repeat_interleave(4),
                  torch.arange(4).repeat(40))
    want = fitter.finalize()
    torch.testing.assert_close(got.means, want.means, rtol=1e-6, atol=1e-8)


def test_hendrycks_score_is_zero_kl_minus_rotation_loss_for_uniform_heads():
    logits = torch.zeros(3, 4, 5)                               # (n, 4, C)
    rot = torch.zeros(3, 4, 4)                                  # (n, 4, 4)
    pred, score = E.hendrycks_score(logits, rot)
    torch.testing.assert_close(score, torch.full((3,), -math.log(4),
                                                 dtype=torch.float64))
    # a confident, correct rotation head removes the rotation loss
    rot = torch.eye(4).expand(3, 4, 4) * 50
    _, score = E.hendrycks_score(logits, rot)
    torch.testing.assert_close(score, torch.zeros(3, dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_rotation_sei_average_adds_the_rotation_log_likelihood():
    torch.manual_seed(0)
    logits, rot = torch.randn(5, 4, 3), torch.randn(5, 4, 4)
    S = E.rotation_class_scores(logits, rot, 4)                 # (n, 4, C)
    log_p = torch.log_softmax(logits.double(), dim=2)
    log_r = torch.log_softmax(rot.double(), dim=2)
    right = torch.stack([log_r[:, m, m] for m in range(4)], dim=1)
    torch.testing.assert_close(S.mean(dim=1),
                               log_p.mean(dim=1) + right.mean(dim=1, keepdim=True))


def test_missing_checkpoint_names_the_path_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="mcl_core.train"):
        E.evaluate(tmp_path / "nothing", progress=False)


def _write_pngs(folder, count, colour, size=12):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for i in range(count):
        noise = rng.integers(0, 40, (size, size, 3))
        pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")


def test_own_image_folders_train_and_evaluate(tmp_path):
    # a user's data: two classes in the ImageFolder layout, OOD as a flat
    # folder, selected only through settings
    ind, ood = tmp_path / "parts", tmp_path / "defects"
    for split, count in (("train", 16), ("test", 6)):
        _write_pngs(ind / split / "bolt", count, (200, 40, 40))
        _write_pngs(ind / split / "nut", count, (40, 40, 200))
    _write_pngs(ood, 6, (40, 200, 40))
    settings = TINY + [
        f"data.dataset=folder:{ind}", "data.classes=none",
        f"data.ood=folder:{ood}", "data.images_per_batch=8",
    ]
    cfg = C.get_experiment("smoke", "mcl", settings)
    T.train(cfg, tmp_path / "run", progress=False)
    metrics = E.evaluate(tmp_path / "run", progress=False)

    assert metrics["ood_datasets"] == [f"folder:{ood}"]
    rows = [r for r in metrics["results"] if r["ways"] == 8]
    assert rows and all(0.0 <= r["auroc"] <= 1.0 for r in rows)
