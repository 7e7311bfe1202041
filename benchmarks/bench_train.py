"""Training-step and SEI-extraction throughput: this engine vs the released way.

Training: views/s of a whole MCL step (augmentation, forward, backward,
loss, optimiser) for a CIFAR-form ResNet-18 at 32x32 with 256 views per
step, fed two ways:

* engine: uint8 images in memory, batched tensor augmentation
  (``build_train_batch`` + ``TrainAugment``), the engine's ``compute_loss``;
* released style: a per-image PIL torchvision pipeline (flip, rotation,
  RandomResizedCrop, ColorJitter, RandomGrayscale, ToTensor) in a
  DataLoader with 2 workers, fp32, the same model, loss and optimiser.

Evaluation: images/s of 8-way SEI feature extraction with many images per
forward pass vs one image (8 views) per pass, as the released evaluation
does.

    python benchmarks/bench_train.py [--width 64] [--steps 3]

On a CPU both training pipelines are dominated by the network's compute, so
their ratio stays near 1; the data pipeline matters on a GPU. Random images
stand in for CIFAR-10 (throughput does not depend on the pixels).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from mcl_core import config as C
from mcl_core.data import TrainBatch, build_train_batch
from mcl_core.evaluate import forward_views
from mcl_core.train import (
    build_model, compute_loss, make_augment, make_optimizer, model_meta,
)


class ReleasedPairs(Dataset):
    """(image, rotation) entries, two PIL-augmented views each (SPEC 9.7)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels  # (N, H, W, 3) uint8
        self.tail = transforms.Compose([
            transforms.RandomResizedCrop(32),
            transforms.RandomApply(
                [transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            transforms.ToTensor(),
        ])

    def __len__(self) -> int:
        return 4 * len(self.images)

    def __getitem__(self, i: int):
        k = i % 4
        img = np.ascontiguousarray(np.rot90(self.images[i // 4], k))
        flip = (transforms.RandomHorizontalFlip() if k % 2 == 0
                else transforms.RandomVerticalFlip())
        views = [self.tail(flip(Image.fromarray(img))) for _ in range(2)]
        return torch.stack(views), self.labels[i // 4], k


def setup(width: int):
    cfg = C.resolve(C.get_experiment("paper", "mcl_r18", [
        f"model.width={width}", "train.device=cpu", "optim.lr=0.1",
    ]))
    torch.manual_seed(0)
    model = build_model(model_meta(cfg, 10))
    return cfg, model, make_optimizer(cfg, list(model.parameters()))


def engine_views_per_s(width: int, steps: int, images: torch.Tensor,
                       labels: torch.Tensor) -> float:
    cfg, model, opt = setup(width)
    augment, gen = make_augment(cfg), torch.Generator().manual_seed(0)
    model.train()
    n = 32  # 32 images x 4 rotations x 2 views = 256 views
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()  # step 0 warms up
        sl = slice(step * n, (step + 1) * n)
        batch = build_train_batch(images[sl], labels[sl], aux_mode="aux",
                                  augment=augment, generator=gen)
        train_step(cfg, model, opt, batch, gen)
    return steps * 256 / (time.perf_counter() - start)


def train_step(cfg, model, opt, batch: TrainBatch, gen) -> None:
    """Loss, backward and optimiser step; reading the loss syncs the step."""
    out = compute_loss(cfg, model, batch, generator=gen)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()
    float(out.parts["loss"])


def released_views_per_s(width: int, steps: int, images: torch.Tensor,
                         labels: torch.Tensor) -> float:
    cfg, model, opt = setup(width)
    hwc = images.permute(0, 2, 3, 1).numpy()
    loader = DataLoader(ReleasedPairs(hwc, labels.numpy()), batch_size=128,
                        shuffle=False, num_workers=2, drop_last=True)
    gen = torch.Generator().manual_seed(0)
    model.train()
    it = iter(loader)
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        views, y, aux = next(it)                   # (128, 2, 3, 32, 32)
        views = views.flatten(0, 1)                # (256, 3, 32, 32)
        batch = TrainBatch(views, y.long(), aux.long())
        train_step(cfg, model, opt, batch, gen)
    return steps * 256 / (time.perf_counter() - start)


def sei_images_per_s(width: int, images: torch.Tensor, batch: int,
                     count: int) -> float:
    _, model, _ = setup(width)
    model.eval()
    x = images[:count]
    kw = dict(device=torch.device("cpu"), amp="none")
    forward_views(model, x[:batch], 8, batch_size=batch, **kw)  # warm-up
    start = time.perf_counter()
    forward_views(model, x, 8, batch_size=batch, **kw)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--eval-images", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    n = 32 * (args.steps + 1)
    images = torch.randint(0, 256, (max(n, args.eval_images), 3, 32, 32),
                           dtype=torch.uint8, generator=g)
    labels = torch.arange(len(images)) % 10
    print(f"CIFAR-form ResNet-18 width {args.width}, 32x32, 256 views/step, "
          f"{torch.get_num_threads()} threads, {args.steps} timed steps")

    ours = engine_views_per_s(args.width, args.steps, images, labels)
    theirs = released_views_per_s(args.width, args.steps, images, labels)
    print(f"train  engine (batched tensor augment)  {ours:8.1f} views/s")
    print(f"train  released style (PIL, 2 workers)   {theirs:8.1f} views/s")
    print(f"train  ratio engine / released           {ours / theirs:8.2f}x")

    big = sei_images_per_s(args.width, images, 64, args.eval_images)
    one = sei_images_per_s(args.width, images, 1, args.eval_images // 4)
    print(f"eval   8-way, 64 images per pass         {big:8.1f} images/s")
    print(f"eval   8-way, 1 image per pass           {one:8.1f} images/s")
    print(f"eval   ratio                             {big / one:8.2f}x")


if __name__ == "__main__":
    main()
