"""Neighbour graphs for pairwise masking.

``complete``: every pair of clients shares a mask (SecAgg, Bonawitz et al. CCS 2017).
``k-regular``: the Harary graph H(k, n) on a random relabelling of the clients, as in SecAgg+ (Bell et al.,
CCS 2020, Sec. 3-4, who show k = O(log n) neighbours suffice for security and correctness w.h.p.):
clients sit on a random ring and each is joined to its k/2 nearest on either side (and, for odd k, to the
client opposite).  Shares of a client's secrets go only to its neighbours.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["default_degree", "neighbour_graph"]


def default_degree(n_clients: int) -> int:
    """k = 2 * ceil(log2 n) (an even O(log n) degree), capped at n - 1."""
    return min(n_clients - 1, 2 * max(1, math.ceil(math.log2(max(2, n_clients)))))


def neighbour_graph(n_clients: int, *, degree: int | str | None = None,
                    seed: int = 0) -> list[frozenset[int]]:
    """Neighbour sets of clients 0..n-1: complete for ``degree`` None (or >= n-1), else k-regular.

    ``degree="log"`` picks :func:`default_degree`.
    """
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}")
    if degree == "log":
        degree = default_degree(n_clients)
    if degree is None or (isinstance(degree, int) and degree >= n_clients - 1):
        everyone = frozenset(range(n_clients))
        return [everyone - {i} for i in range(n_clients)]
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
        raise ValueError(f"neighbours: expected None, 'log' or an int >= 1, got {degree!r}")
    if degree % 2 and n_clients % 2:
        raise ValueError(f"neighbours: a {degree}-regular graph on {n_clients} clients needs an even degree")
    order = np.random.default_rng(seed).permutation(n_clients)
    adj: list[set[int]] = [set() for _ in range(n_clients)]
    for pos in range(n_clients):
        u = int(order[pos])
        hops = list(range(1, degree // 2 + 1)) + ([n_clients // 2] if degree % 2 else [])
        for h in hops:
            v = int(order[(pos + h) % n_clients])
            adj[u].add(v)
            adj[v].add(u)
    return [frozenset(a) for a in adj]
