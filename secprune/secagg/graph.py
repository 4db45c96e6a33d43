"""Neighbour graphs for pairwise masking.

``complete``: every pair of clients shares a mask (SecAgg, Bonawitz et al. CCS 2017).
``k-regular``: the Harary graph H(k, n) on a random relabelling of the clients, as in SecAgg+ (Bell et al.,
CCS 2020, Sec. 3-4): clients sit on a random ring and each is joined to its k/2 nearest on either side.
Shares of a client's secrets go only to its neighbours.  In a session the ring order comes from
:func:`ring_order` of a seed no single party chooses (the hash of every member's committed nonce,
:mod:`secprune.secagg.pairwise_client`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["ring_order", "harary"]


def ring_order(members: Sequence[int], seed: bytes) -> list[int]:
    """``members`` in the order of SHA-256(seed || id): a uniformly random ring for a uniformly random seed."""
    return sorted(members, key=lambda u: hashlib.sha256(seed + int(u).to_bytes(4, "big")).digest())


def harary(members: Sequence[int], *, degree: int, seed: bytes) -> dict[int, frozenset[int]]:
    """Neighbours of every member in H(degree, len(members)) on the ring :func:`ring_order` (even degree)."""
    order = ring_order(members, seed)
    n = len(order)
    if degree % 2 or not 2 <= degree < n - 1:
        raise ValueError(f"harary: an even degree in 2..{n - 2} for {n} members, got {degree}")
    out: dict[int, set[int]] = {u: set() for u in order}
    for pos, u in enumerate(order):
        for hop in range(1, degree // 2 + 1):
            v = order[(pos + hop) % n]
            out[u].add(v)
            out[v].add(u)
    return {u: frozenset(v) for u, v in out.items()}

