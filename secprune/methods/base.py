"""What a local pruning method provides to the layer-by-layer driver.

Statistics are gathered by :class:`secprune.replay.Replay`: ``accumulate`` receives the input ``x`` of a
matrix as (windows, tokens, in) for a chunk of calibration windows and ``owner[b]``, the client that owns
window ``b``, and adds each window's contribution to that client's slot. For an expert of a fused MoE stack
``x`` is (1, routed tokens, in) and ``stats`` the (owners, ...) slice of that expert. ``prune`` receives a
matrix (out, in) or an expert stack (experts, out, in) with its statistics, and prunes every expert's
matrix on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LocalResult:
    mask: torch.Tensor  # bool, True = pruned (FedPrLLM's M_ij = 1)
    weight: torch.Tensor | None = None  # updated weights (SparseGPT's OBS update), else None


class Method:
    name = "base"
    needs_data = True
    hessian = False  # the statistic is a symmetric (in, in) matrix per owner

    def new_stats(self, *, n_clients: int, in_features: int, device: torch.device) -> torch.Tensor | None:
        return None

    def accumulate(self, stats: torch.Tensor, x: torch.Tensor, owner: torch.Tensor) -> None:
        if self.needs_data:
            stats.index_add_(0, owner.to(stats.device), self.contributions(x))

    def contributions(self, x: torch.Tensor) -> torch.Tensor:
        """Each window's own contribution to the statistic, (windows, *statistic shape), from its input ``x``
        (windows, tokens, in): what :class:`~secprune.methods.private.Private` bounds before summing."""
        raise NotImplementedError(f"{self.name}: no per-window contributions")

    def release(self, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The statistics the masks may read, once per layer visit (every distinct statistic, by matrix):
        unchanged here; :class:`~secprune.methods.private.Private` adds its noise."""
        return stats

    def prune(self, weight: torch.Tensor, stats: torch.Tensor | None, *, sparsity: float, group: str,
              prio: torch.Tensor) -> LocalResult:
        raise NotImplementedError

    def plan(self, *, visits: int) -> None:
        """A run is about to start in which each client visits at most ``visits`` layers."""
        return None

    def for_client(self, client: int) -> Method:
        """The method that gathers client ``client``'s statistics (a private method: its own budget)."""
        return self

    def fingerprint(self) -> dict:
        """What a checkpoint must match beyond the strategy's own options (a private method's guarantee)."""
        return {}

    def state(self) -> dict:
        """What a checkpoint keeps of the method across a resume (a private method's spent budget)."""
        return {}

    def load_state(self, state: dict) -> None:
        return None

    def pruned_per_group(self, *, shape: tuple[int, ...], group: str, sparsity: float) -> int:
        """How many entries :meth:`prune` prunes in every comparison group of a matrix of ``shape`` (exactly:
        the server checks the vote totals against it, and the he backend each client's mask)."""
        from secprune.topk import group_size

        return int(group_size(tuple(shape), group) * sparsity)
