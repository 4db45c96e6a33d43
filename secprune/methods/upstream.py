"""Wanda's statistic exactly as the public code computes it (``--numerics reference``).

Upstream (``locuslab/wanda`` and ``Pengxin-Guo/FedPrLLM``, ``lib/layerwrapper.py`` ``WrappedGPT.add_batch``)
runs one calibration sample at a time and keeps a float32 *running mean* of the squared input norms::

    scaler_row *= n / (n + 1);  n += 1;  scaler_row += ||x_j||_2 ** 2 / n

with ``||x_j||_2`` the ``torch.norm`` of input feature ``j`` over the sample's tokens. The default
:class:`~secprune.methods.wanda.Wanda` keeps a float64 sum instead; both rank a row the same way up to
float rounding, which can flip near-ties: this class reproduces the upstream bits.

Upstream's one-shot FedPrLLM clients and its local-only baseline (``prune_wanda_and_update_global_mask``,
``prune_wanda``) loop over ``args.nsamples`` samples while a client holds only ``nsamples / m``: the rest
are rows of zeros that reach every linear as zeros (a LLaMA block maps 0 to 0) and only advance the
running mean. ``pad_to`` reproduces that: the mean is carried on with zero samples up to ``pad_to``.
Its iterative FedPrLLM (``prune_fedprllmv2``) loops over each client's own samples (``pad_to=None``).

The statistics tensor holds the running mean and, in its last column, the sample count ``n``.
"""

from __future__ import annotations

import torch

from secprune.methods.base import LocalResult
from secprune.methods.wanda import Wanda, wanda_score
from secprune.topk import lowest_k_mask


class UpstreamWanda(Wanda):
    name = "wanda"

    def __init__(self, *, pad_to: int | None = None) -> None:
        self.pad_to = pad_to

    def new_stats(self, *, n_clients: int, in_features: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(n_clients, in_features + 1, dtype=torch.float32, device=device)

    def accumulate(self, stats: torch.Tensor, x: torch.Tensor, owner: torch.Tensor) -> None:
        for b in range(x.shape[0]):  # one sample at a time, in order
            row = stats[int(owner[b])]
            scaler, n = row[:-1], int(row[-1])
            scaler *= n / (n + 1)
            n += 1
            inp = x[b].reshape(-1, x.shape[-1]).t().type(torch.float32)
            scaler += torch.norm(inp, p=2, dim=1) ** 2 / n
            row[-1] = n

    def mean_sq_norm(self, stats: torch.Tensor) -> torch.Tensor:
        """The running mean after the zero samples up to ``pad_to`` (stats of one client: (..., in + 1))."""
        scaler = stats[..., :-1].clone()
        for row, n in zip(scaler.reshape(-1, scaler.shape[-1]), stats[..., -1].reshape(-1).tolist(), strict=True):
            for k in range(int(n), self.pad_to or 0):  # an expert stack: one count per expert
                row *= k / (k + 1)  # + ||0||^2 / (k + 1), which adds nothing
        return scaler

    def prune(self, weight: torch.Tensor, stats: torch.Tensor | None, *, sparsity: float, group: str,
              prio: torch.Tensor) -> LocalResult:
        assert stats is not None
        score = wanda_score(weight, self.mean_sq_norm(stats))
        return LocalResult(lowest_k_mask(score, sparsity=sparsity, group=group, prio=prio))
