"""SparseGPT (Frantar & Alistarh, ICML 2023), mask selection and optional OBS weight update.

Hessian H = 2/n * sum_t x_t x_t^T, dampened by 1% of its mean diagonal (Alg. 1; dead inputs get
H_ii = 1). With ``update=False`` (FedPrLLM App. B.3 prunes by the score only) the score of weight ij is
W_ij^2 / [chol(H^-1)]_jj^2 over the whole matrix. With ``update=True`` the columns are processed in
blocks of 128: inside each block the mask is chosen by the same score on the *updated* weights, and the
pruning error is propagated to the remaining columns (Alg. 1 lines 7-15).
"""

from __future__ import annotations

import torch

from secprune.experts import over_experts
from secprune.methods.base import LocalResult, Method
from secprune.topk import lowest_k_mask


def inverse_hessian_chol(hessian: torch.Tensor, weight: torch.Tensor, *, percdamp: float = 0.01):
    """Upper Cholesky factor of the dampened inverse Hessian; zeroes weights of dead inputs (as the paper)."""
    H = hessian.to(torch.float32).clone()
    W = weight.to(torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(H.shape[0], device=H.device)
    H[idx, idx] += damp
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True), W


class SparseGPT(Method):
    name = "sparsegpt"
    hessian = True

    def __init__(self, *, update: bool = False, blocksize: int = 128, percdamp: float = 0.01) -> None:
        self.update = update
        self.blocksize = blocksize
        self.percdamp = percdamp

    def pruned_per_group(self, *, shape: tuple[int, ...], group: str, sparsity: float) -> int:
        """With the update, each block of columns selects its own int(sparsity x block group) (a row of 300
        columns at 0.7 keeps 208 pruned, not int(210)); a column lies in one block."""
        if not self.update or group == "column":
            return super().pruned_per_group(shape=shape, group=group, sparsity=sparsity)
        rows, cols = shape[-2:]
        per = rows if group == "layer" else 1
        return sum(int(per * min(self.blocksize, cols - i) * sparsity) for i in range(0, cols, self.blocksize))

    def new_stats(self, *, n_clients: int, in_features: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(n_clients, in_features, in_features, dtype=torch.float32, device=device)

    def accumulate(self, stats: torch.Tensor, x: torch.Tensor, owner: torch.Tensor) -> None:
        x = x.reshape(x.shape[0], -1, x.shape[-1]).to(torch.float32)  # (B, T, in)
        for b in range(x.shape[0]):  # one (in, in) at a time: B of them at once would cost B x the memory
            stats[int(owner[b])] += x[b].T @ x[b]

    def contributions(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1, x.shape[-1]).to(torch.float32)
        return x.transpose(1, 2) @ x  # (B, in, in)

    def prune(self, weight: torch.Tensor, stats: torch.Tensor | None, *, sparsity: float, group: str,
              prio: torch.Tensor) -> LocalResult:
        assert stats is not None
        if weight.dim() == 3:  # a stack of experts: each expert its own Hessian and comparison groups
            parts = over_experts(lambda e, w, h: self.prune(w, h, sparsity=sparsity, group=group, prio=prio),
                                 weight, stats, combine=list)
            return LocalResult(torch.stack([p.mask for p in parts]),
                               None if parts[0].weight is None else torch.stack([p.weight for p in parts]))
        # The 2/n factor cancels in every comparison and in the update; H = X^T X suffices.
        U, W = inverse_hessian_chol(stats, weight, percdamp=self.percdamp)
        d = torch.diag(U)
        if not self.update:
            score = W.pow(2) / d.pow(2).view(1, -1)
            return LocalResult(lowest_k_mask(score, sparsity=sparsity, group=group, prio=prio))
        return self._prune_with_update(W, U, sparsity=sparsity, group=group, prio=prio)

    def _prune_with_update(self, W: torch.Tensor, U: torch.Tensor, *, sparsity: float, group: str,
                           prio: torch.Tensor) -> LocalResult:
        rows, cols = W.shape
        mask = torch.zeros_like(W, dtype=torch.bool)
        full_prio = prio.expand(rows, cols)
        for i1 in range(0, cols, self.blocksize):
            i2 = min(i1 + self.blocksize, cols)
            W1 = W[:, i1:i2].clone()
            U1 = U[i1:i2, i1:i2]
            E1 = torch.zeros_like(W1)
            d1 = torch.diag(U1)
            score = W1.pow(2) / d1.pow(2).view(1, -1)
            m1 = lowest_k_mask(score, sparsity=sparsity, group=group, prio=full_prio[:, i1:i2].contiguous())
            for i in range(i2 - i1):
                w = W1[:, i]
                q = torch.where(m1[:, i], torch.zeros_like(w), w)
                err = (w - q) / d1[i]
                W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
                W1[:, i] = q
                E1[:, i] = err
            W[:, i1:i2] = W1
            mask[:, i1:i2] = m1
            W[:, i2:] -= E1 @ U[i1:i2, i2:]
        W[mask] = 0.0
        return LocalResult(mask, W)
