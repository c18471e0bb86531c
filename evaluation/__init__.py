"""Embed a split and compute its metrics.

``embed`` collects the embeddings of a split into one preallocated tensor (no Python lists);
``evaluate_split`` runs :func:`metrics.compute` on them and reports the time taken. Which epoch is
"best" is decided in :mod:`evaluation.selection`.
"""

from __future__ import annotations

import time

import torch
from torch import nn

import metrics


@torch.no_grad()
def embed(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float32 embeddings and (N,) labels of every item of ``loader``'s dataset, in order."""
    was_training = model.training
    model.eval()
    n = len(loader.dataset)
    embeddings: torch.Tensor | None = None
    labels = torch.empty(n, dtype=torch.long)
    for images, batch_labels, idx in loader:
        out = model(images.to(device, non_blocking=True)).float()
        if embeddings is None:
            embeddings = torch.empty(n, out.shape[1], dtype=torch.float32, device=out.device)
        embeddings[idx.to(out.device)] = out
        labels[idx] = batch_labels
    model.train(was_training)
    if embeddings is None:
        raise ValueError("cannot evaluate an empty split")
    return embeddings, labels


def evaluate_split(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    metric_names: list[str],
    device: torch.device,
    *,
    seed: int = 0,
    metric_device: torch.device | str = "cpu",
) -> dict[str, float]:
    """All ``metric_names`` on one split plus ``eval_time`` (seconds, embedding included)."""
    start = time.perf_counter()
    embeddings, labels = embed(model, loader, device)
    results = metrics.compute(metric_names, embeddings, labels, seed=seed, device=metric_device)
    results["eval_time"] = time.perf_counter() - start
    return results
