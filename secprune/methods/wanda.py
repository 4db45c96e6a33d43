"""Wanda (Sun et al., ICLR 2024): score S_ij = |W_ij| * ||X_j||_2, Eq. (1) of the paper.

||X_j||_2 is the l2 norm of input feature j over every calibration token; we keep the sum of squares
per client in float64 (the reference keeps a running mean in float32; any positive rescaling of the
norms leaves every comparison group's ordering unchanged).
"""

from __future__ import annotations

import torch

from secprune.methods.base import LocalResult, Method
from secprune.topk import lowest_k_mask


def wanda_score(weight: torch.Tensor, sq_norm: torch.Tensor) -> torch.Tensor:
    """|W| * sqrt(sum_t x_tj^2) for weight (out, in) and squared column norms (in,); stacks of experts
    (experts, out, in) with norms (experts, in) alike."""
    # |W * n| equals |W| * n bit for bit when n >= 0 (IEEE rounding is sign-symmetric): one pass, one copy
    return (weight.float() * sq_norm.sqrt().to(torch.float32).unsqueeze(-2)).abs_()


class Wanda(Method):
    name = "wanda"

    def new_stats(self, *, n_clients: int, in_features: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(n_clients, in_features, dtype=torch.float64, device=device)

    def contributions(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64).pow(2).sum(dim=tuple(range(1, x.dim() - 1)))  # (B, in)

    def prune(self, weight: torch.Tensor, stats: torch.Tensor | None, *, sparsity: float, group: str,
              prio: torch.Tensor) -> LocalResult:
        assert stats is not None
        return LocalResult(lowest_k_mask(wanda_score(weight, stats), sparsity=sparsity, group=group, prio=prio))
