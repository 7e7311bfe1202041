"""Evaluation engine: scores, SEI and metrics for one trained experiment.

``evaluate(run_dir)`` reads ``config.json`` and ``checkpoint.pt`` written by
``mcl_core.train`` and writes ``eval_config.json``, ``metrics.json`` and
``scores.npz`` beside them (run layout in the project contract).

Feature extraction runs every way of a batch in one forward pass: a batch of
n images becomes n x M views (``sei_views``, M = 8 covers ways 1, 4 and 8:
way 4 is views 0, 2, 4, 6 and way 1 is view 0). Gaussians are fitted by
streaming over the whole training set in its 4 rotations (one Gaussian per
class and rotation) for models trained with rotation labels, and on the
unrotated images (one per class, used by every way) otherwise;
``eval.gaussian_train_images = 20224`` reproduces the released subset
(SPEC 9.4).

Scorers per method (``config.default_scorers``):

* contrastive models (mcl, simclr, supclr, released): "mahalanobis" on the
  projections with SEI, ways 1/4/8, aggregations avg/max/w-avg/w-avg-eq19,
  in the official variant (L2-normalised projections, square-rooted
  distances, released rules) and the paper variant (raw projections,
  squared distances, Eq. 17-20).
* ce: "msp" (Hendrycks & Gimpel, the Baseline row), "odin" and
  "lee_mahalanobis" (penultimate features, tied covariance).
* rotation: "rotation", Hendrycks et al. (2019)'s score without SEI: the KL
  divergence of the class posterior from uniform minus the mean rotation
  cross-entropy over the 4 rotations (higher = more in-distribution). With
  SEI, way m (rotation r_m) contributes the class scores
  ``S_i^m = log p(i | x_m) + log p_rot(r_m | x_m)`` and S is aggregated by
  the same rules as MCL's; "avg" over 4 ways then equals the mean class
  log-probability plus Hendrycks' rotation term. Also "msp" (upright).
* ce_ft / joint_ft: "msp" of the fine-tuned classifier (what Table 3's
  fine-tuned rows compare with the Baseline) and "mahalanobis" on the
  projections beside it.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from mcl_core import checkpoint as ckpt_io
from mcl_core import config as C
from mcl_core.data import ImageSet
from mcl_core.metrics import accuracy, ood_metrics
from mcl_core.scoring import (
    WAY_ROTATIONS, GaussianFitter, LeeMahalanobis, aggregate, msp_score,
    odin_score, sei_views,
)
from mcl_core.train import (
    autocast_for, build_model, load_split, log_to_file, pick_device,
    write_json,
)

log = logging.getLogger(__name__)

# views of the 8-way layout that make up each way (SPEC 7.1 order)
WAY_VIEWS = {1: [0], 4: [0, 2, 4, 6], 8: list(range(8))}


def way_views(ways: int, top: int) -> list[int]:
    """Views of a ``top``-way forward pass that form the ``ways``-way set."""
    return list(range(top)) if ways == top else WAY_VIEWS[ways]
METRIC_KEYS = ("accuracy", "auroc", "fpr95", "aupr_in", "aupr_out")


# ---------------------------------------------------------------------------
# feature extraction


def iter_views(
    model: nn.Module, images: Tensor, ways: int, *, batch_size: int,
    device: torch.device, amp: str = "auto", keep: Sequence[str] = ("z",),
    progress: bool = False, desc: str = "features",
) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """Yield (start, outputs) per batch: each output (b, M, ...) on the CPU.

    All M ways of ``batch_size`` images go through the model in one pass
    of b x M views. ``images`` is uint8 (N, 3, H, W).
    """
    autocast = autocast_for(device, amp)
    channels_last = device.type == "cuda"
    model.eval()
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, leave=False, disable=not progress):
        x = images[start:start + batch_size].to(device).float().div_(255)
        v = sei_views(x, ways)                             # (b, M, 3, H, W)
        b = len(v)
        flat = v.flatten(0, 1)                             # (b M, 3, H, W)
        if channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), autocast():
            out = model(flat)
        yield start, {
            k: getattr(out, k).float().view(b, ways, -1).cpu() for k in keep
        }


def forward_views(
    model: nn.Module, images: Tensor, ways: int, **kwargs
) -> dict[str, Tensor]:
    """All outputs of :func:`iter_views`, concatenated: each (N, M, ...)."""
    parts: dict[str, list[Tensor]] = {}
    for _, out in iter_views(model, images, ways, **kwargs):
        for k, v in out.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def fit_gaussians(
    model: nn.Module, train: ImageSet, num_classes: int, num_aux: int,
    conventions: Sequence[str], *, limit: int | None,
    paper_reg: float = 0.0, **kwargs
) -> dict:
    """Stream the training set once and fit Gaussians per convention.

    With ``num_aux == 4`` every image enters in its 4 rotations (group
    ``g = rotation * C + class``); else the unrotated images only.
    """
    images = train.images[:limit] if limit else train.images
    labels = train.labels[:limit] if limit else train.labels
    fitters = {
        c: GaussianFitter(num_classes, num_aux, convention=c,
                          reg=paper_reg if c == "paper" else None)
        for c in conventions
    }
    ways = 4 if num_aux == 4 else 1
    rot = torch.tensor(WAY_ROTATIONS[ways])                  # (M,)
    for start, out in iter_views(model, images, ways, desc="fit", **kwargs):
        z = out["z"]                                          # (b, M, D)
        b = len(z)
        y = labels[start:start + b].repeat_interleave(ways)   # (b M,)
        aux = rot.repeat(b) if num_aux == 4 else None         # (b M,)
        for fitter in fitters.values():
            fitter.update(z.flatten(0, 1), y, aux)
    gaussians = {}
    for c, fitter in fitters.items():
        try:
            gaussians[c] = fitter.finalize()
        except ValueError as err:
            if c == "official":
                raise
            # NOTE: the paper variant has no regulariser (SPEC [A7]); with
            # fewer samples per group than dimensions it cannot be fitted.
            log.warning(f"{c} Gaussians skipped: {err}")
    return gaussians


# ---------------------------------------------------------------------------
# scorers: each returns {(scorer, ways, agg, variant): {dataset: (pred, score)}}


def _put(results: dict, key: tuple, dataset: str, pred, score) -> None:
    pred = torch.as_tensor(pred).cpu().numpy().astype(np.int64)
    score = torch.as_tensor(score).to(torch.float64).cpu().numpy()
    results.setdefault(key, {})[dataset] = (pred, score)


def mahalanobis_scores(
    gaussians: dict, feats: dict[str, Tensor], ecfg: C.EvalConfig,
    scorer: str = "mahalanobis",
) -> dict:
    """SEI class scores and every aggregation for every set (Eq. 12-20)."""
    results: dict = {}
    for variant, g in gaussians.items():
        for name, z in feats.items():                       # (n, 8, D)
            for ways in ecfg.ways:
                views = way_views(ways, z.shape[1])
                S = g.way_scores(z[:, views], ways)            # (n, M, C)
                if ways == 1:
                    score, pred = S[:, 0].max(dim=1)
                    _put(results, (scorer, 1, "-", variant), name, pred, score)
                    continue
                for agg in ecfg.aggregations:
                    pred, score = aggregate(S, agg, variant=variant)
                    _put(results, (scorer, ways, agg, variant), name, pred,
                         score)
    return results


def rotation_class_scores(logits: Tensor, rot_logits: Tensor,
                          ways: int) -> Tensor:
    """Per-way class scores S (n, M, C) of a rotation classifier.

    ``S_i^m = log p(i | x_m) + log p_rot(r_m | x_m)`` with r_m the rotation
    of view m (``WAY_ROTATIONS``); all entries are <= 0 like the negative
    distances that the SEI aggregations expect.
    """
    rot = torch.tensor(WAY_ROTATIONS[ways])                  # (M,)
    log_p = F.log_softmax(logits.double(), dim=2)            # (n, M, C)
    log_r = F.log_softmax(rot_logits.double(), dim=2)        # (n, M, 4)
    right = log_r[:, torch.arange(ways), rot]                # (n, M)
    S = log_p + right.unsqueeze(2)
    return S.clamp(max=-1e-12)                               # (n, M, C)


def hendrycks_score(logits: Tensor, rot_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Hendrycks et al. (2019): KL(U || p(y|x)) - mean_r CE_rot(r | x_r).

    ``logits``/``rot_logits`` are (n, 4, .) for the 4 rotations (way 4);
    the class posterior is that of the upright view. Higher = more IND.
    """
    log_p = F.log_softmax(logits[:, 0].double(), dim=1)      # (n, C)
    num_classes = log_p.shape[1]
    kl = -math.log(num_classes) - log_p.mean(dim=1)          # KL(U || p)
    log_r = F.log_softmax(rot_logits.double(), dim=2)        # (n, 4, 4)
    rot_ce = -log_r[:, torch.arange(4), torch.arange(4)].mean(dim=1)
    return log_p.argmax(dim=1), kl - rot_ce


