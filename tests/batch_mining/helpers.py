"""Small helpers for the miner tests (validity checks written independently of the miners)."""

from __future__ import annotations

import torch

import batch_mining
from utilities.registry import Registry


def build(name: str, **hp) -> batch_mining.BatchMiner:
    reg: Registry = batch_mining.REGISTRY
    return reg.get(name)(**hp)


def points(coords: list[list[float]]) -> torch.Tensor:
    return torch.tensor(coords, dtype=torch.float32)


def unit_circle(angles_deg: list[float]) -> torch.Tensor:
    a = torch.tensor(angles_deg, dtype=torch.float64) * torch.pi / 180
    return torch.stack([a.cos(), a.sin()], 1).float()


def assert_valid_triplets(labels: torch.Tensor, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> None:
    assert a.dtype == p.dtype == n.dtype == torch.long
    assert a.shape == p.shape == n.shape and a.dim() == 1
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist(), strict=True):
        assert i != j, (i, j, k)
        assert labels[i] == labels[j], (i, j, k)
        assert labels[i] != labels[k], (i, j, k)
