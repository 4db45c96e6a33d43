"""Server side of FedPrLLM (Fig. 1, steps 3-6): vote counts, top-k final mask, optional scaling."""

from __future__ import annotations

import numpy as np
import torch

from secprune.topk import lowest_k_mask, tie_break


def count_dtype(n_clients: int) -> np.dtype:
    """Smallest unsigned dtype that holds a sum of ``n_clients`` bits without overflow."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if n_clients <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def final_mask(counts: torch.Tensor, *, sparsity: float, group: str, seed: int, name: str, stable: bool = False
               ) -> torch.Tensor:
    """Step 4: prune the k weights with the most votes in every server comparison group (ties: seeded, or
    the lower index with ``stable``, as upstream's row/column selection by ``torch.sort(stable=True)``)."""
    prio = tie_break(shape=tuple(counts.shape), group=group, seed=seed, tag=f"server:{name}", stable=stable)
    return lowest_k_mask(-counts.to(torch.float32), sparsity=sparsity, group=group, prio=prio)


def scale_factor(counts: torch.Tensor, n_clients: int) -> torch.Tensor:
    """Step 6: retained weights are multiplied by (m - M_hat) / m."""
    return (n_clients - counts.to(torch.float32)) / n_clients


def pruned_weight(weight: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Step 5 (and 6): W (.) (1 - M), times the scale factor if given."""
    w = weight.masked_fill(mask.to(weight.device), 0.0)
    return w if scale is None else w * scale.to(weight.device, weight.dtype)