def rotation_scores(outs: dict[str, dict[str, Tensor]],
                    ecfg: C.EvalConfig) -> dict:
    """"rotation" scorer: Hendrycks' score (1 way) and SEI (4/8 ways)."""
    results: dict = {}
    for name, out in outs.items():
        logits, rot = out["logits"], out["rot_logits"]      # (n, 8, .)
        four = way_views(4, logits.shape[1])
        if ecfg.rotation_score == "kl+rot":
            pred, score = hendrycks_score(logits[:, four], rot[:, four])
        else:
            pred, score = msp_score(logits[:, 0])
        _put(results, ("rotation", 1, "-", "official"), name, pred, score)
        for ways in (w for w in ecfg.ways if w > 1):
            views = way_views(ways, logits.shape[1])
            S = rotation_class_scores(logits[:, views], rot[:, views], ways)
            for variant in ecfg.variants:
                for agg in ecfg.aggregations:
                    pred, score = aggregate(S, agg, variant=variant)
                    _put(results, ("rotation", ways, agg, variant), name,
                         pred, score)
    return results


def _batched(fn: Callable[[Tensor], tuple], images: Tensor, batch_size: int,
             device: torch.device, progress: bool, desc: str) -> tuple:
    preds, scores = [], []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, leave=False, disable=not progress):
        x = images[start:start + batch_size].to(device).float().div_(255)
        pred, score = fn(x)
        preds.append(pred.cpu())
        scores.append(score.cpu())
    return torch.cat(preds), torch.cat(scores)


