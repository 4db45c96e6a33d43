"""Resource-aware layer sampling of FedSpaLLM (Bai et al., NAACL 2025, Sec. 4.3, Eqs. 8-9, Algorithm 1 l. 3-7).

Each round the server gives client ``i`` a subset ``L_i`` of the ``m`` decoder layers with ``|L_i| = k_i``
proportional to its declared resource score ``r_i`` (Eq. 8). We read ``r_i`` in ``(0, 1]`` as the fraction
of the model client ``i`` can prune per round, so ``k_i = max(1, round(r_i * m))``.

Corollary 4.1 (sparsity guarantee) needs every layer sampled by at least one client in every round, which is
possible only if ``sum_i k_i >= m``. :func:`sample_layers` guarantees it and keeps Theorem 4.2's condition
(every layer equally likely for a client): a uniformly shuffled list of all layers is dealt out, client ``i``
taking a share ``c_i <= k_i`` (``sum_i c_i = m``, shares proportional to ``k_i``), then each client fills its
remaining ``k_i - c_i`` slots uniformly from the layers it does not hold yet. The whole procedure is invariant
under relabelling the layers, so ``P(layer j in L_i) = k_i / m`` for every layer ``j``.

Layers outside ``L_i`` stay dense at client ``i`` (Eq. 9); the driver implements that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def layer_budgets(*, resources: Sequence[float], n_layers: int) -> list[int]:
    """Eq. 8: ``k_i = max(1, round(r_i * m))`` layers per round for resource fractions ``r_i`` in (0, 1]."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    budgets = []
    for i, r in enumerate(resources):
        if not 0.0 < float(r) <= 1.0:
            raise ValueError(f"resources[{i}] = {r}: expected a fraction of the layers in (0, 1]")
        budgets.append(min(n_layers, max(1, math.floor(float(r) * n_layers + 0.5))))
    if sum(budgets) < n_layers:
        raise ValueError(f"resources {list(resources)} give {sum(budgets)} layer slots per round for {n_layers} "
                         "layers: Corollary 4.1 needs every layer sampled at least once per round")
    return budgets


def cover_shares(*, budgets: Sequence[int], n_layers: int) -> list[int]:
    """Shares ``c_i <= k_i`` with ``sum c_i = m``, proportional to ``k_i`` (largest remainder)."""
    total = sum(budgets)
    if total < n_layers:
        raise ValueError(f"{total} layer slots cannot cover {n_layers} layers")
    exact = [n_layers * k / total for k in budgets]
    shares = [math.floor(x) for x in exact]
    order = sorted(range(len(budgets)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[:n_layers - sum(shares)]:
        shares[i] += 1
    assert all(c <= k for c, k in zip(shares, budgets, strict=True)) and sum(shares) == n_layers
    return shares


def sample_layers(*, budgets: Sequence[int], n_layers: int, rng: np.random.Generator) -> list[list[int]]:
    """Algorithm 1 lines 3-7: ``L_i`` (sorted layer indices) for every client, covering every layer."""
    shares = cover_shares(budgets=budgets, n_layers=n_layers)
    perm = rng.permutation(n_layers)
    out, start = [], 0
    for k, c in zip(budgets, shares, strict=True):
        own = perm[start:start + c]
        start += c
        rest = np.setdiff1d(np.arange(n_layers), own)
        extra = rng.choice(rest, size=k - c, replace=False) if k > c else np.empty(0, dtype=int)
        out.append(sorted(int(x) for x in np.concatenate([own, extra])))
    return out


def schedule(*, resources: Sequence[float] | None, n_clients: int, n_layers: int, rounds: int, seed: int,
             sampling: bool = True) -> list[list[list[int]]]:
    """``schedule[t][i]`` = layers client ``i`` prunes in round ``t``. Without sampling every client gets all."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not sampling:
        return [[list(range(n_layers)) for _ in range(n_clients)] for _ in range(rounds)]
    res = list(resources) if resources else [1.0]
    if len(res) == 1:
        res = res * n_clients
    if len(res) != n_clients:
        raise ValueError(f"resources: expected 1 or {n_clients} values, got {len(res)}")
    budgets = layer_budgets(resources=res, n_layers=n_layers)
    return [sample_layers(budgets=budgets, n_layers=n_layers, rng=np.random.default_rng([seed, 8, t]))
            for t in range(rounds)]
