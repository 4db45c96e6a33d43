"""Splitting calibration windows across clients.

IID: shuffle, then equal contiguous shares. Non-IID (FedPrLLM Sec. 4.3): every source (corpus or genre)
is split across the ``m`` clients by proportions p ~ Dirichlet(alpha * 1_m), the usual label-skew
partition; we redraw (seeded) until every client holds at least one window.
"""

from __future__ import annotations

import numpy as np

from secprune.errors import UsageError


def iid(n_samples: int, n_clients: int, *, rng: np.random.Generator) -> list[np.ndarray]:
    if n_clients > n_samples:
        raise UsageError(f"--clients {n_clients}: more clients than calibration samples ({n_samples})")
    return [np.sort(part) for part in np.array_split(rng.permutation(n_samples), n_clients)]


def dirichlet(sources: np.ndarray, n_clients: int, *, alpha: float, rng: np.random.Generator,
              max_tries: int = 1000) -> list[np.ndarray]:
    """Split sample indices whose source label is ``sources[i]`` with per-source Dirichlet proportions."""
    if alpha <= 0:
        raise UsageError(f"--alpha must be > 0, got {alpha}")
    if n_clients > len(sources):
        raise UsageError(f"--clients {n_clients}: more clients than calibration samples ({len(sources)})")
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for src in np.unique(sources):
            idx = rng.permutation(np.flatnonzero(sources == src))
            p = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).round().astype(int)
            for c, chunk in enumerate(np.split(idx, cuts)):
                parts[c].extend(chunk.tolist())
        if all(parts):
            return [np.sort(np.array(p)) for p in parts]
    raise UsageError(f"--alpha {alpha}: could not give every one of {n_clients} clients a sample; "
                     "use more samples, fewer clients or a larger alpha")
