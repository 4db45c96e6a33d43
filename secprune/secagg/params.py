"""Safe neighbour degrees and thresholds, and the option check the CLI runs before any work.

Security argument (docs/secagg.md, "Safe parameters"), for h share holders per client:

* **No split of share kinds:** every honest holder reveals, per owner and epoch, either a share of b_u or a
  share of s_u, never both.  With c colluding holders the server gets t of each only if 2t <= h + c, so we
  require t > h/2 (c = 0) and recommend the default t = ceil(2h/3), which holds for c < h/3 (Bonawitz et
  al., CCS 2017, Sec. 4 and Thm. A.2 use the same counting).
* **Sparse graphs (SecAgg+, Bell et al., CCS 2020):** the graph is the Harary graph H(k, n) on a random ring,
  each client joined to its k/2 nearest on either side.  A server that fakes dropouts learns the sum of every
  connected component of the survivors' graph.  Splitting the ring needs two gaps of k/2 consecutive
  "dropped" clients, and a client next to a gap keeps at most k/2 + 1 holders, so with t >= k/2 + 2 its
  self mask can never be removed: the server can only ever learn the sum over one connected set.  Hence
  even k >= 4 (k = 1 pairs clients into leaking 2-sums; odd k adds chords the argument does not cover;
  k = 2 would force t = h, i.e. no dropout tolerance) and k/2 + 2 <= t <= k + 1.
* **Complete graph (SecAgg):** every survivor set is connected, so only t > n/2 is needed.
* **he:** the key holder decrypts only sums of at least t distinct signed uploads; t > n/2 makes every
  decrypted sum cover a majority of the clients.
"""

from __future__ import annotations

import math

__all__ = ["MIN_DEGREE", "default_threshold", "min_threshold", "pairwise_parameters", "he_threshold",
           "check_options"]

MIN_DEGREE = 4


def default_threshold(holders: int) -> int:
    """t = ceil(2h/3): tolerates h - t dropouts per neighbourhood and fewer than h/3 colluding holders."""
    return max(1, math.ceil(2 * holders / 3))


def min_threshold(*, holders: int, degree: int | None) -> int:
    """Smallest safe t for ``holders`` share holders: > h/2, and >= k/2 + 2 for a sparse degree k."""
    low = holders // 2 + 1
    return max(low, degree // 2 + 2) if degree is not None else low


def _degree(n_clients: int, neighbours: int | str | None, flag: str) -> int | None:
    """The sparse degree k, or None for the complete graph (also for 0 and for k = n - 1)."""
    from secprune.secagg.graph import default_degree

    if neighbours is None or neighbours == 0:
        return None
    if neighbours == "log":
        neighbours = default_degree(n_clients)
    if isinstance(neighbours, bool) or not isinstance(neighbours, int):
        raise ValueError(f"{flag} {neighbours!r}: expected an integer, 'log' or 0 (complete graph)")
    if neighbours < 0:
        raise ValueError(f"{flag} {neighbours}: expected a degree >= {MIN_DEGREE}, or 0 for the complete graph")
    if neighbours >= n_clients - 1:
        return None
    if neighbours < MIN_DEGREE or neighbours % 2:
        raise ValueError(f"{flag} {neighbours}: below the safe level: a sparse graph needs an even degree "
                         f">= {MIN_DEGREE} (or n-1 = {n_clients - 1} for the complete graph); see docs/secagg.md")
    return neighbours


def pairwise_parameters(*, n_clients: int, neighbours: int | str | None, threshold: int | None,
                        flag_prefix: str = "--secagg-") -> tuple[int | None, int]:
    """(degree k or None for the complete graph, threshold t), validated against the safe levels.

    A degree of n - 1 or more means the complete graph (sub-federations smaller than k use it too).
    """
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}")
    degree = _degree(n_clients, neighbours, f"{flag_prefix}neighbours")
    holders = n_clients if degree is None else degree + 1
    low = min_threshold(holders=holders, degree=degree)
    if threshold is None:
        return degree, max(default_threshold(holders), low)
    flag = f"{flag_prefix}threshold {threshold}"
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ValueError(f"{flag}: expected an integer")
    if threshold > holders:
        raise ValueError(f"{flag}: above the {holders} share holders per client")
    if threshold < low:
        why = "t > h/2" if degree is None else f"t > h/2 and t >= k/2 + 2 = {degree // 2 + 2}"
        raise ValueError(f"{flag}: below the safe level {low} for {holders} share holders ({why}); "
                         f"see docs/secagg.md")
    return degree, threshold


def he_threshold(*, n_clients: int, threshold: int | None, flag_prefix: str = "--secagg-") -> int:
    """Uploads the HE key holder needs before it decrypts: default ceil(2n/3), at least floor(n/2) + 1."""
    if threshold is None:
        return default_threshold(n_clients)
    flag = f"{flag_prefix}threshold {threshold}"
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ValueError(f"{flag}: expected an integer")
    if threshold > n_clients:
        raise ValueError(f"{flag}: above the {n_clients} clients")
    if threshold < n_clients // 2 + 1:
        raise ValueError(f"{flag}: below the safe level {n_clients // 2 + 1} (t > n/2) for {n_clients} clients")
    return threshold


def check_options(backend: str, *, n_clients: int, neighbours: int | str | None = None,
                  threshold: int | None = None) -> None:
    """Validate the CLI's secure-aggregation flags before any work; raises ``ValueError`` naming the flag.

    ``neighbours`` 0 or None means "not given" (complete graph); ``threshold`` None means the default.
    """
    from secprune.secagg import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"--secure-agg {backend}: unknown backend; expected one of {', '.join(BACKENDS)}")
    given_k = neighbours is not None and neighbours != 0
    if backend != "pairwise" and given_k:
        raise ValueError(f"--secagg-neighbours {neighbours}: only --secure-agg pairwise uses a neighbour graph")
    if backend == "none" and threshold is not None:
        raise ValueError(f"--secagg-threshold {threshold}: --secure-agg none has no threshold")
    if backend == "pairwise":
        if isinstance(neighbours, int) and not isinstance(neighbours, bool) and neighbours > n_clients - 1:
            raise ValueError(f"--secagg-neighbours {neighbours}: above n-1 = {n_clients - 1} for {n_clients} "
                             f"clients (use 0 for the complete graph)")
        pairwise_parameters(n_clients=n_clients, neighbours=neighbours, threshold=threshold)
    elif backend == "he":
        he_threshold(n_clients=n_clients, threshold=threshold)
