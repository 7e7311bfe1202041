"""Time mcl_loss (CCM + SPA, official rule) forward + backward on CPU.

Usage: python benchmarks/bench_losses.py [--entries 1024] [--dim 128]

Prints the median over repeats (after warm-up) of mcl_core.losses.mcl_loss
and of a naive reference that builds each mask as its own (2N, 2N) float
tensor and differentiates through autograd, the ratio of the two
(calls alternated, so both see the same background load), and the
largest difference between their losses and gradients. A plain z @ z.T is
timed alongside as a yardstick, so a run on a busy machine can be scaled.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mcl_core.losses import draw_spa_positives, mcl_loss


def naive_mcl(z, labels, aux, pos_entry, tau=0.2, alpha=0.05, beta=2.0):
    """Official CCM + SPA (SPEC §9.2-9.3), one float mask per rule."""
    num_views = len(z)
    z_hat = torch.nn.functional.normalize(z, dim=1)
    sim = (z_hat @ z_hat.T).clamp_min(1e-7)  # (2N, 2N)

    # per-view labels and masks, each a (2N, 2N) float tensor
    main_v = labels.repeat_interleave(2)
    aux_v = aux.repeat_interleave(2)
    same_main = (main_v[:, None] == main_v[None, :]).float()
    same_aux = (aux_v[:, None] == aux_v[None, :]).float()
    eye = torch.eye(num_views)
    view = torch.arange(num_views)
    parent = view // 2
    same_entry = (parent[:, None] == parent[None, :]).float()
    partner = torch.zeros(num_views, num_views)
    partner[view, view ^ 1] = 1.0
    joint = same_main * same_aux
    other_entry_joint = joint * (1 - same_entry)
    ccm = (
        other_entry_joint * alpha
        + same_main * (1 - same_aux) * beta
        + (1 - same_main) / tau
        + same_entry / tau
    )

    # CCM: cross-entropy towards the partner
    logits = sim * ccm - 1e5 * eye
    ccm_rows = torch.logsumexp(logits, 1) - (sim * partner).sum(1) / tau

    # SPA: per-entry draw, target 1/tau, partner 0
    target_view = 2 * pos_entry.repeat_interleave(2) + view % 2
    target = torch.zeros(num_views, num_views)
    target[view, target_view] = 1.0
    spa = ccm * (1 - partner) * (1 - target) + target / tau
    logits = sim * spa - 1e5 * eye
    spa_rows = torch.logsumexp(logits, 1) - (sim * target).sum(1) / tau
    return ccm_rows.mean() + spa_rows.mean()


def time_both(fns, repeats: int, warmup: int) -> list[list[float]]:
    """Seconds per call of each function, calls alternated to share the load."""
    times = [[] for _ in fns]
    for i in range(warmup + repeats):
        for fn, record in zip(fns, times):
            start = time.perf_counter()
            fn()
            if i >= warmup:
                record.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1024, help="N (2N views)")
    parser.add_argument("--dim", type=int, default=128, help="D")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    n = args.entries
    z = torch.randn(2 * n, args.dim, generator=gen, requires_grad=True)
    # 256 images x 4 rotations per batch: 10 classes, rotation = entry % 4
    labels = torch.randint(0, 10, (n // 4,), generator=gen).repeat_interleave(4)
    aux = torch.arange(n) % 4
    pos = draw_spa_positives(labels, aux, generator=gen)

    def ours():
        z.grad = None
        mcl_loss(z, labels, aux, positives=pos).backward()

    def naive():
        z.grad = None
        naive_mcl(z, labels, aux, pos).backward()

    # agreement of the two on this batch
    ours()
    grad_ours = z.grad.clone()
    loss_ours = mcl_loss(z, labels, aux, positives=pos).item()
    naive()
    loss_naive = naive_mcl(z, labels, aux, pos).item()
    grad_diff = (z.grad - grad_ours).abs().max().item()

    # one forward (2N, D) x (D, 2N) product, as a yardstick of the CPU share
    # this process gets while other jobs run
    def gram():
        z.detach() @ z.detach().T

    t_ours, t_naive, t_gram = time_both([ours, naive, gram], args.repeats, args.warmup)
    med_ours, med_naive = statistics.median(t_ours), statistics.median(t_naive)
    med_gram = statistics.median(t_gram)
    print(
        f"mcl_loss fwd+bwd  2N={2 * n} D={args.dim} float32 CPU "
        f"threads={torch.get_num_threads()}"
    )
    print(f"  mcl_core.losses : median {med_ours:.4f} s  (min {min(t_ours):.4f})")
    print(f"  naive reference : median {med_naive:.4f} s  (min {min(t_naive):.4f})")
    print(f"  ratio naive/ours: {med_naive / med_ours:.2f}")
    print(
        f"  yardstick z@z.T : median {med_gram:.4f} s; mcl_loss = "
        f"{med_ours / med_gram:.1f} of them"
    )
    print(
        f"  |loss diff| {abs(loss_ours - loss_naive):.2e}  "
        f"max |grad diff| {grad_diff:.2e}"
    )
    print(f"  target < 0.15 s: {'met' if med_ours < 0.15 else 'NOT met'}")


if __name__ == "__main__":
    main()
