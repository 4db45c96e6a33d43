"""Secure summation of client vectors: the server learns only the sum.

Backends: ``"none"`` (plaintext baseline), ``"pairwise"`` (SecAgg / SecAgg+ double masking with the
active-adversary defences of Bonawitz et al. 2017, Sec. 4; Bell et al. 2020) and ``"he"`` (TenSEAL BFV with a
separate key holder).  See docs/secagg.md for the protocols, the threat model and the safe parameters.
"""

from __future__ import annotations

from secprune.secagg.base import SecureSum, Session
from secprune.secagg.errors import ProtocolError, SecAggAbortError
from secprune.secagg.params import check_options
from secprune.secagg.plain import PlainSum

BACKENDS = ("none", "pairwise", "he")


def make_summer(backend: str, *, n_clients: int, max_value: int = 1, seed: int = 0, **options) -> SecureSum:
    """Build the backend named ``backend`` for ``n_clients`` clients whose entries lie in [0, max_value].

    ``options`` go to the backend: for ``"pairwise"`` see :class:`~secprune.secagg.pairwise.PairwiseSum`
    (the threat ``colluders``, ``dropout_budget``, ``min_contributors``; ``neighbours``, ``threshold``, ``bits``,
    ``cipher``, ``aead``, ``chunk_entries``, ``key_dir``, ``dropouts``); for ``"he"`` see
    :class:`~secprune.secagg.he.HESum` (the threat, ``poly_modulus_degree``, ``plain_modulus_bits``,
    ``threshold``, ``dropouts``).  ``"none"`` ignores them.
    """
    if backend == "none":  # the baseline ignores the secure backends' options (e.g. ``neighbours``)
        return PlainSum(n_clients=n_clients, max_value=max_value)
    if backend == "pairwise":
        from secprune.secagg.pairwise import PairwiseSum

        return PairwiseSum(n_clients=n_clients, max_value=max_value, seed=seed, **options)
    if backend == "he":
        from secprune.secagg.he import HESum

        return HESum(n_clients=n_clients, max_value=max_value, seed=seed, **options)
    raise ValueError(f"--secure-agg: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "SecureSum", "Session", "PlainSum", "ProtocolError", "SecAggAbortError", "check_options",
           "make_summer"]
