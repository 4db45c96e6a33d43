"""Magnitude pruning: score |W_ij|. Data-free, so it leaks nothing about calibration text."""

from __future__ import annotations

import torch

from secprune.methods.base import LocalResult, Method
from secprune.topk import lowest_k_mask


class Magnitude(Method):
    name = "magnitude"
    needs_data = False

    def prune(self, weight: torch.Tensor, stats: torch.Tensor | None, *, sparsity: float, group: str,
              prio: torch.Tensor) -> LocalResult:
        return LocalResult(lowest_k_mask(weight.abs(), sparsity=sparsity, group=group, prio=prio))
