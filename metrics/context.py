"""The shared, computed-once results that all metrics of one split read from.

* ``neighbours``: (N, k) indices of the k nearest other samples of every sample (squared
  Euclidean distance, exact, computed in row chunks so memory stays O(chunk · N)). The query
  itself is excluded **by index** (not by assuming it comes first); ties are broken by the lower
  index, deterministically.
* ``cluster_labels``: one seeded k-means with k = the number of classes present in this split.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch


def exact_knn(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """(N, k) indices of each row's k nearest other rows, ties broken by lower index."""
    n = len(x)
    k = min(k, n - 1)
    out = torch.empty(n, k, dtype=torch.long)
    if k <= 0:
        return out
    sq = x.pow(2).sum(1)
    for start in range(0, n, chunk):  # loop over row chunks, bounded memory
        rows = torch.arange(start, min(start + chunk, n), device=x.device)
        d = sq[rows, None] - 2.0 * x[rows] @ x.T + sq[None, :]
        d[torch.arange(len(rows)), rows] = float("inf")
        # stable sort on distance keeps lower indices first among exact ties
        order = torch.sort(d, dim=1, stable=True).indices[:, :k]
        out[start : start + len(rows)] = order.cpu()
    return out


class EvalContext:
    """Embeddings + labels of one split and the lazily computed shared results."""

    def __init__(self, embeddings: torch.Tensor, labels: torch.Tensor, *, seed: int = 0, device="cpu") -> None:
        self.device = torch.device(device)
        self.embeddings = embeddings.to(self.device, torch.float32)
        self.labels = torch.as_tensor(labels).long().cpu()
        self.seed = seed
        self._k = 0

    @property
    def n(self) -> int:
        return len(self.labels)

    @cached_property
    def class_counts(self) -> torch.Tensor:
        """Number of samples of each sample's class, per sample (N,)."""
        _, inverse, counts = torch.unique(self.labels, return_inverse=True, return_counts=True)
        return counts[inverse]

    @cached_property
    def n_classes(self) -> int:
        return int(torch.unique(self.labels).numel())

    def request_neighbours(self, k: int) -> None:
        self._k = max(self._k, k)

    @cached_property
    def neighbours(self) -> torch.Tensor:
        return exact_knn(self.embeddings, self._k)

    @cached_property
    def neighbour_labels(self) -> torch.Tensor:
        return self.labels[self.neighbours]

    @cached_property
    def cluster_labels(self) -> np.ndarray:
        import faiss

        x = np.ascontiguousarray(self.embeddings.cpu().numpy(), dtype=np.float32)
        km = faiss.Kmeans(
            x.shape[1], self.n_classes, niter=20, seed=self.seed, min_points_per_centroid=1,
            max_points_per_centroid=10**9, verbose=False,
        )
        km.train(x)
        return km.index.search(x, 1)[1][:, 0]