# ---------------------------------------------------------------------------
# metrics and files


def metric_rows(results: dict, ind_name: str, ind_labels: np.ndarray,
                ood_names: Sequence[str]) -> list[dict]:
    """One row per (scorer, ways, agg, variant, OOD set) with every metric."""
    rows = []
    for (scorer, ways, agg, variant), per_set in results.items():
        ind_pred, ind_score = per_set[ind_name]
        acc = float(accuracy(ind_pred, ind_labels))
        for ood in ood_names:
            m = ood_metrics(ind_score, per_set[ood][1])
            rows.append({
                "scorer": scorer, "ways": ways, "agg": agg,
                "variant": variant, "ood": ood, "accuracy": acc,
                **{k: float(m[k]) for k in METRIC_KEYS if k in m},
            })
    return rows


def score_arrays(results: dict) -> dict[str, np.ndarray]:
    """scores.npz entries: "scorer|ways|agg|dataset|score" and "|pred".

    Official-variant results use the plain scorer name; other variants
    append it: "mahalanobis@paper|4|avg|cifar100|score".
    """
    arrays = {}
    for (scorer, ways, agg, variant), per_set in results.items():
        name = scorer if variant == "official" else f"{scorer}@{variant}"
        for dataset, (pred, score) in per_set.items():
            arrays[f"{name}|{ways}|{agg}|{dataset}|score"] = score
            arrays[f"{name}|{ways}|{agg}|{dataset}|pred"] = pred
    return arrays


def _normalised(x: Tensor) -> np.ndarray:
    return F.normalize(x.double(), dim=1).float().numpy()


