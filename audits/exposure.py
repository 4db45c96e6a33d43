"""Exposure of a canary (Carlini, Liu, Erlingsson, Kos & Song 2019, "The Secret Sharer", Sec. 4).

A canary is a fixed sentence with a random secret from a space R (here: ``length`` decimal digits,
|R| = 10^length). The attacker ranks every candidate secret by how well it explains what was released;
with ``rank`` the position of the inserted secret,

    exposure = log2 |R| - log2 rank                                   (their Def. 4).

A data-independent ranking puts the true secret at a uniformly random rank: its expected exposure is
``log2 |R| - E[log2 rank]`` = about log2(e) = 1.44 bits (:func:`chance_exposure`); an attack that cannot
separate any candidates ties them all, rank (|R| + 1) / 2, about 1 bit. The maximum is log2 |R|.

Candidates are scored per *multiset* of digits when the score depends only on the token histogram (true
for layer-0 q/k/v statistics, which are sums over tokens): every permutation of the secret's digits then
gets the same score and the tie among them is broken uniformly at random, so the expected rank of a
secret is ``1 + #(candidates scored higher) + (#(tied candidates) - 1) / 2`` and the best an attack of
this kind can reach is :func:`max_exposure`. Ranks are computed exactly over all |R| candidates.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def multisets(*, length: int, symbols: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Every multiset of ``length`` symbols: (counts (M, symbols) int64, number of sequences of each (M,))."""
    rows = list(itertools.combinations_with_replacement(range(symbols), length))
    counts = np.zeros((len(rows), symbols), dtype=np.int64)
    for i, r in enumerate(rows):
        for s in r:
            counts[i, s] += 1
    fact = np.array([math.factorial(x) for x in range(length + 1)], dtype=np.float64)
    mult = math.factorial(length) / np.prod(fact[counts], axis=1)
    return counts, mult


def multiset_index(*, counts: np.ndarray, secret: list[int] | np.ndarray) -> int:
    """Row of ``counts`` holding the digit multiset of ``secret``."""
    want = np.bincount(np.asarray(secret, dtype=np.int64), minlength=counts.shape[1])
    hit = np.flatnonzero((counts == want).all(1))
    if len(hit) != 1:
        raise ValueError(f"secret {secret} is not a multiset of the candidate space")
    return int(hit[0])


def expected_rank(*, scores: np.ndarray, multiplicity: np.ndarray, true_index: int, tol: float = 0.0) -> float:
    """1 + (sequences scored strictly higher) + (tied sequences other than the secret) / 2; higher = better."""
    s = np.asarray(scores, dtype=np.float64)
    t = s[true_index]
    higher = float(multiplicity[s > t + tol].sum())
    ties = float(multiplicity[np.abs(s - t) <= tol].sum())
    return 1.0 + higher + (ties - 1.0) / 2.0


def exposure(*, space: float, rank: float) -> float:
    """log2 |R| - log2 rank."""
    return math.log2(space) - math.log2(rank)


def max_exposure(*, space: float, tied_sequences: float) -> float:
    """The exposure of a perfect multiset-level attack: only the secret's own permutations tie with it."""
    return exposure(space=space, rank=1.0 + (tied_sequences - 1.0) / 2.0)


def chance_exposure(*, space: int) -> float:
    """E[exposure] when the rank is uniform on 1..|R|: log2 |R| - log2(|R|!) / |R| (about log2 e)."""
    return math.log2(space) - math.lgamma(space + 1) / math.log(2) / space


def all_tied_exposure(*, space: float) -> float:
    """Exposure when every candidate ties (a data-free mask): log2 |R| - log2((|R| + 1) / 2), about 1 bit."""
    return exposure(space=space, rank=(space + 1.0) / 2.0)
