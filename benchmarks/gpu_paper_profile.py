"""Views/s of the paper profile's training step on one GPU (prepared script).

ResNet-34 (CIFAR stem), projector 512-2048-128, 256 images x 4 rotations x
2 views = 2048 views per step, batched augmentation on the GPU, MCL loss
(CCM + SPA), SGD Nesterov, bfloat16 autocast and channels_last, exactly the
engine's ``compute_loss``. Prints views/s, step time, peak memory and what
that means for 800 epochs (``config.estimate_gpu_hours``).

    python benchmarks/gpu_paper_profile.py [--steps 20] [--compile]
        [--arch resnet34] [--fp32]

Without CUDA it prints a message and exits with status 0.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from mcl_core import config as C
from mcl_core.data import build_train_batch
from mcl_core.train import (
    autocast_for, build_model, compute_loss, make_augment, make_optimizer,
    model_meta,
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU (the paper profile "
              "does too); nothing measured")
        return 0

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    cfg = C.resolve(C.get_experiment("paper", "mcl", [
        f"model.arch={args.arch}", f"train.compile={args.compile}",
        f"train.amp={'none' if args.fp32 else 'bf16'}",
    ]))
    torch.manual_seed(0)
    model = build_model(model_meta(cfg, 10)).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, list(model.parameters()))
    net = torch.compile(model) if args.compile else model
    augment = make_augment(cfg)
    gen = torch.Generator(device=device).manual_seed(0)
    autocast = autocast_for(device, cfg.train.amp)

    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8,
                           device=device)
    labels = torch.arange(256, device=device) % 10
    net.train()

    def step() -> torch.Tensor:
        batch = build_train_batch(images, labels, aux_mode="aux",
                                  augment=augment, generator=gen)
        batch.views = batch.views.contiguous(memory_format=torch.channels_last)
        out = compute_loss(cfg, net, batch, generator=gen, autocast=autocast)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return out.parts["loss"]

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    views = 2048 * args.steps
    speed = views / seconds
    hours = C.estimate_gpu_hours("paper", views_per_s=speed)
    name = torch.cuda.get_device_name(device)
    print(f"{name}: {args.arch}, 2048 views/step, "
          f"{'fp32' if args.fp32 else 'bf16'}, channels_last, "
          f"compile={args.compile}")
    print(f"  {speed:,.0f} views/s  {1000 * seconds / args.steps:.1f} ms/step"
          f"  peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB  "
          f"last loss {float(loss):.3f}")
    print(f"  mcl, 800 epochs: {hours['mcl']:.1f} GPU hours; all paper "
          f"experiments: {hours['total']:.1f} GPU hours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
