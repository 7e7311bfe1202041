"""Views per second: batched tensor augmentation vs a per-image PIL pipeline.

Both sides produce the same transforms (rotation of the entry, flip,
RandomResizedCrop, ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale
with p = 0.2, to a float tensor) for batches of 256 views at 32x32. The PIL
side runs torchvision transforms in a DataLoader with 2 workers, as the
released code does; the tensor side runs ``TrainAugment`` in the main
process. Each side is timed over several rounds and the median is printed.

Usage: python benchmarks/bench_augment.py [--rounds 5] [--batches 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from mcl_core.augment import TrainAugment
from mcl_core.data import load_dataset

SIZE = 32
BATCH = 256


class PilEntries(Dataset):
    """(image, rotation) entries augmented one at a time through PIL."""

    def __init__(self, images: torch.Tensor) -> None:
        arr = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
        self.images = [Image.fromarray(np.ascontiguousarray(a)) for a in arr]
        self.transform = T.Compose([
            T.RandomResizedCrop(SIZE),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.ToTensor(),
        ])
        self.turns = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                      Image.Transpose.ROTATE_270)

    def __len__(self) -> int:
        return 4 * len(self.images)

    def __getitem__(self, idx: int) -> torch.Tensor:
        img, k = self.images[idx // 4], idx % 4
        # mirror in the unrotated frame, then rotate, as the released code
        if torch.rand(()) < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if k:
            img = img.transpose(self.turns[k])
        return self.transform(img)


def time_pil(images: torch.Tensor, rounds: int, batches: int) -> list[float]:
    loader = DataLoader(
        PilEntries(images), batch_size=BATCH, shuffle=True, num_workers=2,
        drop_last=True, persistent_workers=True,
    )
    rates = []
    for r in range(rounds + 1):
        it = iter(loader)
        next(it)  # workers started, first batch ready
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        rate = batches * BATCH / (time.perf_counter() - start)
        if r:  # round 0 warms up
            rates.append(rate)
    return rates


def time_batched(images: torch.Tensor, rounds: int, batches: int) -> list[float]:
    aug = TrainAugment(SIZE)
    g = torch.Generator().manual_seed(0)
    x = images.float() / 255  # (N, 3, H, W)
    rates = []
    for r in range(rounds + 1):
        start = time.perf_counter()
        for b in range(batches):
            idx = torch.randint(len(x), (BATCH,), generator=g)
            aug(x[idx], torch.arange(BATCH) % 4, g)
        rate = batches * BATCH / (time.perf_counter() - start)
        if r:
            rates.append(rate)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (5)")
    parser.add_argument(
        "--batches", type=int, default=20, help="batches per round (20)"
    )
    args = parser.parse_args()

    photos = load_dataset("photos", "train", image_size=SIZE).images  # (500, 3, 32, 32)
    num_copies = -(-(args.batches + 1) * BATCH // (4 * len(photos)))
    images = photos.repeat(num_copies, 1, 1, 1)  # enough entries for a round
    print(f"torch threads {torch.get_num_threads()}, {BATCH} views per batch, "
          f"{SIZE}x{SIZE}, {args.rounds} rounds x {args.batches} batches")
    pil = time_pil(images, args.rounds, args.batches)
    batched = time_batched(images, args.rounds, args.batches)
    pil_med, batched_med = statistics.median(pil), statistics.median(batched)
    print(f"PIL DataLoader (2 workers): median {pil_med:8.0f} views/s  "
          f"(rounds {[round(v) for v in pil]})")
    print(f"batched TrainAugment:       median {batched_med:8.0f} views/s  "
          f"(rounds {[round(v) for v in batched]})")
    print(f"ratio batched / PIL: {batched_med / pil_med:.2f}")


if __name__ == "__main__":
    main()
