"""Time SEI scoring and the streaming Gaussian fit on random features.

Run from the repository root:  python benchmarks/bench_scoring.py
(add --threads 1 when other processes load the CPU: OpenMP threads
waiting on each other then slow small products down several-fold).

Measures (official convention, float64, CPU):
* 8-way SEI of 20,000 images against 40 Gaussians (10 classes x 4
  rotations) at D = 128: ``way_scores`` + ``aggregate(..., "w-avg")``;
* the same computed one image and one Gaussian at a time on a subset,
  scaled to 20,000 images, as a naive reference;
* a streaming ``GaussianFitter`` pass over 200,000 features in batches.

Timings are medians of repeats; other processes on the machine add noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from mcl_core.scoring import (
    WAY_ROTATIONS,
    ClassGaussians,
    GaussianFitter,
    aggregate,
)


def median_time(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()`` over repeats, after a warm-up.

    CPU time (all threads of this process) is less sensitive than wall time
    to other processes sharing the machine.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def random_features(n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """Features with a shared offset, so the normalised ones cluster."""
    return torch.randn(n, dim, generator=gen) + 0.5


def fit(feats, labels, aux, batch: int) -> ClassGaussians:
    fitter = GaussianFitter(10, 4, convention="official")
    for start in range(0, len(feats), batch):
        stop = start + batch
        fitter.update(feats[start:stop], labels[start:stop], aux[start:stop])
    return fitter.finalize()


def naive_sei(gaussians, feats: torch.Tensor) -> tuple[list, list]:
    """Per-image, per-Gaussian loop of the released 'wa' rule (reference)."""
    rotations, C = WAY_ROTATIONS[8], gaussians.num_classes
    preds, scores = [], []
    for views in feats.to(torch.float64):                  # (M, D)
        views = F.normalize(views, dim=1)
        inv_sum = torch.zeros(C, dtype=torch.float64)
        for m, rot in enumerate(rotations):
            for i in range(C):
                g = rot * C + i
                diff = views[m] - gaussians.means[g]
                d = torch.sqrt(diff @ gaussians.precisions[g] @ diff)
                inv_sum[i] += 1.0 / d
        harmonic = len(rotations) / inv_sum
        preds.append(int(harmonic.argmin()))
        scores.append(float(-harmonic.min()))
    return preds, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--fit-features", type=int, default=200_000)
    parser.add_argument("--fit-batch", type=int, default=1024)
    parser.add_argument("--naive-images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    n_fit, dim = args.fit_features, args.dim
    feats = random_features(n_fit, dim, gen)
    labels = torch.randint(0, 10, (n_fit,), generator=gen)
    aux = torch.randint(0, 4, (n_fit,), generator=gen)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {load}")

    # streaming fit of 40 Gaussians
    fit_repeats = max(1, args.repeats // 2)
    t_fit, cpu_fit = median_time(
        lambda: fit(feats, labels, aux, args.fit_batch), fit_repeats
    )
    print(
        f"streaming fit: {n_fit:,} features, D={dim}, batch "
        f"{args.fit_batch}: {t_fit:.3f} s wall, {cpu_fit:.3f} s CPU "
        f"(median of {fit_repeats})"
    )
    gaussians = fit(feats, labels, aux, args.fit_batch)

    # vectorised 8-way SEI, official 'wa' rule
    test = random_features(args.images * 8, dim, gen).view(args.images, 8, dim)

    def sei():
        return aggregate(gaussians.way_scores(test, 8), "w-avg")

    t_sei, cpu_sei = median_time(sei, args.repeats)
    print(
        f"8-way SEI (way_scores + w-avg): {args.images:,} images x 40 "
        f"Gaussians, D={dim}: {t_sei:.3f} s wall, {cpu_sei:.3f} s CPU "
        f"(median of {args.repeats}; target < 2 s)"
    )

    # naive reference on a subset, scaled
    k = args.naive_images
    t_naive, cpu_naive = median_time(
        lambda: naive_sei(gaussians, test[:k]), 1
    )
    scale = args.images / k
    print(
        f"naive per-sample loop: {k} images in {t_naive:.3f} s wall, "
        f"{cpu_naive:.3f} s CPU -> {t_naive * scale:.1f} s wall, "
        f"{cpu_naive * scale:.1f} s CPU scaled to {args.images:,}; "
        f"ratio naive / vectorised {t_naive * scale / t_sei:.0f}x wall, "
        f"{cpu_naive * scale / cpu_sei:.0f}x CPU"
    )

    # the two agree on the subset
    pred, score = sei()
    ref_pred, ref_score = naive_sei(gaussians, test[:k])
    agree = (pred[:k] == torch.tensor(ref_pred)).float().mean().item()
    err = (score[:k] - torch.tensor(ref_score, dtype=torch.float64)).abs()
    rel = (err / score[:k].abs()).max().item()
    print(f"subset check: pred agreement {agree:.3f}, max rel score diff "
          f"{rel:.1e}")


if __name__ == "__main__":
    main()
