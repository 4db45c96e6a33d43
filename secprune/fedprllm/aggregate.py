"""Server side of FedPrLLM (Fig. 1, steps 3-6): vote counts, top-k final mask, optional scaling."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from secprune.topk import lowest_k_mask, most_votes_mask, small_integer_range, tie_break


def count_dtype(n_clients: int) -> np.dtype:
    """Smallest unsigned dtype that holds a sum of ``n_clients`` bits without overflow."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if n_clients <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def count_tensor(summed, n_clients: int) -> torch.Tensor:
    """Vote counts as the server keeps them: the smallest dtype that holds ``n_clients`` (uint8 up to 255
    clients: 8x less memory than int64 on a 0.5B model's 0.36 G prunable weights)."""
    a = np.asarray(summed)
    if a.size and (int(a.min()) < 0 or int(a.max()) > n_clients):  # noisy sums (--dp-noise) leave [0, m]
        return torch.as_tensor(a).to(torch.int64)
    dtype = {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.int32}.get(count_dtype(n_clients),
                                                                                      torch.int64)
    return torch.as_tensor(a).to(dtype)


class ServerRule:
    """Step 4, the one copy the server, the audits and the attacks all call: prune the k weights with the most
    votes in every server comparison group, ties broken by the run's rule (seeded priorities, or the lower index
    with ``stable``, as upstream's row/column selection by ``torch.sort(stable=True)``: ``--numerics reference``).
    Priorities are cached per matrix (an attack calls the rule on thousands of simulated counts)."""

    def __init__(self, *, sparsity: float, group: str, seed: int, stable: bool = False) -> None:
        self.sparsity, self.group, self.seed, self.stable = sparsity, group, seed, stable
        self._prio: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    def priority(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        key = (name, tuple(shape))
        if key not in self._prio:
            self._prio[key] = tie_break(shape=key[1], group=self.group, seed=self.seed, tag=f"server:{name}",
                                        stable=self.stable)
        return self._prio[key]

    def __call__(self, name: str, counts: torch.Tensor) -> torch.Tensor:
        """The final mask (True = pruned) of matrix ``name`` from its vote counts."""
        prio = self.priority(name, tuple(counts.shape))
        if self.group == "layer" and small_integer_range(counts):  # a histogram finds the level
            return most_votes_mask(counts, sparsity=self.sparsity, prio=prio)
        return lowest_k_mask(-counts.to(torch.float32), sparsity=self.sparsity, group=self.group, prio=prio)


def final_mask(counts: torch.Tensor, *, sparsity: float, group: str, seed: int, name: str, stable: bool = False
               ) -> torch.Tensor:
    """Step 4 for one matrix (:class:`ServerRule`)."""
    return ServerRule(sparsity=sparsity, group=group, seed=seed, stable=stable)(name, counts)


def scale_factor(counts: torch.Tensor, n_clients: int) -> torch.Tensor:
    """Step 6: retained weights are multiplied by (m - M_hat) / m."""
    return (n_clients - counts.to(torch.float32)) / n_clients


class LazyScales(Mapping):
    """Step 6's scale factors of every matrix, computed when a matrix is pruned and not kept (float32 factors
    of a whole 0.5B model would be 1.4 GB beside the counts)."""

    def __init__(self, counts: dict[str, torch.Tensor], n_clients: int) -> None:
        self.counts, self.n_clients = counts, n_clients

    def __getitem__(self, name: str) -> torch.Tensor:
        return scale_factor(self.counts[name], self.n_clients)

    def __iter__(self):
        return iter(self.counts)

    def __len__(self) -> int:
        return len(self.counts)


def pruned_weight(weight: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Step 5 (and 6): W (.) (1 - M), times the scale factor if given."""
    mask = mask.to(weight.device)
    if bool(torch.isfinite(weight.sum())):
        # W * (1 - M) + 0.0 equals masked_fill bit for bit on finite weights (the + 0.0 turns the -0.0 of a
        # pruned negative weight into +0.0) and is 3x faster: every simulated client builds its pruned layer
        w = torch.mul(weight, mask.logical_not()).add_(0.0)
    else:  # inf * 0 is NaN: non-finite weights take the exact route
        w = weight.masked_fill(mask, 0.0)
    return w if scale is None else w * scale.to(weight.device, weight.dtype)
