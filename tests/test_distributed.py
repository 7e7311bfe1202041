"""Two gloo processes with DDP give the loss and gradients of one process."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mcl_core import config as C
from mcl_core import distributed as D
from mcl_core.data import build_train_batch, load_dataset
from mcl_core.train import build_model, compute_loss, model_meta

WORLD = 2
METHODS = ("mcl", "simclr_joint_ft", "supclr")


def _setup(name: str):
    cfg = C.resolve(C.get_experiment("smoke", name, ["data.aux_mode=aux"]))
    data = load_dataset("synthetic", "train", image_size=16,
                        classes=(0, 1, 2, 3))
    # 8 images, 2 per class, in 4 rotations: 32 entries, 64 views
    idx = torch.cat([(data.labels == c).nonzero()[:2, 0] for c in range(4)])
    torch.manual_seed(0)
    model = build_model(model_meta(cfg, 4))
    # NOTE: eval-mode BN: per-rank batch statistics differ from global ones
    # (the released code's DataParallel has the same per-replica BN).
    model.eval()
    return cfg, model, data.images[idx], data.labels[idx]


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters()
            if p.grad is not None}


def _step(cfg, model, images, labels, world_size):
    batch = build_train_batch(images, labels, aux_mode="aux", augment=None)
    gen = torch.Generator().manual_seed(7)  # same SPA draws on every rank
    out = compute_loss(cfg, model, batch, generator=gen,
                       world_size=world_size)
    out.loss.backward()
    return out.parts["loss"]


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=WORLD)
    results = {}
    try:
        for name in METHODS:
            cfg, model, images, labels = _setup(name)
            ddp = nn.parallel.DistributedDataParallel(model)
            part = D.shard(len(images), D.current())
            loss = _step(cfg, ddp, images[part], labels[part], WORLD)
            dist.all_reduce(loss)  # a per-rank CE term is a local mean
            loss /= WORLD
            if rank == 0:
                results[name] = (loss, _grads(model))

        # the same step without multiplying the gathered loss by W
        cfg, model, images, labels = _setup("supclr")
        ddp = nn.parallel.DistributedDataParallel(model)
        part = D.shard(len(images), D.current())
        _step(cfg, ddp, images[part], labels[part], 1)
        if rank == 0:
            results["unscaled"] = _grads(model)
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "rank0.pt"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("name", METHODS)
def test_ddp_loss_and_gradients_equal_single_process(ddp_results, name):
    cfg, model, images, labels = _setup(name)
    loss = _step(cfg, model, images, labels, world_size=1)
    want = _grads(model)

    got_loss, got = ddp_results[name]
    torch.testing.assert_close(got_loss, loss, rtol=1e-5, atol=1e-6)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6,
                                   msg=key)


def test_unscaled_gathered_loss_would_divide_gradients_by_world_size(
    ddp_results,
):
    # DDP averages gradients over ranks while the gathered loss is global
    cfg, model, images, labels = _setup("supclr")
    _step(cfg, model, images, labels, world_size=1)
    want = _grads(model)
    got = ddp_results["unscaled"]
    for key in want:
        torch.testing.assert_close(got[key] * WORLD, want[key], rtol=1e-4,
                                   atol=1e-6, msg=key)