def load_run(run_dir: str | Path) -> tuple[C.ExperimentConfig, dict, Path]:
    """Settings (config.json) and final checkpoint of a trained run."""
    run_dir = Path(run_dir)
    cfg_path, ckpt_path = run_dir / "config.json", run_dir / "checkpoint.pt"
    for path in (cfg_path, ckpt_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; train it first (notebook 01_train or "
                f"python -m mcl_core.train --experiment {run_dir.name})"
            )
    import json

    cfg = C.from_dict(C.ExperimentConfig, json.loads(cfg_path.read_text()))
    return cfg, ckpt_io.load(ckpt_path), ckpt_path


# ---------------------------------------------------------------------------
# the evaluation


def evaluate(
    run_dir: str | Path,
    eval_cfg: C.EvalConfig | None = None,
    *,
    progress: bool = True,
) -> dict:
    """Score a trained run on its IND test set and OOD sets; write results.

    Args:
        run_dir: ``runs/<profile>/<experiment>`` holding config.json and
            checkpoint.pt.
        eval_cfg: evaluation settings; None uses those saved in config.json.

    Returns:
        The metrics.json content (also written to ``run_dir``).
    """
    run_dir = Path(run_dir)
    cfg, state, ckpt_path = load_run(run_dir)
    if eval_cfg is not None:
        cfg = replace(cfg, eval=eval_cfg)
    with log_to_file(run_dir / "train.log"):
        return _evaluate(cfg, state, run_dir, progress)


def _evaluate(cfg: C.ExperimentConfig, state: dict, run_dir: Path,
              progress: bool) -> dict:
    ecfg, meta = cfg.eval, state["meta"]
    start = time.perf_counter()
    device = pick_device(ecfg.device)
    model = build_model(meta)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    write_json(C.to_dict(ecfg), run_dir / "eval_config.json")

    # data: IND train/test and the OOD test sets
    train = load_split(cfg, cfg.data.dataset, "train", cfg.data.train_limit)
    ind_name = cfg.data.dataset
    sets = {ind_name: load_split(cfg, ind_name, "test", cfg.data.test_limit)}
    for spec in cfg.data.ood:
        sets[spec] = load_split(cfg, spec, "test", cfg.data.test_limit)
    num_classes = len(train.class_names)
    scorers = ecfg.scorers or C.default_scorers(cfg)
    top_way = max(ecfg.ways + ((4,) if "rotation" in scorers else ()))
    kw = dict(batch_size=ecfg.batch_size, device=device, amp=ecfg.amp,
              progress=progress)

    # one forward pass per set covers every way and every output
    keep = ["z", "h"]
    if meta["num_classes"]:
        keep.append("logits")
    if meta["rotation_head"]:
        keep.append("rot_logits")
    outs = {name: forward_views(model, s.images, top_way, keep=keep,
                                desc=name, **kw) for name, s in sets.items()}

    results: dict = {}
    if "mahalanobis" in scorers:
        num_aux = C.num_aux(cfg)
        gaussians = fit_gaussians(
            model, train, num_classes, num_aux, ecfg.variants,
            limit=ecfg.gaussian_train_images, paper_reg=ecfg.paper_reg,
            **kw)
        feats = {n: o["z"] for n, o in outs.items()}
        results.update(mahalanobis_scores(gaussians, feats, ecfg))
    if "msp" in scorers:
        for name, o in outs.items():
            pred, score = msp_score(o["logits"][:, 0])
            _put(results, ("msp", 1, "-", "official"), name, pred, score)
    if "rotation" in scorers:
        results.update(rotation_scores(outs, ecfg))
    if "odin" in scorers:
        results.update(_odin(model, sets, ecfg, device, progress))
    if "lee_mahalanobis" in scorers:
        results.update(_lee(model, train, sets, outs, num_classes, ecfg,
                            device, progress))

    ood_names = list(cfg.data.ood)
    ind_labels = sets[ind_name].labels.numpy()
    metrics = {
        "experiment": cfg.name, "method": cfg.method, "profile": cfg.profile,
        "ind_dataset": ind_name, "ood_datasets": ood_names,
        "arch": meta["arch"], "epochs": int(state.get("epoch", 0)),
        "num_aux": C.num_aux(cfg), "scorers": list(scorers),
        "results": metric_rows(results, ind_name, ind_labels, ood_names),
    }
    _write_scores(run_dir, results, outs, train, ind_name, ind_labels, model,
                  meta, ecfg, kw)
    write_json(metrics, run_dir / "metrics.json")
    _log_summary(metrics, time.perf_counter() - start)
    return metrics


def _odin(model: nn.Module, sets: dict, ecfg: C.EvalConfig,
          device: torch.device, progress: bool) -> dict:
    results: dict = {}

    def fn(x: Tensor) -> tuple:
        return odin_score(lambda v: model(v).logits.float(), x,
                          temperature=ecfg.odin_temperature,
                          epsilon=ecfg.odin_epsilon)

    for name, s in sets.items():
        pred, score = _batched(fn, s.images, ecfg.batch_size, device,
                               progress, f"odin {name}")
        _put(results, ("odin", 1, "-", "official"), name, pred, score)
    return results


def _lee(model: nn.Module, train: ImageSet, sets: dict, outs: dict,
         num_classes: int, ecfg: C.EvalConfig, device: torch.device,
         progress: bool) -> dict:
    results: dict = {}
    lee = LeeMahalanobis(num_classes)
    for start, out in iter_views(model, train.images, 1, keep=("h",),
                                 batch_size=ecfg.batch_size, device=device,
                                 amp=ecfg.amp, progress=progress, desc="lee"):
        h = out["h"][:, 0]                                   # (b, F)
        lee.update(h, train.labels[start:start + len(h)])
    lee.finalize()
    for name, s in sets.items():
        if ecfg.lee_epsilon > 0:
            def fn(x: Tensor) -> tuple:
                return lee.score_inputs(lambda v: model(v).h.float(), x,
                                        ecfg.lee_epsilon)
            pred, score = _batched(fn, s.images, ecfg.batch_size, device,
                                   progress, f"lee {name}")
        else:
            pred, score = lee.score(outs[name]["h"][:, 0])
        _put(results, ("lee_mahalanobis", 1, "-", "official"), name, pred,
             score)
    return results


def _write_scores(run_dir: Path, results: dict, outs: dict, train: ImageSet,
                  ind_name: str, ind_labels: np.ndarray, model: nn.Module,
                  meta: dict, ecfg: C.EvalConfig, kw: dict) -> None:
    """scores.npz: per-image scores and preds, labels, embeddings."""
    # embeddings: projections, or penultimate features for a plain classifier
    # whose projector was never trained
    source = "h" if meta["method"] in ("ce", "rotation") else "z"
    arrays = score_arrays(results)
    arrays["ind_labels"] = ind_labels
    arrays["test_z"] = _normalised(outs[ind_name][source][:, 0])
    arrays["test_labels"] = ind_labels
    for name, out in outs.items():
        if name != ind_name:
            arrays[f"ood_z|{name}"] = _normalised(out[source][:, 0])

    # a seeded subset of at most embed_train_max training images
    n = len(train)
    g = torch.Generator().manual_seed(0)
    index = torch.randperm(n, generator=g)[:ecfg.embed_train_max].sort().values
    train_out = forward_views(model, train.images[index], 1, keep=(source,),
                              desc="train z", **kw)
    arrays["train_z"] = _normalised(train_out[source][:, 0])
    arrays["train_labels"] = train.labels[index].numpy()
    arrays["train_index"] = index.numpy()
    arrays["z_source"] = np.array(source)

    tmp = run_dir / ".scores.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    tmp.replace(run_dir / "scores.npz")


def _log_summary(metrics: dict, seconds: float) -> None:
    log.info(f"{metrics['experiment']}: evaluated in {seconds:.1f} s")
    for row in metrics["results"]:
        if row["variant"] != "official" or row["agg"] not in ("-", "w-avg"):
            continue
        log.info(
            f"  {row['scorer']} {row['ways']}-way {row['agg']}  "
            f"{row['ood']}: acc {row['accuracy']:.4f}  "
            f"auroc {row['auroc']:.4f}  fpr95 {row['fpr95']:.4f}"
        )


# ---------------------------------------------------------------------------
# command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mcl_core.evaluate --profile quick --experiment mcl``."""
    from mcl_core.train import add_common_args, cli_config

    parser = argparse.ArgumentParser(prog="python -m mcl_core.evaluate")
    add_common_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s")
    cfg = cli_config(args)
    out = C.run_dir(args.out, args.profile, args.experiment)
    evaluate(out, cfg.eval, progress=not args.no_progress)
    log.info(f"metrics: {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    # run the imported module's main so log records carry "mcl_core.evaluate"
    # (train.log collects the mcl_core loggers)
    from mcl_core.evaluate import main as _main

    sys.exit(_main())
