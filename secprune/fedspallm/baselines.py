"""Baselines of FedSpaLLM's Tables 1-3: random pruning and standalone clients.

* Random: a seeded uniformly random mask with exactly ``ceil(s * d)`` pruned entries per matrix (the count
  FedSpaLLM reaches after mask expansion, Eq. 7); the kept weights keep their dense values.
* Standalone: each client's own SparseGPT model (round 1 without layer sampling, see
  :mod:`secprune.fedspallm.driver`); the tables report the mean perplexity over clients.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from secprune.fedspallm.aggregate import target_pruned
from secprune.fedspallm.driver import FedSpaSpec, fedspallm_prune
from secprune.model import all_prunable
from secprune.topk import priority


def random_masks(model, *, sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    """True = pruned; ``ceil(s * d)`` entries of every prunable matrix, uniformly at random (seeded per name)."""
    out = {}
    for name, lin in all_prunable(model).items():
        shape = tuple(lin.weight.shape)
        if len(shape) == 3:  # an expert stack: every expert's matrix drawn on its own
            out[name] = torch.stack([priority(shape=shape[1:], group="layer", seed=seed, tag=f"random:{name}[{e}]")
                                     < target_pruned(sparsity=sparsity, numel=shape[1] * shape[2])
                                     for e in range(shape[0])])
            continue
        perm = priority(shape=shape, group="layer", seed=seed, tag=f"random:{name}")  # permutation of 0..d-1
        out[name] = perm < target_pruned(sparsity=sparsity, numel=lin.weight.numel())
    return out


def standalone_model(model, windows: torch.Tensor, idx: np.ndarray, *, spec: FedSpaSpec,
                     progress: bool = False, checkpoint: Path | None = None) -> dict[str, torch.Tensor]:
    """Client-alone SparseGPT (with OBS update) on the windows ``idx``: one client, one round, every layer."""
    solo = FedSpaSpec(sparsity=spec.sparsity, rounds=1, expansion=False, layer_sampling=False,
                      local_group=spec.local_group, seed=spec.seed, batch_size=spec.batch_size, method=spec.method)
    res = fedspallm_prune(model, windows[torch.as_tensor(idx)], [np.arange(len(idx))], spec=solo,
                          keep_clients=[0], desc="standalone", progress=progress, checkpoint=checkpoint)
    return res.standalone[0]
