"""Seeding: the same seed repeats a training step exactly, another seed does not; loader workers are seeded."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from segtune.machine import seed_everything, seed_worker, worker_init_fn


def _step(seed: int, deterministic: bool = False) -> list[float]:
    """Seed, then build a tiny net and take three SGD steps on data drawn from torch, NumPy and random."""
    seed_everything(seed, deterministic=deterministic)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    losses = []
    for _ in range(3):
        x = torch.randn(4, 3, 16, 16) + float(np.random.rand()) + random.random()
        y = torch.randperm(4) % 2
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture
def restore_determinism():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]
    if before[3] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = before[3]


def test_same_seed_same_losses_other_seed_different() -> None:
    first = _step(7)
    assert _step(7) == first  # bit for bit
    assert _step(8) != first


def test_deterministic_turns_on_deterministic_algorithms(restore_determinism) -> None:
    first = _step(3, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert _step(3, deterministic=True) == first


class _Draws(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[int, int, float, float]:
        worker = torch.utils.data.get_worker_info()
        return worker.id, worker.seed, float(np.random.rand()), random.random()


def _load(seed: int) -> list[tuple[int, int, float, float]]:
    loader = torch.utils.data.DataLoader(_Draws(), batch_size=None, num_workers=2, worker_init_fn=seed_worker,
                                         generator=torch.Generator().manual_seed(seed))
    return [(int(w), int(s), float(a), float(b)) for w, s, a, b in loader]


def test_loader_workers_are_seeded_from_the_generator() -> None:
    first = _load(0)
    assert _load(0) == first
    assert _load(1) != first
    firsts = {}
    for worker, torch_seed, np_draw, py_draw in first:
        firsts.setdefault(worker, (torch_seed, np_draw, py_draw))
    assert len(firsts) == 2 and firsts[0][1:] != firsts[1][1:]  # workers draw different numbers
    for torch_seed, np_draw, py_draw in firsts.values():
        # The first draw of each worker comes from NumPy and random seeded with its torch seed.
        assert np_draw == np.random.RandomState(torch_seed % 2**32).rand()
        assert py_draw == random.Random(torch_seed % 2**32).random()
    assert worker_init_fn is seed_worker
